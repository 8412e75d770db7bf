"""One writer per workdir: an OS lock held for the life of the run.

`jaxtrain train` (process 0 of a job) holds an exclusive `flock` on
`<workdir>/.lock` from setup until it exits. The kernel drops the lock when
the process ends in any way, kill -9 included, so a lock is never stale: a
dead holder's lock is simply free. The file names the holder (pid, host,
command, since), which a second writer is told in one line instead of both
writing checkpoints, metrics and manifests over each other.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time

from jaxtrain.errors import UserError

LOCK_FILE = ".lock"


def holder(workdir: str) -> dict:
  """Who last took the lock (the holder while it is held), or {}."""
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      return json.loads(f.read() or "{}")
  except (OSError, ValueError):
    return {}


class WorkdirLock:
  """An exclusive, non-blocking lock on a workdir; `release()` (or process exit) frees it."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(fd)
      h = holder(os.path.dirname(self.path))
      who = (f"process {h.get('pid')} on {h.get('host')} ({h.get('command')}, since "
             f"{h.get('since')})") if h else "another process"
      raise UserError(f"{os.path.dirname(self.path)} is in use by {who}: one run writes a workdir "
                      "at a time; wait for it, stop it, or use another workdir") from None
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "command": " ".join(sys.argv)[:300], "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

"""One writer per workdir: an OS lock held for the life of the run.

Every process of `jaxtrain train` holds an exclusive `flock` from setup until
it exits: process 0 on `<workdir>/.lock`, process i on `<workdir>/.lock.<i>`,
and a job goes on only if all of its processes got theirs (loop.py agrees on
it), so a second job on the same workdir is refused by every process, not by
one while the others start writing. The kernel drops a lock when the process
ends in any way, kill -9 included, so a lock is never stale: a dead holder's
lock is simply free. The file names the holder (pid, host, command, since),
which a second writer is told in one line instead of both writing
checkpoints, metrics and manifests over each other.
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


def lock_file(process: int = 0) -> str:
  """The name of process `process`'s lock file in a workdir."""
  return LOCK_FILE if process == 0 else f"{LOCK_FILE}.{process}"


def holder(workdir: str, process: int = 0) -> dict:
  """Who last took process `process`'s lock (the holder while it is held), or {}."""
  try:
    with open(os.path.join(workdir, lock_file(process))) as f:
      return json.loads(f.read() or "{}")
  except (OSError, ValueError):
    return {}


class WorkdirLock:
  """An exclusive, non-blocking lock on a workdir for process `process` of a job;
  `release()` (or process exit) frees it."""

  def __init__(self, workdir: str, process: int = 0):
    self.path, self.process = os.path.join(workdir, lock_file(process)), process
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(fd)
      h = holder(os.path.dirname(self.path), self.process)
      who = (f"process {h.get('pid')} on {h.get('host')} ({h.get('command')}, since "
             f"{h.get('since')})") if h else "another process"
      raise UserError(f"{os.path.dirname(self.path)} is in use by {who}: one run writes a workdir "
                      "at a time; wait for it, stop it, or use another workdir") from None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "process": self.process,
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

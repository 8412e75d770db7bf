"""A workdir: every name in it, who owns each, the claim on it, and its records of the run.

This is the only module that spells a workdir's file names; every other one
asks it for a path. What each entry is, and the module that writes it:

    .lock, .lock.<i>         here: process i's OS lock, naming its holder
    config.json              here: the resolved config, written at every start
    metrics.jsonl            metric_writers.py appends events; here: read, kept up to a resume
    metrics.abandoned.jsonl  here: the events of an attempt whose steps a resume trains again
    tensorboard/             metric_writers.py (kept up to a resume the same way)
    checkpoints/             checkpoint.py: the newest N (state + data position), verified
    best_checkpoints/        checkpoint.py: the best k (state), verified; best.json there is
                             early_stopping.py's ranking
    corrupt_checkpoints/     checkpoint.py: checkpoints that did not verify, moved aside
    manifest.json            manifest.py: environment, data and code of every start
    init_from.json           finetune.py: what a fine-tuning start copied
    preprocess/              data/preprocess.py: the fitted preprocessing (its own files)
    abandoned/<time>/        here: a history set aside by --start_over
    export/                  tools/predict.py: `jaxtrain export`'s default output

Run state is read through the queries at the end (`stopped_early`, `has_event`,
`event_at`), not by each caller scanning metrics.jsonl its own way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time

from jaxtrain import files
from jaxtrain.errors import UserError

log = logging.getLogger("jaxtrain")

LOCK_FILE = ".lock"


def _in(workdir: str, *names: str) -> str:
  return os.path.join(workdir, *names)


def checkpoints(workdir: str) -> str:
  return _in(workdir, "checkpoints")


def best_checkpoints(workdir: str) -> str:
  return _in(workdir, "best_checkpoints")


def best_record(workdir: str) -> str:
  return _in(workdir, "best_checkpoints", "best.json")


def corrupt_checkpoints(workdir: str) -> str:
  return _in(workdir, "corrupt_checkpoints")


def config_file(workdir: str) -> str:
  return _in(workdir, "config.json")


def metrics(workdir: str) -> str:
  return _in(workdir, "metrics.jsonl")


def abandoned_metrics(workdir: str) -> str:
  return _in(workdir, "metrics.abandoned.jsonl")


def tensorboard(workdir: str) -> str:
  return _in(workdir, "tensorboard")


def manifest(workdir: str) -> str:
  return _in(workdir, "manifest.json")


def init_from_record(workdir: str) -> str:
  return _in(workdir, "init_from.json")


def preprocess(workdir: str) -> str:
  return _in(workdir, "preprocess")


def export(workdir: str) -> str:
  return _in(workdir, "export")


def abandoned(workdir: str) -> str:
  return _in(workdir, "abandoned")


def lock_file(process: int = 0) -> str:
  """The name of process `process`'s lock file in a workdir."""
  return LOCK_FILE if process == 0 else f"{LOCK_FILE}.{process}"


def is_workdir(path: str) -> bool:
  """Whether `path` holds a run's history (metrics or checkpoints)."""
  return os.path.exists(metrics(path)) or os.path.isdir(checkpoints(path))


# What --start_over sets aside: the run's history and its records, never the lock.
HISTORY = (
  checkpoints,
  best_checkpoints,
  metrics,
  abandoned_metrics,
  tensorboard,
  manifest,
  config_file,
  init_from_record,
)


def set_aside(workdir: str) -> str:
  """Moves a run's checkpoints, metrics and records to <workdir>/abandoned/<time>/; returns it.

  For `--start_over`: the new history starts clean, the old one is kept.
  """
  target = os.path.join(abandoned(workdir), time.strftime("%Y%m%dT%H%M%S"))
  os.makedirs(target, exist_ok=True)
  for name in HISTORY:
    if os.path.exists(name(workdir)):
      shutil.move(name(workdir), os.path.join(target, os.path.basename(name(workdir))))
  return target


# The claim ----------------------------------------------------------------------------------
def holder(workdir: str, process: int = 0) -> dict:
  """Who last took process `process`'s lock (the holder while it is held), or {}."""
  try:
    with open(_in(workdir, lock_file(process))) as f:
      return json.loads(f.read() or "{}")
  except (OSError, ValueError):
    return {}


class WorkdirLock:
  """An exclusive, non-blocking `flock` on a workdir for process `process` of a job.

  The kernel drops it when the process ends in any way, kill -9 included, so
  it is never stale; `release()` frees it earlier. The file names the holder
  (pid, host, command, since), which a second writer is told in one line.
  """

  def __init__(self, workdir: str, process: int = 0):
    self.path, self.process = _in(workdir, lock_file(process)), process
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(fd)
      h = holder(os.path.dirname(self.path), self.process)
      who = (
        (f"process {h.get('pid')} on {h.get('host')} ({h.get('command')}, since {h.get('since')})")
        if h
        else "another process"
      )
      raise UserError(
        f"{os.path.dirname(self.path)} is in use by {who}: one run writes a workdir "
        "at a time; wait for it, stop it, or use another workdir"
      ) from None
    record = {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "process": self.process,
      "command": " ".join(sys.argv)[:300],
      "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.ftruncate(fd, 0)  # the holder's record lives in the locked file itself: no rename
    os.pwrite(fd, json.dumps(record).encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


@contextlib.contextmanager
def claimed(workdir: str, timeout_s: float = 0):
  """`workdir`, writable and locked for this run: every process holds a lock of its own, and
  with several they agree that all of them do before any goes on (else all refuse).

  If the block fails the lock is released, and a workdir made here is removed
  again: a refused config leaves no trace, and the fixed command starts clean.
  """
  import jax
  from jaxtrain.run import distributed

  created = not os.path.exists(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = _in(workdir, f".write_test.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable: {e.strerror or e}") from None
  lock, refused = None, ""
  try:
    lock = WorkdirLock(workdir, process=jax.process_index()).acquire()
  except UserError as e:
    refused = str(e)
  if jax.process_count() > 1:  # one refusal refuses the job: no process trains alone
    refusals = [r for r in distributed.everyones("claim", refused, timeout_s) if r]
    refused = refused or (refusals[0] if refusals else "")
  if refused:
    if lock is not None:
      lock.release()
    raise UserError(refused)
  try:
    yield lock
  except BaseException:
    lock.release()
    if created:
      with contextlib.suppress(OSError):
        os.remove(lock.path)
        os.rmdir(workdir)  # only if nothing else was written (by this or another process)
    raise


# config.json ---------------------------------------------------------------------------------
def write_config(workdir: str, config) -> None:
  """The resolved config (an ml_collections.ConfigDict), whole or not at all."""
  files.write_text(
    config_file(workdir), config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
  )


def read_config(workdir: str) -> dict | None:
  """The config a run started with, checked (None if the workdir has no config.json)."""
  path = config_file(workdir)
  try:
    with open(path, "rb") as f:
      saved = json.loads(f.read().decode("utf-8"))
  except FileNotFoundError:
    return None
  except (UnicodeDecodeError, ValueError) as e:
    raise UserError(
      f"{path} is not valid JSON ({e}): it is the run's record of its config; "
      "restore it, or remove it to compare with manifest.json's"
    ) from None
  if not isinstance(saved, dict):
    raise UserError(
      f"{path} is not a config (a JSON object); restore it, or remove it to "
      "compare with manifest.json's"
    )
  return saved


def read_best(workdir: str) -> dict:
  """best.json, early_stopping.py's ranking of the kept best checkpoints ({} if the run keeps
  none, or the record is not a JSON object: then the newest kept one is taken as best)."""
  try:
    with open(best_record(workdir), "rb") as f:
      record = json.loads(f.read().decode("utf-8"))
  except FileNotFoundError:
    return {}
  except (UnicodeDecodeError, ValueError):
    log.warning("%s is not valid JSON: its ranking is passed over", best_record(workdir))
    return {}
  return record if isinstance(record, dict) else {}


# The events log: metrics.jsonl --------------------------------------------------------------
def _event(line: bytes) -> dict | None:
  """A line of metrics.jsonl as an event, or None for anything else (torn, garbled, edited)."""
  try:
    event = json.loads(line.decode("utf-8"))
  except (UnicodeDecodeError, ValueError):
    return None
  if not (
    isinstance(event, dict)
    and isinstance(event.get("step"), int)
    and isinstance(event.get("split"), str)
  ):
    return None
  return event


def read_events(workdir: str) -> list[dict]:
  """Every event in `<workdir>/metrics.jsonl`, in order.

  A line that is not an event (a torn last line, bytes that are not UTF-8,
  JSON that is not an object with an int `step` and a `split`) is passed
  over, with a warning: one bad line never makes a workdir unreadable.
  """
  path = metrics(workdir)
  try:
    with open(path, "rb") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return []
  events = [_event(line) for line in lines if line.strip()]
  bad = sum(e is None for e in events)
  if bad:
    log.warning("%s: passed over %d line(s) that are not metric events", path, bad)
  return [e for e in events if e is not None]


def event_at(workdir: str, split: str, step: int) -> dict | None:
  """The last `split` event logged at `step` (an evaluation of a checkpoint), or None."""
  events = [e for e in read_events(workdir) if e["split"] == split and e["step"] == step]
  return events[-1] if events else None


def has_event(workdir: str, split: str) -> bool:
  """Whether the run logged a `split` event (the test has run: "test")."""
  return any(event["split"] == split for event in read_events(workdir))


def stopped_early(workdir: str, up_to_step: int) -> bool:
  """Whether the run stopped early at or before `up_to_step` (nothing more to train)."""
  return any(e["split"] == "early_stop" and e["step"] <= up_to_step for e in read_events(workdir))


def keep_up_to(workdir: str, step: int) -> int:
  """Drops the events after `step` from metrics.jsonl (into metrics.abandoned.jsonl).

  A run resumed from the checkpoint of `step` trains the steps after it
  again: the events of the attempt that did not reach its next checkpoint
  would otherwise be a second history of the same steps. Returns how many.
  """
  events = read_events(workdir)
  later = [e for e in events if e["step"] > step]
  if not later:
    return 0
  with open(abandoned_metrics(workdir), "a") as f:  # appended first: never lost in between
    f.writelines(json.dumps(e) + "\n" for e in later)
    f.flush()
    os.fsync(f.fileno())
  files.write_lines(metrics(workdir), (json.dumps(e) for e in events if e["step"] <= step))
  return len(later)

"""Where metrics go: the console, `metrics.jsonl` and TensorBoard event files.

Each event is (step, split, {name: float}); `metrics.jsonl` holds one JSON
object per event, `{"step": ..., "split": ..., **metrics}`, appended so a
resumed run continues the same file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

log = logging.getLogger("jaxtrain")


def _fmt(v: float) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def _ends_with_newline(path: str) -> bool:
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b"\n"


class _EventFile:
  """TensorBoard events written synchronously, in the caller's thread.

  tensorboardX's SummaryWriter queues events for a background thread; when a
  write fails (a full disk) that thread dies and the next add blocks forever.
  Writing here instead makes such a failure an OSError the loop reports.
  """

  def __init__(self, logdir: str):
    from tensorboardX.event_file_writer import EventsWriter
    os.makedirs(logdir, exist_ok=True)
    self._events = EventsWriter(os.path.join(logdir, "events"))

  def _add(self, summary, step: int) -> None:
    from tensorboardX.proto import event_pb2
    self._events.write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    from tensorboardX.summary import scalar
    self._add(scalar(tag, value), step)

  def add_text(self, tag: str, text: str, step: int) -> None:
    from tensorboardX.summary import text as text_summary
    self._add(text_summary(tag, text), step)

  def flush(self) -> None:
    self._events.flush()

  def close(self) -> None:
    self._events.close()


class MetricWriter:
  """Writes each event to the console, metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = self._tb = None
    if enabled:
      path = os.path.join(workdir, "metrics.jsonl")
      torn = os.path.exists(path) and os.path.getsize(path) and not _ends_with_newline(path)
      self._jsonl = open(path, "a", buffering=1)
      if torn:  # a process killed mid-line: start the next event on a line of its own
        self._jsonl.write("\n")
      self._tb = _EventFile(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    log.info("step %d  %-5s  %s", step, split,
             "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))
    record = {"step": step, "split": split, "time": round(time.time(), 3)}
    record.update({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    for k, v in metrics.items():
      self._tb.add_scalar(f"{split}/{k}", v, step)
    self.flush()

  def write_text(self, tag: str, text: str) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, 0)

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """Every event in `<workdir>/metrics.jsonl`, in order (a torn last line is skipped)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  events = []
  with open(path) as f:
    for line in f:
      try:
        events.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return events

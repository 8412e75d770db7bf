r"""Where metrics go: the console, `metrics.jsonl` and TensorBoard event files.

Each event is (step, split, {name: float}); `metrics.jsonl` holds one JSON
object per event, `{"step": ..., "split": ..., **metrics}`, appended so a
resumed run continues the same file.

On the console an event is one line, every value at full precision (the
shortest text that reads back as the same float), for log scrapers such as
SageMaker's metric definitions:

    12:00:01 step 250 eval accuracy=0.9861111111111112 loss=0.04412 num_examples=144

    regex for a metric:  step (\d+) eval .*\baccuracy=([-+0-9.e]+|nan|inf)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import sys
import time

from jaxtrain import files
from jaxtrain.run import workdir as wd

log = logging.getLogger("jaxtrain")


def _fmt(v) -> str:
  return repr(float(v)) if isinstance(v, float) else str(v)


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

  def add_hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
    """TensorBoard's HParams view: this run's settings beside its final metrics."""
    from tensorboardX.summary import hparams as hparams_summaries

    for summary in hparams_summaries(hparams, metrics):
      self._add(summary, 0)

  def flush(self) -> None:
    self._events.flush()

  def close(self) -> None:
    self._events.close()


class MetricWriter:
  """Writes each event to the console, metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard_dir: str | None = None):
    self.enabled = enabled
    self._jsonl = self._tb = None
    if enabled:
      path = wd.metrics(workdir)
      torn = os.path.exists(path) and os.path.getsize(path) and not _ends_with_newline(path)
      self._jsonl = open(path, "a", buffering=1)
      if torn:  # a process killed mid-line: start the next event on a line of its own
        self._jsonl.write("\n")
      self._tb = _EventFile(tensorboard_dir or wd.tensorboard(workdir))

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    log.info("step %d %s %s", step, split, " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))
    record = {"step": step, "split": split, "time": round(time.time(), 3)}
    record.update({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    for k, v in metrics.items():
      self._tb.add_scalar(f"{split}/{k}", v, step)
    self.flush()

  def write_text(self, tag: str, text: str) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, 0)

  def write_hparams(self, config_dict: dict, final_metrics: dict[str, float]) -> None:
    """The config's leaves (dotted names) as hparams, with `{split}/{name}` final metrics."""
    if self.enabled:
      self._tb.add_hparams(flatten_config(config_dict), final_metrics)
      self.flush()

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


# Kept in this module's namespace for code written against it; run/workdir.py owns them.
read_metrics, event_at, keep_up_to = wd.read_events, wd.event_at, wd.keep_up_to


def _records(data: bytes):
  """(start, end, payload) of each whole TFRecord in an event file's bytes; a torn tail
  (a process killed mid-write) ends the list."""
  at = 0
  while at + 12 <= len(data):
    length = struct.unpack("<Q", data[at : at + 8])[0]
    end = at + 12 + length + 4
    if end > len(data):
      return
    yield at, end, data[at + 12 : at + 12 + length]
    at = end


def keep_tensorboard_up_to(logdir: str, step: int) -> int:
  """Drops the summaries after `step` from the event files in `logdir`; returns how many.

  What `workdir.keep_up_to` does for metrics.jsonl (whose abandoned file keeps
  the values): a resumed run's curves show one history, not the steps it
  trains again twice. Each file is rewritten whole or not at all.
  """
  from tensorboardX.proto import event_pb2

  dropped = 0
  for name in sorted(os.listdir(logdir)) if os.path.isdir(logdir) else ():
    path = os.path.join(logdir, name)
    if not name.startswith("events") or not os.path.isfile(path):
      continue
    with open(path, "rb") as f:
      data = f.read()
    kept, later, whole = [], 0, 0
    for start, end, payload in _records(data):
      whole = end
      event = event_pb2.Event.FromString(payload)
      if event.step > step and event.HasField("summary"):
        later += 1
      else:
        kept.append(data[start:end])
    if later or whole != len(data):
      files.write_bytes(path, b"".join(kept))
    dropped += later
  return dropped


def flatten_config(tree: dict, prefix: str = "") -> dict:
  """{"optimizer.learning_rate": 0.1, ...}; lists become strings (HParams takes scalars)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten_config(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
  return flat


class ProgressBar:
  """A live line on a terminal: step, epoch, ETA, steps/s, examples/s, the last losses.

  Updating it costs no device sync: it shows the metrics of the last log
  interval. Off (plain log lines only) when stdout is not a terminal.
  """

  def __init__(self, total: int, start: int, steps_per_epoch: int, *, enabled: bool):
    self._bar = self._redirect = None
    self._per_epoch = steps_per_epoch
    self._shown = {}
    if enabled and sys.stdout.isatty():
      from tqdm import tqdm
      from tqdm.contrib.logging import logging_redirect_tqdm

      sized = shutil.get_terminal_size((0, 0)).columns > 0  # a terminal of 0 columns: 100
      self._bar = tqdm(
        total=total,
        initial=start,
        unit="step",
        dynamic_ncols=sized,
        ncols=None if sized else 100,
        file=sys.stdout,
        leave=False,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
      )
      # Log lines print above the bar instead of through it.
      self._redirect = logging_redirect_tqdm([log])
      self._redirect.__enter__()

  def update(self, step: int) -> None:
    if self._bar is not None:
      self._bar.set_description(f"epoch {step // self._per_epoch + 1}", refresh=False)
      self._bar.update(step - self._bar.n)

  def set_metrics(self, step: int, split: str, metrics: dict) -> None:
    """Shows an event's losses (a listener of `Loop.emit`, like `MetricWriter.write`)."""
    if self._bar is None:
      return
    if split == "train":
      self._shown["loss"] = metrics.get("loss")
      self._shown["ex/s"] = metrics.get("examples_per_sec")
    elif "loss" in metrics:
      self._shown[f"{split}_loss"] = metrics["loss"]
    self._bar.set_postfix(
      {k: f"{v:.4g}" for k, v in self._shown.items() if v is not None}, refresh=False
    )

  def close(self) -> None:
    if self._bar is not None:
      self._redirect.__exit__(None, None, None)
      self._bar.close()
      self._bar = self._redirect = None

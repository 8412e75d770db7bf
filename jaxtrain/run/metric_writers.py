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
import sys
import time

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
      path = os.path.join(workdir, "metrics.jsonl")
      torn = os.path.exists(path) and os.path.getsize(path) and not _ends_with_newline(path)
      self._jsonl = open(path, "a", buffering=1)
      if torn:  # a process killed mid-line: start the next event on a line of its own
        self._jsonl.write("\n")
      self._tb = _EventFile(tensorboard_dir or os.path.join(workdir, "tensorboard"))

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


def _event(line: bytes) -> dict | None:
  """A line of metrics.jsonl as an event, or None for anything else (torn, garbled, edited)."""
  try:
    event = json.loads(line.decode("utf-8"))
  except (UnicodeDecodeError, ValueError):
    return None
  if not (isinstance(event, dict) and isinstance(event.get("step"), int)
          and isinstance(event.get("split"), str)):
    return None
  return event


def read_metrics(workdir: str) -> list[dict]:
  """Every event in `<workdir>/metrics.jsonl`, in order.

  A line that is not an event (a torn last line, bytes that are not UTF-8,
  JSON that is not an object with an int `step` and a `split`) is passed
  over, with a warning: one bad line never makes a workdir unreadable.
  """
  path = os.path.join(workdir, "metrics.jsonl")
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
  events = [e for e in read_metrics(workdir) if e["split"] == split and e["step"] == step]
  return events[-1] if events else None


def keep_up_to(workdir: str, step: int) -> int:
  """Drops the events after `step` from metrics.jsonl (into metrics.abandoned.jsonl).

  A run resumed from the checkpoint of `step` trains the steps after it
  again: the events of the attempt that did not reach its next checkpoint
  would otherwise be a second history of the same steps. Returns how many.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  events = read_metrics(workdir)
  later = [e for e in events if e["step"] > step]
  if not later:
    return 0
  with open(os.path.join(workdir, "metrics.abandoned.jsonl"), "a") as f:
    f.writelines(json.dumps(e) + "\n" for e in later)
  with open(path + ".tmp", "w") as f:
    f.writelines(json.dumps(e) + "\n" for e in events if e["step"] <= step)
  os.replace(path + ".tmp", path)
  return len(later)


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
      self._bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=sized,
                       ncols=None if sized else 100, file=sys.stdout, leave=False, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                       "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
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
    self._bar.set_postfix({k: f"{v:.4g}" for k, v in self._shown.items() if v is not None},
                          refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._redirect.__exit__(None, None, None)
      self._bar.close()
      self._bar = self._redirect = None

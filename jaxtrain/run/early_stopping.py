"""Early stopping on an eval metric, and the best k checkpoints by that metric.

The tracker's state is a function of the run's eval events, so a resumed run
rebuilds it from metrics.jsonl and stops at the step an uninterrupted run
would have. Patience counts evaluations since the last improvement by at
least `min_delta`; the best checkpoints are simply the k best values (earlier
steps first among equals). They live in `<workdir>/best_checkpoints/` beside
the latest ones in `checkpoints/`; `best.json` there names the best step, its
value, and every kept step's value.
"""

from __future__ import annotations

import logging
import os

import jax

from jaxtrain import files
from jaxtrain.errors import UserError
from jaxtrain.run import checkpoint, workdir as wd

log = logging.getLogger("jaxtrain")


class Tracker:
  """Best value so far, and how many evaluations since it last improved by min_delta."""

  def __init__(self, mode: str, min_delta: float, patience: int):
    self.mode, self.min_delta, self.patience = mode, min_delta, patience
    self.best, self.best_step, self.since_best = None, None, 0
    self.history: dict[int, float] = {}  # every evaluation's value, by step

  def ranked(self, k: int) -> list[int]:
    """The steps of the k best values; among equal values the earlier step first."""
    sign = 1.0 if self.mode == "min" else -1.0
    return sorted(self.history, key=lambda s: (sign * self.history[s], s))[:k]

  def improves(self, value: float) -> bool:
    if self.best is None:
      return True
    return (
      value < self.best - self.min_delta
      if self.mode == "min"
      else value > self.best + self.min_delta
    )

  def update(self, step: int, value: float) -> bool:
    self.history[step] = value
    if self.improves(value):
      self.best, self.best_step, self.since_best = value, step, 0
      return True
    self.since_best += 1
    return False

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.since_best >= self.patience

  @classmethod
  def from_events(cls, events, config, up_to_step: int) -> "Tracker":
    es = config.early_stopping
    tracker = cls(es.mode, es.min_delta, es.patience)
    by_step = {e["step"]: e for e in events if e.get("split") == "eval" and e["step"] <= up_to_step}
    for step in sorted(by_step):
      if es.metric in by_step[step]:
        tracker.update(step, by_step[step][es.metric])
    return tracker


def metric_value(metrics: dict, name: str) -> float:
  if name not in metrics:
    raise UserError(
      f"config.early_stopping.metric={name!r} is not an eval metric (they are: "
      f"{', '.join(sorted(metrics))})"
    )
  return float(metrics[name])


def best_dir(workdir: str) -> str:
  return os.path.abspath(wd.best_checkpoints(workdir))


make_best_manager = checkpoint.make_best_manager  # where code written against this module finds it


read_best = wd.read_best  # where code written against this module finds it


def save_best(
  manager, workdir: str, step: int, state, keep: int, metric: str, tracker: Tracker
) -> None:
  """Keeps this evaluation's state if it is among the k best so far; drops the one it displaces.

  Best is by value; among equal values the earlier step wins (a later copy
  of the same quality adds nothing), so the set does not churn on plateaus.
  Every process calls this (saving is collective); the ranking comes from
  the evaluations' values, which all processes share.
  """
  ranked = tracker.ranked(keep)
  on_disk = set(manager.all_steps())
  if step in ranked and step not in on_disk:
    checkpoint.save_state(manager, step, state)
  for old in sorted(on_disk - set(ranked)):
    manager.delete(old)
  if jax.process_index() == 0:
    files.write_json(
      wd.best_record(workdir),
      {
        "metric": metric,
        "mode": tracker.mode,
        "best_step": ranked[0],
        "best_value": tracker.history[ranked[0]],
        "kept": {str(s): tracker.history[s] for s in ranked},
        "kept_steps": sorted(ranked),
      },
    )


def restore_best(manager, state, tracker: Tracker):
  """`state` with the arrays of the best usable checkpoint, and its step (None, None if none).

  A best checkpoint that does not verify is passed over for the next best,
  in one warning naming its step and what differs: the test then measures
  the best model that is intact.
  """
  on_disk = set(manager.all_steps())
  for step in [s for s in tracker.ranked(len(tracker.history)) if s in on_disk]:
    try:
      return checkpoint.restore(manager, step, state), step
    except Exception as e:  # Orbax, TensorStore and the checksums raise many types here
      log.warning(
        "best checkpoint at step %d is unusable (%s: %s); passing over it",
        step,
        type(e).__name__,
        str(e).strip().splitlines()[0] if str(e).strip() else "",
      )
  return None, None

"""Early stopping on an eval metric, and the best k checkpoints by that metric.

The tracker's state is a function of the run's eval events, so a resumed run
rebuilds it from metrics.jsonl and stops at the step an uninterrupted run
would have. The best checkpoints live in `<workdir>/best_checkpoints/`
(Orbax keeps the k best by the metric), beside the latest ones in
`checkpoints/`; `best.json` there names the best step and value.
"""

from __future__ import annotations

import json
import os

import orbax.checkpoint as ocp

from jaxtrain import checkpoint
from jaxtrain.errors import UserError


class Tracker:
  """Best value so far, and how many evaluations since it last improved by min_delta."""

  def __init__(self, mode: str, min_delta: float, patience: int):
    self.mode, self.min_delta, self.patience = mode, min_delta, patience
    self.best, self.best_step, self.since_best = None, None, 0

  def improves(self, value: float) -> bool:
    if self.best is None:
      return True
    return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

  def update(self, step: int, value: float) -> bool:
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
    raise UserError(f"config.early_stopping.metric={name!r} is not an eval metric (they are: "
                    f"{', '.join(sorted(metrics))})")
  return float(metrics[name])


def best_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "best_checkpoints")


def make_best_manager(workdir: str, config, read_only: bool = False) -> ocp.CheckpointManager:
  metric = config.early_stopping.metric
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max(config.keep_best_checkpoints, 1), best_fn=lambda m: m[metric],
      best_mode=config.early_stopping.mode, create=not read_only, read_only=read_only,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(best_dir(workdir), options=options, item_names=("state",))


def save_best(manager, workdir: str, step: int, state, metric: str, value: float, tracker) -> None:
  """Offers this evaluation's state to the best-k set (Orbax drops all but the k best)."""
  if step not in manager.all_steps():
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(checkpoint.state_arrays(state))), metrics={metric: value})
    manager.wait_until_finished()
  tmp = os.path.join(best_dir(workdir), "best.json.tmp")
  with open(tmp, "w") as f:
    json.dump({"metric": metric, "mode": tracker.mode, "best_step": tracker.best_step,
               "best_value": tracker.best, "kept_steps": manager.all_steps()}, f, indent=2)
  os.replace(tmp, os.path.join(best_dir(workdir), "best.json"))


def restore_best(manager, state, tracker):
  """`state` with the arrays of the best checkpoint (None if there is none).

  The tracker's best (the first evaluation to reach the best value) wins
  ties, as in best.json; Orbax's own choice is the fallback.
  """
  step = tracker.best_step if tracker.best_step in manager.all_steps() else manager.best_step()
  if step is None:
    return None, None
  target = checkpoint.state_target(state)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return state.replace(**restored.state), step

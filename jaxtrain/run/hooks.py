"""Periodic work between training steps: small objects with a cadence, in the spirit of CLU.

After every dispatched step (or k steps, with `steps_per_dispatch`) the loop
calls each hook in order with the `Loop`, the run as it stands: its state,
step, data and writers. A hook decides with `due(loop)` whether this step is
one of its own (by default: a multiple of `every_steps` was reached, or this
process's last step) and then does its work in `run(loop)`; `close(loop)` is
called once when training ends, however it ends. A hook ends the run by
setting `loop.stop` ("early_stop", "preempted"); the checkpoint hook then
saves and the loop stops after this step.

The built-in hooks, in the order the loop runs them:
    Progress         the live bar (every step)
    LogTrainMetrics  train metrics, learning rate, speed, the NaN policy
    Evaluate         eval metrics; early stopping and the k best checkpoints
    (your hooks)     e.g. samples every N steps: `train_and_evaluate(..., hooks=[...])`
    Preemption       SIGTERM/SIGINT (and the multi-host sync point) -> stop
    Checkpoint       Orbax save of state + data position

Every process runs every hook (saves and evaluations are collective); a
hook of your own that writes files should do so on `jax.process_index() == 0`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable

import jax
import numpy as np

from jaxtrain.run import compiled, early_stopping, nan_guard, parallel
from jaxtrain.run.compiled import evaluate, without_count
from jaxtrain.steps import summarize

log = logging.getLogger("jaxtrain")


@dataclasses.dataclass(eq=False)
class Loop:
  """The run as hooks see it between steps."""

  config: Any
  workdir: str
  layout: parallel.Layout
  inputs: Any  # run/inputs.py's RunInputs: splits, preprocessing, task
  state: Any  # in the step's layout (under pmap: a copy per device)
  step: int  # global steps done
  num_train_steps: int  # the run's length
  last_step: int  # where this process stops (`stop_at_step`), <= num_train_steps
  first_step: int = 0  # where this process started (a resumed run: its checkpoint)
  previous_step: int = 0  # `step` before the last dispatch
  steps_per_epoch: int = 0
  schedule: Callable = None  # the learning rate at each step
  train_iter: Any = None  # the data iterator whose position checkpoints hold
  manager: Any = None  # the Orbax CheckpointManager of <workdir>/checkpoints
  writer: Any = None  # metric_writers.MetricWriter (console, metrics.jsonl, TensorBoard)
  lock: Any = None  # workdir.WorkdirLock this process holds
  totals: Any = None  # train metrics summed on device since the last log
  total_shapes: Any = None  # their shapes and dtypes
  health: Any = None  # nan_guard's record, on device
  metric_names: tuple = ()
  data_wait: float = 0.0  # seconds spent waiting for batches since the last log
  stop: str | None = None  # set by a hook ("early_stop", "preempted"): the loop ends
  stop_signal: str | None = None  # the signal behind a "preempted" stop
  config_dict: dict = dataclasses.field(default_factory=dict)
  events: dict = dataclasses.field(default_factory=dict)  # split -> metrics emitted this step
  listeners: list = dataclasses.field(default_factory=list)  # (step, split, metrics) -> None
  watchdog: Any = None  # watchdog.Watchdog: marks each phase as it starts

  def mark(self, phase: str, step: int | None = None) -> None:
    """Tells the stall watchdog a step (`step`: the one being taken), evaluation, save or
    test starts."""
    if self.watchdog is not None:
      self.watchdog.mark(phase, self.step if step is None else step)

  @property
  def final(self) -> bool:
    """This is the run's last step (not merely this process's)."""
    return self.step == self.num_train_steps

  def reached(self, every_steps: int) -> bool:
    """A multiple of `every_steps` was reached by the last dispatch."""
    return every_steps > 0 and self.step // every_steps != self.previous_step // every_steps

  def emit(self, split: str, metrics: dict, step: int | None = None) -> None:
    """Reports metrics to every listener (console, metrics.jsonl, TensorBoard...), under this
    step or the `step` of the state they measured (a best checkpoint's)."""
    self.events[split] = metrics
    for listener in self.listeners:
      listener(self.step if step is None else step, split, metrics)

  def host_state(self):
    """The state as checkpoints hold it (under pmap: one copy)."""
    return self.layout.from_step(self.state)

  def _shapes(self):
    """The totals' shapes on one device (pmap's leading device axis dropped)."""
    drop = 1 if self.layout.mode == "pmap" else 0
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[drop:], s.dtype), self.total_shapes)

  def zero_totals(self):
    """Metric totals at zero on the devices: one float32 vector where every total is float32
    (compiled.py: fewer buffers per dispatch), else one array per metric."""
    shapes = self._shapes()
    if compiled.packable(shapes):
      size = sum(int(np.prod(s.shape, dtype=np.int64)) for s in jax.tree.leaves(shapes))
      return self.layout.put_replicated(np.zeros(size, np.float32))
    return self.layout.zeros_like(self.total_shapes)

  def fetch_totals(self) -> dict:
    """The metric totals since the last log, by name, on the host (waits for the device)."""
    return compiled.unpack_totals(self.layout.fetch(self.totals), self._shapes())

  def fetch_health(self) -> dict:
    """nan_guard's record, by name, on the host."""
    return nan_guard.as_dict(self.layout.fetch(self.health))


class Hook:
  """Work at a cadence: `every_steps` (0: none of its own) and this process's last step."""

  def __init__(self, every_steps: int = 0):
    self.every_steps = int(every_steps)

  def due(self, loop: Loop) -> bool:
    return loop.reached(self.every_steps) or loop.step == loop.last_step

  def __call__(self, loop: Loop) -> None:
    if self.due(loop):
      self.run(loop)

  def run(self, loop: Loop) -> None:
    raise NotImplementedError

  def close(self, loop: Loop) -> None:
    """Once when training ends, normally or not."""


class Progress(Hook):
  """Moves the live bar every step and shows the last logged losses (no device sync)."""

  def __init__(self, bar):
    super().__init__(1)
    self.bar = bar

  def run(self, loop: Loop) -> None:
    self.bar.update(loop.step)

  def close(self, loop: Loop) -> None:
    self.bar.close()


class LogTrainMetrics(Hook):
  """The train metrics of the interval, with learning rate, speed and the input wait.

  The loop's only regular wait for the device. Applies the NaN policy: a
  non-finite step halts (or, with "skip", is counted) here.
  """

  def __init__(
    self,
    every_steps: int,
    schedule: Callable,
    *,
    nan_policy: str = "halt",
    nan_max_consecutive_skips: int = 10,
  ):
    super().__init__(every_steps)
    self.schedule, self.nan_policy, self.max_skips = schedule, nan_policy, nan_max_consecutive_skips
    self.t_log, self.logged_step = time.perf_counter(), None

  def due(self, loop: Loop) -> bool:
    return super().due(loop) or loop.final

  def run(self, loop: Loop) -> None:
    if self.logged_step is None:
      self.logged_step = loop.first_step
    metrics = loop.inputs.task.finalize(summarize(loop.fetch_totals()))
    skipped = nan_guard.check(
      loop.fetch_health(), loop.metric_names, policy=self.nan_policy, max_consecutive=self.max_skips
    )
    elapsed = time.perf_counter() - self.t_log
    # data_wait: the share of the interval the loop waited for input (the device
    # idles only if that exceeds what it had queued: an upper bound).
    metrics.update(
      learning_rate=float(self.schedule(loop.step - 1)),
      steps_per_sec=(loop.step - self.logged_step) / elapsed,
      examples_per_sec=metrics.pop("count") / elapsed,
      data_wait=loop.data_wait / elapsed,
    )
    if skipped:
      metrics["skipped_steps"] = skipped
    loop.emit("train", metrics)
    loop.totals, loop.data_wait = None, 0.0
    self.t_log, self.logged_step = time.perf_counter(), loop.step


class Evaluate(Hook):
  """Eval metrics every `every_steps` and after the run's last step.

  With an early-stopping metric it tracks the best value (rebuilt from the
  run's past events on resume), keeps the k best checkpoints
  (`keep_best_checkpoints`) and stops the run after `patience` evaluations
  without improvement.
  """

  def __init__(
    self,
    every_steps: int,
    source,
    *,
    batch_size: int,
    early_stop_config=None,
    tracker: early_stopping.Tracker | None = None,
    best_manager=None,
    keep_best: int = 0,
  ):
    super().__init__(every_steps)
    self.source, self.batch_size = source, batch_size
    self.es, self.tracker, self.best_manager, self.keep_best = (
      early_stop_config,
      tracker,
      best_manager,
      keep_best,
    )

  def due(self, loop: Loop) -> bool:
    return loop.reached(self.every_steps) or loop.final

  def run(self, loop: Loop) -> None:
    loop.mark("evaluation")
    if loop.health is not None:  # a non-finite step halts the run before its state is measured
      nan_guard.check(
        loop.fetch_health(),
        loop.metric_names,
        policy=loop.config.nan_policy,
        max_consecutive=loop.config.nan_max_consecutive_skips,
      )
    task = loop.inputs.task
    metrics = without_count(
      evaluate(
        loop.state,
        self.source,
        batch_size=self.batch_size,
        layout=loop.layout,
        transform=loop.inputs.transform(train=False),
        finalize=task.finalize,
      )
    )
    loop.emit("eval", metrics)
    if self.tracker is None:
      return
    self.tracker.update(loop.step, early_stopping.metric_value(metrics, self.es.metric))
    if self.best_manager is not None:
      early_stopping.save_best(
        self.best_manager,
        loop.workdir,
        loop.step,
        loop.host_state(),
        self.keep_best,
        self.es.metric,
        self.tracker,
      )
    if self.tracker.should_stop and not loop.final:
      loop.stop = "early_stop"
      log.info(
        "early stopping at step %d: eval %s has not improved by %g for %d evaluations "
        "(last improvement: %.6g at step %d)",
        loop.step,
        self.es.metric,
        self.es.min_delta,
        self.es.patience,
        self.tracker.best,
        self.tracker.best_step,
      )
      loop.emit(
        "early_stop",
        {
          "last_improvement_step": self.tracker.best_step,
          f"last_improvement_{self.es.metric}": self.tracker.best,
        },
      )

  def best_state(self, loop: Loop):
    """The best checkpoint's state in the step's layout, and its step (None, None if none)."""
    if self.best_manager is None:
      return None, None
    state, step = early_stopping.restore_best(self.best_manager, loop.host_state(), self.tracker)
    return (None, None) if state is None else (loop.layout.to_step(state), step)

  def close(self, loop: Loop) -> None:
    if self.best_manager is not None:
      self.best_manager.close()


class Preemption(Hook):
  """Stops the run on SIGTERM/SIGINT/SIGHUP/SIGUSR1 (preemption.py).

  One process looks at its flag after every step; several agree every
  `every_steps` and at the last step, so that all of them stop at one step.
  """

  def __init__(self, watcher, every_steps: int = 1):
    super().__init__(every_steps)
    self.watcher = watcher

  def due(self, loop: Loop) -> bool:
    return getattr(self.watcher, "agree", None) is None or super().due(loop)

  def __call__(self, loop: Loop) -> None:
    observe = getattr(self.watcher, "observe", None)
    if observe is not None:  # a step boundary: the signal is in hand, whenever they agree
      observe()
    super().__call__(loop)

  def run(self, loop: Loop) -> None:
    if self.watcher.should_stop(loop.step):
      loop.stop, loop.stop_signal = (
        "preempted",
        getattr(self.watcher, "stop_signal", self.watcher.signal_name),
      )


class Checkpoint(Hook):
  """Saves state + data position every `every_steps`, at the last step, and when the run stops.

  Never saves a non-finite state, and applies the NaN policy first;
  `save` turns a failed write into one line naming the intact checkpoint.
  """

  def __init__(self, every_steps: int, save: Callable[["Loop"], None]):
    super().__init__(every_steps)
    self.save = save

  def due(self, loop: Loop) -> bool:
    return super().due(loop) or loop.final or loop.stop is not None

  def run(self, loop: Loop) -> None:
    self.save(loop)

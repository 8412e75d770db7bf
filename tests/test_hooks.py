"""Each periodic hook alone, on a small real Loop; and a user's hook inside a real run."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtrain import Hook, TrainState, linen_apply_fn
from jaxtrain.run import early_stopping, nan_guard, parallel
from jaxtrain.run.hooks import Checkpoint, Evaluate, LogTrainMetrics, Loop, Preemption, Progress
from jaxtrain.run.loop import train_and_evaluate
from jaxtrain.run.metric_writers import read_metrics
from jaxtrain.steps import accumulate, classification_loss
from jaxtrain.tasks import Classification, Task


class Arrays:
  """A random-access source of examples, as TFDS data sources are."""

  def __init__(self, **arrays):
    self.arrays = arrays

  def __len__(self):
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, i):
    return {k: v[i] for k, v in self.arrays.items()}


def _loop(step=10, previous=9, last=100, total=100, **fields) -> Loop:
  model = nn.Dense(3)
  state = TrainState.create(
    apply_fn=linen_apply_fn(model, "x"),
    variables=model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2))),
    tx=optax.sgd(0.1),
    loss_fn=classification_loss,
    rng=jax.random.PRNGKey(1),
  )
  events = []
  inputs = types.SimpleNamespace(task=Task.of(Classification()), transform=lambda train: dict)
  loop = Loop(
    config=None,
    workdir="unused",
    layout=parallel.Layout(parallel.make_mesh(jax.devices()[:1])),
    inputs=inputs,
    state=state,
    step=step,
    previous_step=previous,
    last_step=last,
    num_train_steps=total,
    **fields,
  )
  loop.listeners.append(lambda step, split, metrics: events.append((step, split, metrics)))
  return loop, events


def test_cadence_counts_multiples_reached_even_between_dispatches():
  hook = Hook(every_steps=25)
  assert hook.due(_loop(step=25, previous=24)[0])
  assert not hook.due(_loop(step=24, previous=23)[0])
  assert hook.due(_loop(step=32, previous=16)[0])  # 16 steps per dispatch: 25 was passed
  assert not hook.due(_loop(step=48, previous=32)[0])
  assert hook.due(_loop(step=7, previous=6, last=7)[0])  # this process's last step
  assert not Hook(every_steps=0).due(_loop(step=50, previous=49)[0])


def test_progress_moves_the_bar_every_step_and_closes_it():
  bar = types.SimpleNamespace(updates=[], closed=False)
  bar.update, bar.close = bar.updates.append, lambda: setattr(bar, "closed", True)
  loop, _ = _loop(step=3, previous=2)
  hook = Progress(bar)
  hook(loop)
  hook.close(loop)
  assert bar.updates == [3] and bar.closed


def test_train_metrics_are_logged_at_their_cadence_with_the_learning_rate():
  loop, events = _loop(step=20, previous=19, first_step=0, metric_names=("accuracy", "loss"))
  loop.health = nan_guard.new_health()
  one = {"loss": jnp.float32(2.0), "accuracy": jnp.float32(0.5), "count": jnp.float32(4.0)}
  two = {"loss": jnp.float32(1.0), "accuracy": jnp.float32(1.0), "count": jnp.float32(4.0)}
  loop.totals = accumulate(accumulate(None, one), two)
  hook = LogTrainMetrics(20, optax.linear_schedule(1.0, 0.0, 100))
  hook(loop)
  [(step, split, metrics)] = events
  assert (step, split) == (20, "train")
  assert metrics["loss"] == 1.5 and metrics["accuracy"] == 0.75
  assert metrics["learning_rate"] == pytest.approx(1 - 19 / 100)  # the rate of the step taken
  assert metrics["steps_per_sec"] > 0 and loop.totals is None
  loop.step, loop.previous_step = 21, 20
  hook(loop)
  assert len(events) == 1  # not due


def test_a_non_finite_step_halts_at_the_log():
  loop, _ = _loop(step=20, previous=19, metric_names=("loss",))
  loop.totals = accumulate(None, {"loss": jnp.float32(1.0), "count": jnp.float32(1.0)})
  loop.health = dict(
    nan_guard.new_health(), first_bad_step=jnp.int32(12), first_bad_metric=jnp.int32(0)
  )
  with pytest.raises(nan_guard.NonFiniteError, match="non-finite loss at step 13"):
    LogTrainMetrics(20, optax.constant_schedule(0.1))(loop)


def test_evaluation_reports_every_example_and_stops_early_without_improvement():
  rng = np.random.default_rng(0)
  source = Arrays(x=rng.normal(size=(10, 2)).astype(np.float32), label=rng.integers(0, 3, 10))
  es = types.SimpleNamespace(metric="loss", mode="min", min_delta=0.0, patience=2)
  tracker = early_stopping.Tracker("min", 0.0, 2)
  tracker.update(5, -1.0)  # an earlier evaluation no later one can beat
  hook = Evaluate(10, source, batch_size=4, early_stop_config=es, tracker=tracker)
  loop, events = _loop(step=10, previous=9)
  hook(loop)
  assert events[0][1] == "eval" and events[0][2]["num_examples"] == 10 and loop.stop is None
  loop.step, loop.previous_step = 20, 19
  hook(loop)
  assert loop.stop == "early_stop"
  assert events[-1][1:] == (
    "early_stop",
    {"last_improvement_step": 5, "last_improvement_loss": -1.0},
  )
  assert not hook.due(_loop(step=15, previous=14, last=15)[0])  # not at a process's last step
  assert hook.due(_loop(step=15, previous=14, last=15, total=15)[0])  # but at the run's


def test_preemption_stops_the_loop_with_the_signal_it_got():
  watcher = types.SimpleNamespace(
    signal_name=None, should_stop=lambda step: watcher.signal_name is not None
  )
  loop, _ = _loop()
  hook = Preemption(watcher)
  hook(loop)
  assert loop.stop is None
  watcher.signal_name = "SIGINT"
  hook(loop)
  assert (loop.stop, loop.stop_signal) == ("preempted", "SIGINT")


def test_checkpoints_at_the_cadence_at_the_end_and_whenever_the_run_stops():
  saved = []
  hook = Checkpoint(50, lambda loop: saved.append(loop.step))
  for step in range(1, 61):
    loop, _ = _loop(step=step, previous=step - 1, last=60, total=100)
    loop.stop = "early_stop" if step == 33 else None
    hook(loop)
  assert saved == [33, 50, 60]


class RecordParams(Hook):
  """A user's hook: every 20 steps, the norm of the params it sees, emitted as an event."""

  def __init__(self):
    super().__init__(every_steps=20)
    self.seen = []

  def run(self, loop):
    norm = float(optax.tree.norm(loop.host_state().params))
    self.seen.append((loop.step, norm))
    loop.emit("probe", {"param_norm": norm})


def test_a_users_hook_runs_in_the_loop_and_resumes_with_it(small_config, tmp_path):
  hook = RecordParams()
  workdir = str(tmp_path / "w")
  train_and_evaluate(small_config, workdir, stop_at_step=30, hooks=[hook])
  assert [s for s, _ in hook.seen] == [20, 30]  # its cadence, and this process's last step
  state = train_and_evaluate(small_config, workdir, hooks=[hook])
  assert [s for s, _ in hook.seen] == [20, 30, 40, 60]
  assert hook.seen[-1][1] == pytest.approx(float(optax.tree.norm(state.params)))
  probes = [e for e in read_metrics(workdir) if e["split"] == "probe"]
  assert [e["step"] for e in probes] == [20, 30, 40, 60]

"""Non-finite losses and updates: never applied, never checkpointed; halt or skip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jaxtrain import train_and_evaluate
from jaxtrain.run import checkpoint
from jaxtrain.run.metric_writers import read_metrics
from jaxtrain.run.nan_guard import NonFiniteError, all_finite, check, guard, new_health


def _blow_up_at(config, step, scale):
  """A piecewise schedule that multiplies the learning rate by `scale` from `step` on."""
  config.optimizer.update(
    name="sgd",
    learning_rate=0.05,
    momentum=0.9,
    schedule="piecewise",
    warmup_steps=0,
    piecewise_boundaries=(step,),
    piecewise_scales=(scale,),
  )


def test_halt_names_the_step_and_keeps_the_last_finite_checkpoint(small_config, tmp_path):
  small_config.update(num_train_steps=60, checkpoint_every_steps=10, log_every_steps=5)
  _blow_up_at(small_config, 25, 1e35)
  workdir = str(tmp_path / "run")
  with pytest.raises(NonFiniteError, match=r"non-finite \w+ at step 2[6-9] \(nan_policy=halt\)"):
    train_and_evaluate(small_config, workdir)
  manager = checkpoint.make_manager(workdir)
  assert manager.latest_step() == 20
  for step in manager.all_steps():
    _, arrays = checkpoint.load_arrays(workdir, step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(arrays) if x.dtype.kind == "f")


def test_skip_carries_on_past_one_bad_batch_and_counts_it(small_config, tmp_path, monkeypatch):
  from jaxtrain.data import input_pipeline

  real = input_pipeline.train_dataset

  def with_a_corrupt_record(*args, **kwargs):  # batch 30 holds a NaN pixel
    def poison(index, batch):
      if index == 30:
        batch = dict(batch, image=batch["image"].copy())
        batch["image"][0, 0, 0, 0] = np.nan
      return batch

    return real(*args, **kwargs).map_with_index(poison)

  monkeypatch.setattr(input_pipeline, "train_dataset", with_a_corrupt_record)
  small_config.update(num_train_steps=60, nan_policy="skip")
  small_config.dataset.device_cache_max_mb = 0  # fed from the (poisoned) host pipeline
  state = train_and_evaluate(small_config, str(tmp_path / "run"))
  assert int(state.step) == 60
  assert bool(all_finite(state.params))
  train_events = [e for e in read_metrics(str(tmp_path / "run")) if e["split"] == "train"]
  assert [e.get("skipped_steps", 0) for e in train_events] == [0, 1, 1]
  assert all(np.isfinite(e["loss"]) for e in train_events)
  assert train_events[-1]["accuracy"] > 0.5


def test_skip_halts_after_k_bad_steps_in_a_row(small_config, tmp_path):
  small_config.update(
    num_train_steps=60,
    nan_policy="skip",
    nan_max_consecutive_skips=3,
    log_every_steps=10,
    checkpoint_every_steps=10,
  )
  _blow_up_at(small_config, 25, 1e35)
  with pytest.raises(NonFiniteError, match=r"steps in a row had a non-finite loss or gradient"):
    train_and_evaluate(small_config, str(tmp_path / "run"))
  assert checkpoint.make_manager(str(tmp_path / "run")).latest_step() == 20


class _State(struct.PyTreeNode):
  step: jax.Array
  w: jax.Array


def test_guard_keeps_old_state_but_advances_the_step():
  old = _State(step=jnp.int32(4), w=jnp.ones(3))
  new = _State(step=jnp.int32(5), w=jnp.full(3, jnp.nan))
  metrics = {"loss": jnp.float32(jnp.inf), "count": jnp.float32(8)}
  kept, reported, health = guard(old, new, metrics, new_health())
  assert int(kept.step) == 5 and np.array_equal(kept.w, np.ones(3))
  assert float(reported["loss"]) == 0 and float(reported["count"]) == 0
  with pytest.raises(NonFiniteError, match="non-finite loss at step 5"):
    check(health, list(metrics), policy="halt", max_consecutive=10)
  assert check(health, list(metrics), policy="skip", max_consecutive=10) == 1

"""train_step / eval_step used as a researcher would: own model, own loss, own loop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtrain import TrainState, eval_step, linen_apply_fn, train_step
from jaxtrain.steps import accumulate, classification_loss, summarize


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x):  # no `train` argument: linen_apply_fn must cope
    return nn.Dense(1)(x)[:, 0]


def squared_error(prediction, batch):
  return {"loss": (prediction - batch["y"]) ** 2, "abs_error": jnp.abs(prediction - batch["y"])}


def _regression_state(seed=0):
  model = Linear()
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 3)))
  return TrainState.create(
    apply_fn=linen_apply_fn(model, input_key="x"),
    variables=variables,
    tx=optax.sgd(0.1),
    loss_fn=squared_error,
    rng=jax.random.PRNGKey(seed),
  )


def test_custom_loop_with_custom_loss_fits_a_linear_function():
  rng = np.random.default_rng(0)
  w = np.array([1.5, -2.0, 0.5], np.float32)
  state = _regression_state()
  step = jax.jit(train_step, donate_argnums=0)
  evaluate = jax.jit(eval_step)
  for _ in range(300):
    x = rng.normal(size=(32, 3)).astype(np.float32)
    state, metrics = step(state, {"x": x, "y": x @ w + 0.25})
  x = rng.normal(size=(256, 3)).astype(np.float32)
  final = evaluate(state, {"x": x, "y": x @ w + 0.25})
  assert int(state.step) == 300
  assert float(final["loss"]) < 1e-4
  assert set(metrics) == {"loss", "abs_error", "count", "grad_norm", "param_norm"}
  np.testing.assert_allclose(state.params["Dense_0"]["kernel"][:, 0], w, atol=1e-2)
  np.testing.assert_allclose(state.params["Dense_0"]["bias"], [0.25], atol=1e-2)


def test_train_step_is_pure():
  state = _regression_state()
  batch = {"x": np.ones((4, 3), np.float32), "y": np.zeros(4, np.float32)}
  before = jax.tree.map(np.array, state.params)
  a, _ = train_step(state, batch)
  b, _ = train_step(state, batch)
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, state.params))
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  assert int(state.step) == 0 and int(a.step) == 1


def test_masked_rows_do_not_count():
  state = _regression_state()
  x = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
  y = np.arange(6, dtype=np.float32)
  padded = {
    "x": np.concatenate([x, 100 * np.ones((2, 3), np.float32)]),
    "y": np.concatenate([y, [1e6, 1e6]]).astype(np.float32),
    "mask": np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32),
  }
  plain = eval_step(state, {"x": x, "y": y})
  masked = eval_step(state, padded)
  np.testing.assert_allclose(masked["loss"], plain["loss"], rtol=1e-6)
  assert float(masked["count"]) == 6
  # The update from a padded batch equals the update from the real rows alone.
  a, _ = train_step(state, padded)
  b, _ = train_step(state, {"x": x, "y": y})
  jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-6), a.params, b.params)


class Dropper(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(8)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(2)(nn.Dropout(0.5, deterministic=not train)(x))


def test_randomness_is_fold_in_of_step_and_batch_stats_update():
  model = Dropper()
  variables = model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 4)))
  state = TrainState.create(
    apply_fn=linen_apply_fn(model, input_key="x"),
    variables=variables,
    tx=optax.sgd(0.0),
    loss_fn=classification_loss,
    rng=jax.random.PRNGKey(3),
  )
  batch = {
    "x": np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32),
    "label": np.arange(16) % 2,
  }
  step = jax.jit(train_step)
  s1, m1 = step(state, batch)
  s1_again, m1_again = step(state, batch)
  s2, m2 = step(s1, batch)  # lr 0: only the dropout mask (step) differs
  assert float(m1["loss"]) == float(m1_again["loss"])
  assert float(m1["loss"]) != float(m2["loss"])
  assert not np.allclose(
    s1.model_state["batch_stats"]["BatchNorm_0"]["mean"],
    state.model_state["batch_stats"]["BatchNorm_0"]["mean"],
  )
  # Evaluation is deterministic and leaves the state alone.
  e1, e2 = jax.jit(eval_step)(s1, batch), jax.jit(eval_step)(s1, batch)
  assert float(e1["loss"]) == float(e2["loss"])


def test_accumulate_weights_by_count():
  totals = accumulate(None, {"loss": jnp.float32(1.0), "count": jnp.float32(2.0)})
  totals = accumulate(totals, {"loss": jnp.float32(4.0), "count": jnp.float32(1.0)})
  assert summarize(totals) == {"loss": pytest.approx(2.0), "count": 3.0}


def test_pmap_with_axis_name_matches_single_device_step():
  devices = jax.local_devices()
  state = _regression_state()
  x = np.random.default_rng(2).normal(size=(4 * len(devices), 3)).astype(np.float32)
  batch = {"x": x, "y": x.sum(1)}
  expected, expected_metrics = train_step(state, batch)
  stacked = jax.tree.map(lambda a: a.reshape((len(devices), -1) + a.shape[1:]), batch)
  replicated = jax.tree.map(lambda a: np.stack([a] * len(devices)), state)
  got, metrics = jax.pmap(lambda s, b: train_step(s, b, axis_name="d"), axis_name="d")(
    replicated, stacked
  )
  jax.tree.map(
    lambda p, q: np.testing.assert_allclose(p[0], q, rtol=1e-6), got.params, expected.params
  )
  np.testing.assert_allclose(metrics["loss"][0], expected_metrics["loss"], rtol=1e-6)

"""Schedules, optimizers and the weight-decay mask from config.optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.config import base_config
from jaxtrain.optim import decay_mask, make_optimizer, make_schedule


def _opt(**fields):
  opt = base_config().optimizer
  opt.update(fields)
  return opt


def test_warmup_cosine_reaches_peak_then_end_value():
  s = make_schedule(
    _opt(learning_rate=1.0, schedule="warmup_cosine", warmup_steps=10, end_lr_factor=0.1),
    num_train_steps=110,
  )
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(0.5)
  assert float(s(10)) == pytest.approx(1.0)
  assert float(s(60)) == pytest.approx(0.55, abs=1e-6)  # half way down the cosine
  assert float(s(110)) == pytest.approx(0.1)


def test_warmup_linear_and_piecewise_and_constant():
  lin = make_schedule(
    _opt(learning_rate=2.0, schedule="warmup_linear", warmup_steps=4), num_train_steps=14
  )
  assert [round(float(lin(i)), 6) for i in (0, 2, 4, 9, 14)] == [0.0, 1.0, 2.0, 1.0, 0.0]
  pw = make_schedule(
    _opt(
      learning_rate=1.0,
      schedule="piecewise",
      piecewise_boundaries=(10, 20),
      piecewise_scales=(0.1, 0.5),
    ),
    30,
  )
  assert [float(pw(i)) for i in (9, 10, 19, 20)] == pytest.approx([1.0, 0.1, 0.1, 0.05])
  const = make_schedule(_opt(learning_rate=0.3, warmup_steps=3), 100)
  assert [float(const(i)) for i in (0, 3, 99)] == pytest.approx([0.0, 0.3, 0.3])


def test_schedule_horizon_is_the_configured_run_length():
  opt = _opt(learning_rate=1.0, schedule="warmup_cosine", warmup_steps=0)
  assert float(make_schedule(opt, 100)(50)) != float(make_schedule(opt, 200)(50))


def _params():
  return {
    "dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
    "norm": {"scale": jnp.ones(2)},
  }


def test_weight_decay_skips_biases_and_norm_scales():
  assert decay_mask(_params()) == {
    "dense": {"kernel": True, "bias": False},
    "norm": {"scale": False},
  }
  for name in ("sgd", "adam", "adamw"):
    tx, _ = make_optimizer(_opt(name=name, learning_rate=0.1, weight_decay=0.5), 10)
    params = _params()
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    assert float(jnp.abs(updates["dense"]["kernel"]).sum()) > 0, name
    assert float(jnp.abs(updates["dense"]["bias"]).sum()) == 0, name
    assert float(jnp.abs(updates["norm"]["scale"]).sum()) == 0, name


def test_sgd_momentum_and_nesterov_differ_and_clipping_bounds_the_update():
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.array([30.0, 40.0, 0.0])}  # global norm 50

  def two_updates(**fields):
    tx, _ = make_optimizer(_opt(**fields), 10)
    state = tx.init(params)
    u, state = tx.update(grads, state, params)
    u, state = tx.update(grads, state, params)
    return np.asarray(u["w"])

  plain = two_updates(name="sgd", learning_rate=1.0, momentum=0.0)
  heavy = two_updates(name="sgd", learning_rate=1.0, momentum=0.9)
  nesterov = two_updates(name="sgd", learning_rate=1.0, momentum=0.9, nesterov=True)
  np.testing.assert_allclose(plain, [-30, -40, 0])
  np.testing.assert_allclose(heavy, [-57, -76, 0], rtol=1e-6)
  np.testing.assert_allclose(nesterov, [-81.3, -108.4, 0], rtol=1e-5)
  clipped = two_updates(name="sgd", learning_rate=1.0, momentum=0.0, grad_clip_norm=5.0)
  np.testing.assert_allclose(clipped, [-3, -4, 0], rtol=1e-6)


def test_accumulating_two_half_batches_is_one_full_batch():
  """accumulate_steps=2 over two halves updates once, as one step over the whole batch does."""
  import jax
  import numpy as np
  from jaxtrain import TrainState, classification_loss, linen_apply_fn, train_step
  from jaxtrain.config import base_config
  from jaxtrain.models.image import MLP

  model = MLP(num_classes=3, features=(16,))
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(64, 5)).astype(np.float32), "label": rng.integers(0, 3, 64)}
  variables = model.init(jax.random.PRNGKey(0), batch["image"][:1])

  def state_for(k):
    opt = base_config().optimizer
    opt.update(name="adam", learning_rate=0.01, accumulate_steps=k)
    tx, schedule = make_optimizer(opt, 10)
    return TrainState.create(
      apply_fn=linen_apply_fn(model),
      variables=variables,
      tx=tx,
      loss_fn=classification_loss,
      rng=jax.random.PRNGKey(1),
    ), schedule

  full, _ = state_for(1)
  full, _ = train_step(full, batch)
  acc, schedule = state_for(2)
  half = lambda lo: {k: v[lo : lo + 32] for k, v in batch.items()}
  after_one, _ = train_step(acc, half(0))
  np.testing.assert_array_equal(
    after_one.params["Dense_0"]["kernel"], variables["params"]["Dense_0"]["kernel"]
  )
  after_two, _ = train_step(after_one, half(32))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    after_two.params,
    full.params,
  )
  assert float(schedule(3)) == float(schedule(2))  # the schedule counts updates, not micro-steps

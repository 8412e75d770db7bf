"""The steps' contract with any model: NNX modules, losses that read params, states as values.

Everything here uses jaxtrain's core alone (state.py, steps.py) the way a
researcher's own loop would.
"""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtrain import TrainState, eval_step, linen_apply_fn, nnx_split, train_step
from jaxtrain.run import checkpoint, parallel
from jaxtrain.steps import classification_loss

from conftest import ROOT


class Net(nnx.Module):
  def __init__(self, dropout_rate=0.5, *, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(4, rngs=rngs)
    self.drop = nnx.Dropout(dropout_rate, rngs=rngs)
    self.layers = nnx.List([nnx.Linear(4 * 8 * 8, 16, rngs=rngs), nnx.Linear(16, 10, rngs=rngs)])

  def __call__(self, x):
    x = self.drop(nnx.relu(self.norm(self.conv(x))))
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers:
      x = layer(x)
    return x


def _batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "image": rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
    "label": rng.integers(0, 10, n).astype(np.int32),
  }


def _nnx_state(seed=0, dropout_rate=0.5):
  return TrainState.from_nnx(
    Net(dropout_rate, rngs=nnx.Rngs(seed)),
    tx=optax.adam(1e-2),
    loss_fn=classification_loss,
    rng=jax.random.PRNGKey(seed + 100),
  )


def test_nnx_module_trains_under_jit_with_batch_norm_and_dropout():
  state = _nnx_state()
  assert set(state.model_state) == {"batch_stats"}
  assert set(state.params["layers"]) == {"0", "1"}  # list indices as string keys, like Linen's
  step = jax.jit(train_step)
  batch = _batch()
  new, metrics = step(state, batch)
  stats = new.model_state["batch_stats"]["norm"]["mean"]
  assert not np.allclose(stats, 0.0)  # the batch statistics moved
  # Dropout is drawn from fold_in(rng, step): the same state and batch give the same bits,
  # the next step another mask.
  again, _ = step(state, batch)
  assert checkpoint.tree_digest(again.params) == checkpoint.tree_digest(new.params)
  out1 = new.apply_fn(new.variables, batch, train=True, rng=jax.random.PRNGKey(1))[0]
  out2 = new.apply_fn(new.variables, batch, train=True, rng=jax.random.PRNGKey(2))[0]
  assert not np.allclose(out1, out2)
  # Evaluation uses the running statistics and no dropout: deterministic whatever the key.
  e1 = new.apply_fn(new.variables, batch, train=False, rng=jax.random.PRNGKey(1))[0]
  e2 = new.apply_fn(new.variables, batch, train=False, rng=jax.random.PRNGKey(2))[0]
  np.testing.assert_array_equal(e1, e2)
  for _ in range(30):
    new, metrics = step(new, batch)
  assert float(metrics["loss"]) < 0.5
  assert float(jax.jit(eval_step)(new, batch)["count"]) == 16


def test_an_nnx_step_equals_the_same_step_written_in_nnx_by_hand():
  """With dropout off, jaxtrain's pure step is the NNX model's own training step."""
  state = _nnx_state(dropout_rate=0.0)
  batch = _batch()
  new, _ = jax.jit(train_step)(state, batch)

  model = Net(0.0, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def hand_step(model, optimizer, batch):
    def loss(model):
      logits = model(batch["image"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    grads = nnx.grad(loss)(model)
    optimizer.update(model, grads)

  model.train()
  hand_step(model, optimizer, batch)
  hand_params, _ = nnx_split(model)
  np.testing.assert_allclose(
    new.params["layers"]["1"]["kernel"], hand_params["params"]["layers"]["1"]["kernel"], atol=1e-6
  )
  np.testing.assert_allclose(
    new.model_state["batch_stats"]["norm"]["var"],
    hand_params["batch_stats"]["norm"]["var"],
    atol=1e-6,
  )


PMAP = r"""
import json, sys
import jax, numpy as np, optax
from flax import nnx
sys.path.insert(0, "tests")
from test_state import Net, _batch
from jaxtrain import TrainState, train_step
from jaxtrain.run import parallel
from jaxtrain.state import nnx_split
from jaxtrain.steps import classification_loss

def state_for(axis_name):
  variables, apply_fn = nnx_split(Net(0.0, rngs=nnx.Rngs(0)), "image", axis_name)
  return TrainState.create(apply_fn=apply_fn, variables=variables, tx=optax.sgd(0.1),
                           loss_fn=classification_loss, rng=jax.random.PRNGKey(1))

batch = _batch(32)
one = state_for(None)
for _ in range(3):
  one, _ = jax.jit(train_step)(one, batch)
layout = parallel.Layout(parallel.make_mesh(), mode="pmap")
many = layout.to_step(layout.place_state(state_for(parallel.DATA_AXIS)))
step = layout.compile(train_step)
for _ in range(3):
  many, _ = step(many, layout.put_batch(batch))
gap = lambda a, b: max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                       for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
first = layout.from_step(many)
print("RESULT", json.dumps({"params": gap(one.params, first.params),
                            "stats": gap(one.model_state, first.model_state)}))
"""


def test_nnx_batch_norm_under_pmap_uses_the_global_batch():
  """8 devices x 4 examples under pmap = one device x 32 under jit (per-device stats would not)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", PMAP], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-2000:]
  gaps = __import__("json").loads(out.stdout.split("RESULT ", 1)[1])
  assert gaps["stats"] < 1e-6 and gaps["params"] < 1e-5, gaps


class Counted(nn.Module):
  """A model with an integer variable: a step counter in its own collection."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    seen = self.variable("counters", "seen", lambda: jnp.zeros((), jnp.int32))
    if train:
      seen.value += x.shape[0]
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_integer_model_state_stays_integer_under_pmap():
  model = Counted()
  state = TrainState.create(
    apply_fn=linen_apply_fn(model),
    variables=model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))),
    tx=optax.sgd(0.1),
    loss_fn=classification_loss,
    rng=jax.random.PRNGKey(1),
  )
  layout = parallel.Layout(parallel.make_mesh(), mode="pmap")
  stacked = layout.to_step(layout.place_state(state))
  step = layout.compile(train_step)
  for _ in range(2):  # the second step indexes with what the first returned
    stacked, _ = step(stacked, layout.put_batch(_batch(16)))
  seen = layout.from_step(stacked).model_state["counters"]["seen"]
  assert seen.dtype == jnp.int32 and int(seen) == 2 * 16 // layout.num_devices


def test_a_loss_may_read_the_params():
  model = nn.Dense(1)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))
  l2 = 0.1

  def loss(outputs, batch, params):
    penalty = l2 * sum(jnp.sum(w**2) for w in jax.tree.leaves(params))
    return {"loss": (outputs[:, 0] - batch["y"]) ** 2 + penalty, "penalty": penalty}

  state = TrainState.create(
    apply_fn=linen_apply_fn(model, "x"),
    variables=variables,
    tx=optax.sgd(0.5),
    loss_fn=loss,
    rng=jax.random.PRNGKey(1),
  )
  batch = {"x": np.ones((4, 3), np.float32), "y": np.zeros(4, np.float32)}
  new, metrics = jax.jit(train_step)(state, batch)
  p = variables["params"]
  expected_penalty = l2 * (
    np.sum(np.asarray(p["kernel"]) ** 2) + np.sum(np.asarray(p["bias"]) ** 2)
  )
  assert float(metrics["penalty"]) == np.float32(expected_penalty)  # a scalar's mean is itself
  # The penalty's gradient is in the update: with l2 = 0 the step lands elsewhere.
  plain = state.replace(loss_fn=lambda o, b: {"loss": (o[:, 0] - b["y"]) ** 2})
  without, _ = jax.jit(train_step)(plain, batch)
  grad_gap = (np.asarray(without.params["kernel"]) - np.asarray(new.params["kernel"])) / 0.5
  np.testing.assert_allclose(grad_gap, 2 * l2 * np.asarray(p["kernel"]), rtol=1e-4, atol=1e-7)


def test_states_built_apart_stack_vmap_over_seeds_and_share_one_compile():
  traces = []

  def loss(logits, batch):
    traces.append(1)  # runs once per trace, never per call
    return classification_loss(logits, batch)

  def make(seed):  # built from scratch each time: a fresh module and optimizer
    return TrainState.from_nnx(
      Net(0.5, rngs=nnx.Rngs(seed)), tx=optax.adam(1e-2), loss_fn=loss, rng=jax.random.PRNGKey(seed)
    )

  states = [make(seed) for seed in range(3)]
  step = jax.jit(train_step)
  batch = _batch()
  singles = [step(s, batch)[0] for s in states]
  assert len(traces) == 1  # three separately built states, one compiled step

  stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
  vmapped, metrics = jax.jit(jax.vmap(train_step, in_axes=(0, None)))(stacked, batch)
  assert metrics["loss"].shape == (3,)
  for i, single in enumerate(singles):
    np.testing.assert_allclose(
      vmapped.params["layers"]["1"]["kernel"][i], single.params["layers"]["1"]["kernel"], atol=1e-6
    )


def test_states_with_other_functions_do_not_share_a_compile():
  """Equal-looking but different optimizers or losses never reuse each other's program."""
  a = _nnx_state()
  assert a.replace(tx=optax.adam(2e-2)).functions != a.functions
  assert a.replace(loss_fn=lambda o, b: classification_loss(o, b)).functions != a.functions
  assert a.replace(tx=optax.adam(1e-2)).functions == a.functions


def test_checkpoint_of_a_state_without_a_data_iterator(tmp_path):
  state = _nnx_state()
  state, _ = jax.jit(train_step)(state, _batch())
  manager = checkpoint.make_manager(str(tmp_path), async_save=False)
  checkpoint.save(manager, 1, state)
  manager.wait_until_finished()
  fresh = _nnx_state(seed=5)
  restored = checkpoint.restore(manager, 1, fresh)
  assert checkpoint.tree_digest(checkpoint.state_arrays(restored)) == checkpoint.tree_digest(
    checkpoint.state_arrays(state)
  )
  assert checkpoint.verify(str(tmp_path)) == {}
  manager.close()

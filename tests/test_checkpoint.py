"""Orbax round trips of state + data position, and the params digest."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtrain import TrainState, checkpoint, input_pipeline, linen_apply_fn
from jaxtrain.models import CNN
from jaxtrain.steps import classification_loss, train_step
from test_input_pipeline import Numbers


def _state(seed=0):
  model = CNN(num_classes=10)
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 1)))
  return TrainState.create(apply_fn=linen_apply_fn(model), variables=variables,
                           tx=optax.adam(1e-3), loss_fn=classification_loss,
                           rng=jax.random.PRNGKey(seed))


def test_state_and_data_position_round_trip_bit_exactly(tmp_path):
  batch = {"image": np.random.default_rng(0).random((4, 8, 8, 1), np.float32),
           "label": np.arange(4)}
  state, _ = train_step(_state(), batch)  # non-trivial optimizer and batch-norm state
  data = input_pipeline.iterate(input_pipeline.train_dataset(Numbers(20), global_batch_size=4, seed=0))
  for _ in range(3):
    next(data)
  manager = checkpoint.make_manager(str(tmp_path))
  checkpoint.save(manager, 1, state, data)
  manager.wait_until_finished()
  expected_next = next(data)["id"].tolist()

  fresh_data = input_pipeline.iterate(input_pipeline.train_dataset(Numbers(20), global_batch_size=4, seed=0))
  restored = checkpoint.restore(checkpoint.make_manager(str(tmp_path)), 1, _state(seed=5), fresh_data)
  assert next(fresh_data)["id"].tolist() == expected_next
  assert checkpoint.tree_digest(checkpoint._arrays(restored)) == checkpoint.tree_digest(checkpoint._arrays(state))
  assert jax.tree.structure(checkpoint._arrays(restored)) == jax.tree.structure(checkpoint._arrays(state))
  assert int(restored.step) == 1

  # Read back without the model's code, as `jaxtrain inspect` does.
  step, arrays = checkpoint.load_arrays(str(tmp_path))
  assert step == 1
  assert checkpoint.tree_digest(arrays["params"]) == checkpoint.tree_digest(state.params)


def test_digest_sees_one_bit_and_ignores_container_types():
  params = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(2, np.int32)}
  base = checkpoint.tree_digest(params)
  assert base == checkpoint.tree_digest({"b": jnp.ones(2, jnp.int32), "a": {"kernel": jnp.arange(6.0).reshape(2, 3)}})
  flipped = params["a"]["kernel"].copy()
  flipped.view(np.uint32)[0, 0] ^= 1
  assert checkpoint.tree_digest({**params, "a": {"kernel": flipped}}) != base
  assert checkpoint.tree_digest({**params, "b": np.ones(2, np.int64)}) != base      # dtype counts
  assert checkpoint.tree_digest({"a": {"kernel": params["a"]["kernel"].reshape(3, 2)},
                                 "b": params["b"]}) != base                          # shape counts

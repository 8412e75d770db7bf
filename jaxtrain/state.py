"""TrainState: everything a training step reads and writes, as one pytree.

The array fields (step, params, opt_state, model_state, rng) are the pytree's
leaves: they are what a checkpoint holds and what a digest compares. The
functions (apply_fn, tx, loss_fn) are static: they are part of the pytree's
structure, so `jax.jit(train_step)` compiles once per model/optimizer/loss and
the state can be donated whole.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

# apply_fn(variables, batch, *, train, rng) -> (outputs, new_model_state)
ApplyFn = Callable[..., tuple[Any, Any]]
# loss_fn(outputs, batch) -> {"loss": [B], other per-example metrics: [B]}
LossFn = Callable[[Any, Mapping[str, jax.Array]], Mapping[str, jax.Array]]


class TrainState(struct.PyTreeNode):
  """Step counter, parameters, optimizer state, mutable model state and PRNG key.

  `model_state` holds the model's non-parameter collections (batch-norm
  statistics); it is `{}` for models without any. `rng` is a raw uint32 key:
  step k draws its randomness from `fold_in(rng, k)`, so a resumed run draws
  exactly what an uninterrupted one would have.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  rng: jax.Array
  apply_fn: ApplyFn = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  loss_fn: LossFn = struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, apply_fn: ApplyFn, variables: Mapping[str, Any],
             tx: optax.GradientTransformation, loss_fn: LossFn,
             rng: jax.Array) -> "TrainState":
    """A step-0 state from model variables (`{"params": ..., "batch_stats": ...}`)."""
    variables = dict(variables)
    params = variables.pop("params")
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=tx.init(params), model_state=variables,
               rng=jnp.asarray(rng, jnp.uint32), apply_fn=apply_fn, tx=tx,
               loss_fn=loss_fn)

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, **self.model_state}


def linen_apply_fn(module: nn.Module, input_key: str | None = "image",
                   rng_names: Sequence[str] = ("dropout",)) -> ApplyFn:
  """Adapts a Flax linen module to jaxtrain's `apply_fn` contract.

  The module is called on `batch[input_key]` (`input_key=None`: on the whole
  batch, for models that take several features); `train` is passed only if the
  module's `__call__` takes it. In training every non-"params" collection is
  mutable (batch statistics update); each named PRNG stream gets its own key
  folded from the step's key.
  """
  takes_train = "train" in inspect.signature(module.__call__).parameters

  def apply_fn(variables, batch, *, train, rng):
    inputs = batch if input_key is None else batch[input_key]
    kwargs = {"train": train} if takes_train else {}
    rngs = {name: jax.random.fold_in(rng, i) for i, name in enumerate(rng_names)}
    mutable = [k for k in variables if k != "params"] if train else False
    if mutable:
      outputs, new_state = module.apply(variables, inputs, rngs=rngs,
                                        mutable=mutable, **kwargs)
      return outputs, dict(new_state)
    outputs = module.apply(variables, inputs, rngs=rngs, **kwargs)
    return outputs, {k: v for k, v in variables.items() if k != "params"}

  return apply_fn

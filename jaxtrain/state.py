"""TrainState: everything a training step reads and writes, as one pytree.

The array fields (step, params, opt_state, model_state, rng) are the pytree's
leaves: they are what a checkpoint holds and what a digest compares. The
functions (apply_fn, tx, loss_fn) are static: they sit in the pytree's
structure, so `jax.jit(train_step)` compiles once per model/optimizer/loss and
the state can be donated whole.

Static functions compare by value, not identity (`Functions`): two states
built by separate calls with the same model, an equal optimizer
(`optax.adam(1e-3)` twice) and the same loss have equal structures, so they
stack (`jax.tree.map(jnp.stack, *states)`, then `jax.vmap` over seeds) and
share one compiled step. "The same" means the same code with equal captured
values; anything that cannot be compared by value (a captured jax.Array, an
unhashable object) compares by identity, which is always safe.

Models come in either Flax API. `linen_apply_fn(module)` adapts a Linen
module; `nnx_split(module)` turns an NNX module into pure variables and an
apply function (`TrainState.from_nnx` does both in one call). Either way a
step sees only arrays: no module object is mutated across a trace.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# A model_state collection the steps read and never change: weights held fixed (a LoRA run's
# base, lora.py). It is not averaged across devices, not taken from the model's outputs, and
# not saved in checkpoints (their metadata has its checksums).
FROZEN = "frozen"

# apply_fn(variables, batch, *, train, rng) -> (outputs, new_model_state)
ApplyFn = Callable[..., tuple[Any, Any]]
# loss_fn(outputs, batch[, params]) -> {"loss": [B], other per-example metrics: [B]}
LossFn = Callable[..., Mapping[str, jax.Array]]


def _value_key(x, path=()):
  """A hashable key equal for values that compute the same thing (identity where unsure)."""
  if isinstance(x, (bool, int, str, bytes, type(None))):
    return (type(x), x)
  if isinstance(x, (float, complex)):
    return (type(x), repr(x))  # 0.0 vs -0.0 and NaN: by their bits, as the code sees them
  if id(x) in path:
    return ("cycle", path.index(id(x)))
  path = path + (id(x),)
  if isinstance(x, types.FunctionType):
    cells = []
    for cell in x.__closure__ or ():
      try:
        cells.append(_value_key(cell.cell_contents, path))
      except ValueError:  # a cell not yet filled
        cells.append(("empty",))
    # The globals' identity: the same code from a reloaded module may see other values.
    return (
      "function",
      x.__code__,
      id(x.__globals__),
      _value_key(x.__defaults__, path),
      _value_key(x.__kwdefaults__, path),
      tuple(cells),
    )
  if isinstance(x, types.MethodType):
    return ("method", _value_key(x.__func__, path), _value_key(x.__self__, path))
  if isinstance(x, functools.partial):
    return (
      "partial",
      _value_key(x.func, path),
      _value_key(x.args, path),
      _value_key(x.keywords, path),
    )
  if isinstance(x, (tuple, list)):  # NamedTuples (optax's transformations) included
    return (type(x), tuple(_value_key(v, path) for v in x))
  if isinstance(x, dict):
    return (type(x), tuple((_value_key(k, path), _value_key(v, path)) for k, v in x.items()))
  if isinstance(x, np.ndarray):
    return ("ndarray", x.dtype.str, x.shape, x.tobytes())
  if isinstance(x, jax.Array):
    return ("id", id(x))  # may be a tracer, or on a device: never read
  try:
    hash(x)
  except TypeError:
    return ("id", id(x))
  return ("value", x)  # hashable objects compare as they define (frozen dataclasses, modules)


class Functions:
  """A state's static functions, compared by value (see the module docstring)."""

  __slots__ = ("apply_fn", "tx", "loss_fn", "_key", "_hash")

  def __init__(self, apply_fn: ApplyFn, tx: optax.GradientTransformation | None, loss_fn: LossFn):
    self.apply_fn, self.tx, self.loss_fn = apply_fn, tx, loss_fn
    # Taken now, as the functions are when the state is made (what a trace would see).
    self._key = _value_key((apply_fn, tx, loss_fn))
    self._hash = hash(self._key)

  def __eq__(self, other):
    if self is other:
      return True
    if not isinstance(other, Functions):
      return NotImplemented
    return self._hash == other._hash and self._key == other._key

  def __hash__(self):
    return self._hash

  def __repr__(self):
    return f"Functions(apply_fn={self.apply_fn!r}, tx=..., loss_fn={self.loss_fn!r})"


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["step", "params", "opt_state", "model_state", "rng"],
  meta_fields=["functions"],
)
@dataclasses.dataclass(frozen=True)
class TrainState:
  """Step counter, parameters, optimizer state, mutable model state and PRNG key.

  `model_state` holds the model's non-parameter variables (batch-norm
  statistics), as `{collection: tree}`; it is `{}` for models without any.
  `rng` is a raw uint32 key: step k draws its randomness from
  `fold_in(rng, k)`, so a resumed run draws exactly what an uninterrupted one
  would have.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  rng: jax.Array
  functions: Functions

  @classmethod
  def create(
    cls,
    *,
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    rng: jax.Array,
  ) -> "TrainState":
    """A step-0 state from model variables (`{"params": ..., "batch_stats": ...}`)."""
    variables = dict(variables)
    params = variables.pop("params")
    return cls(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      model_state=variables,
      rng=raw_key(rng),
      functions=Functions(apply_fn, tx, loss_fn),
    )

  @classmethod
  def from_nnx(
    cls,
    module: nnx.Module,
    *,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    rng: jax.Array,
    input_key: str | None = "image",
  ) -> "TrainState":
    """A step-0 state from an NNX module (its current values are the initial ones)."""
    variables, apply_fn = nnx_split(module, input_key)
    return cls.create(apply_fn=apply_fn, variables=variables, tx=tx, loss_fn=loss_fn, rng=rng)

  @property
  def apply_fn(self) -> ApplyFn:
    return self.functions.apply_fn

  @property
  def tx(self) -> optax.GradientTransformation:
    return self.functions.tx

  @property
  def loss_fn(self) -> LossFn:
    return self.functions.loss_fn

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, **self.model_state}

  def replace(self, **changes) -> "TrainState":
    """A copy with fields changed; `apply_fn`, `tx` and `loss_fn` may be among them."""
    named = {k: changes.pop(k) for k in ("apply_fn", "tx", "loss_fn") if k in changes}
    if named:
      f = self.functions
      changes["functions"] = Functions(
        named.get("apply_fn", f.apply_fn), named.get("tx", f.tx), named.get("loss_fn", f.loss_fn)
      )
    return dataclasses.replace(self, **changes)


def raw_key(rng) -> jax.Array:
  """A uint32 key array from a raw or typed (`jax.random.key`) PRNG key."""
  if jnp.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return jnp.asarray(rng, jnp.uint32)


def _takes_train(fn) -> bool:
  try:
    return "train" in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


@dataclasses.dataclass(frozen=True)
class LinenApply:
  """A Flax Linen module under jaxtrain's `apply_fn` contract (see `linen_apply_fn`)."""

  module: nn.Module
  input_key: str | None = "image"
  rng_names: tuple[str, ...] = ("dropout",)

  def __call__(self, variables, batch, *, train, rng):
    inputs = batch if self.input_key is None else batch[self.input_key]
    kwargs = {"train": train} if _takes_train(self.module.__call__) else {}
    rngs = {name: jax.random.fold_in(rng, i) for i, name in enumerate(self.rng_names)}
    mutable = [k for k in variables if k != "params"] if train else False
    if mutable:
      outputs, new_state = self.module.apply(
        variables, inputs, rngs=rngs, mutable=mutable, **kwargs
      )
      return outputs, dict(new_state)
    outputs = self.module.apply(variables, inputs, rngs=rngs, **kwargs)
    return outputs, {k: v for k, v in variables.items() if k != "params"}


def linen_apply_fn(
  module: nn.Module, input_key: str | None = "image", rng_names: Sequence[str] = ("dropout",)
) -> ApplyFn:
  """Adapts a Flax linen module to jaxtrain's `apply_fn` contract.

  The module is called on `batch[input_key]` (`input_key=None`: on the whole
  batch, for models that take several features); `train` is passed only if the
  module's `__call__` takes it. In training every non-"params" collection is
  mutable (batch statistics update); each named PRNG stream gets its own key
  folded from the step's key. Equal modules give equal apply functions.
  """
  return LinenApply(module, input_key, tuple(rng_names))


# -- NNX ----------------------------------------------------------------------------
# An NNX module holds its variables; a pure step needs them as arrays. `nnx_split`
# separates a module into a graph definition (static), its parameters, its other
# variables grouped by collection ("batch_stats" for BatchStat, ...) as nested dicts
# of arrays with string keys, and its RNG streams. The RNG streams are not state:
# each apply rebuilds them from the step's key, so dropout is a pure function of
# (state.rng, step) as it is for Linen models.


def _collection(variable_type) -> str:
  return nnx.variable_name_from_type(variable_type, allow_register=True)


def _nest(flat: dict[tuple, Any]) -> dict:
  nested: dict = {}
  for path, value in flat.items():
    node = nested
    for part in path[:-1]:
      node = node.setdefault(str(part), {})
    node[str(path[-1])] = value
  return nested


def _lookup(nested: dict, path: tuple):
  for part in path:
    nested = nested[str(part)]
  return nested


class NNXApply:
  """An NNX module's graph under jaxtrain's `apply_fn` contract (see `nnx_split`).

  Holds the graph definition and, per variable, its path and type (a template
  whose values are replaced at every call). Equal graphs with equal variable
  layouts compare equal, so rebuilding the same model does not retrace a step.
  """

  def __init__(
    self, graphdef, template, input_key: str | None = "image", axis_name: str | None = None
  ):
    self.graphdef, self.template = graphdef, template  # template: [(path, Variable)]
    self.input_key, self.axis_name = input_key, axis_name
    self._key = (
      graphdef,
      input_key,
      axis_name,
      tuple((path, type(v), v.get_value().shape, str(v.get_value().dtype)) for path, v in template),
    )

  def __eq__(self, other):
    return isinstance(other, NNXApply) and self._key == other._key

  def __hash__(self):
    return hash(self._key)

  def with_axis_name(self, axis_name: str | None) -> "NNXApply":
    """The same model with its batch norms reducing over the `pmap` axis `axis_name`."""
    return NNXApply(self.graphdef, self.template, self.input_key, axis_name)

  def merge(self, variables, rng) -> nnx.Module:
    """A fresh module holding `variables`, its RNG streams seeded from `rng`."""
    flat = []
    for i, (path, template) in enumerate(self.template):
      if isinstance(template, nnx.RngKey):
        key = jax.random.fold_in(rng, i)
        value = (
          jax.random.wrap_key_data(key)
          if jnp.issubdtype(template.get_value().dtype, jax.dtypes.prng_key)
          else key
        )
      elif isinstance(template, nnx.RngCount):
        value = jnp.zeros(template.get_value().shape, template.get_value().dtype)
      else:
        value = _lookup(variables[_collection(type(template))], path)
      flat.append((path, template.replace(value)))
    # copy=True: fresh Variable objects in this trace (merging the templates'
    # own would mutate them from inside a transformation).
    model = nnx.merge(self.graphdef, nnx.from_flat_state(flat), copy=True)
    if self.axis_name is not None:
      for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
          module.axis_name = self.axis_name
    return model

  def __call__(self, variables, batch, *, train, rng):
    model = self.merge(variables, rng)
    if train:
      model.train()
    else:
      model.eval()
    outputs = model(batch if self.input_key is None else batch[self.input_key])
    return outputs, _pure_variables(model)[1]


def _pure_variables(module) -> tuple[dict, dict]:
  """(params, {collection: tree}) of a module's non-RNG variables, as nested dicts of arrays."""
  _, params, _, rest = nnx.split(module, nnx.Param, nnx.RngState, ...)
  collections: dict[str, dict] = {}
  for path, v in nnx.to_flat_state(rest):
    collections.setdefault(_collection(type(v)), {})[path] = v.get_value()
  flat_params = {path: v.get_value() for path, v in nnx.to_flat_state(params)}
  return _nest(flat_params), {name: _nest(flat) for name, flat in collections.items()}


def nnx_split(
  module: nnx.Module, input_key: str | None = "image", axis_name: str | None = None
) -> tuple[dict[str, Any], NNXApply]:
  """(variables, apply_fn) of an NNX module: `TrainState.create` takes both.

  `variables` is `{"params": ..., "batch_stats": ..., ...}` as nested dicts of
  arrays (string keys: list indices become "0", "1", ...). `apply_fn` merges
  them into a fresh copy of the module at every call, in train or eval mode
  (`module.train()` / `.eval()`: dropout on, batch norm on batch statistics),
  with its RNG streams seeded from the step's key, and returns the updated
  non-parameter variables. With `axis_name` (under `pmap`) every BatchNorm
  reduces its statistics over that axis: the global batch's, as under `jit`.
  The module may be abstract (`nnx.eval_shape`): only its structure is kept.
  """
  graphdef, state = nnx.split(module)
  # Shapes and types only: the template must not keep the initial arrays alive.
  template = [
    (path, v.replace(jax.ShapeDtypeStruct(np.shape(v.get_value()), v.get_value().dtype)))
    for path, v in nnx.to_flat_state(state)
  ]
  params, collections = _pure_variables(module)
  return {"params": params, **collections}, NNXApply(graphdef, template, input_key, axis_name)


def nnx_apply_fn(
  module: nnx.Module, input_key: str | None = "image", axis_name: str | None = None
) -> ApplyFn:
  """The apply function of `nnx_split`, beside `linen_apply_fn`."""
  return nnx_split(module, input_key, axis_name)[1]

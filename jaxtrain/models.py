"""Image models (an MLP, Flax's MNIST CNN, a small ResNet), and the registry of all models
(table_models.py: tables and text; lm.py: the decoder-only language model).

Each is a plain Flax linen module taking `(x, train)`; `create_model` builds one
from `config.model` (its `name` picks the class, every other field is passed
to the constructor), so a config names exactly what it trains. Models with
batch norm take `axis_name`: under `pmap` their batch statistics are then
computed over the global batch, as they are under `jit`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.errors import UserError
from jaxtrain.lm import TransformerLM
from jaxtrain.table_models import TABLE_MODELS


class MLP(nn.Module):
  """Flatten, then `features` hidden ReLU layers with dropout, then a linear head."""
  num_classes: int
  features: Sequence[int] = (256, 256)
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for width in self.features:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class CNN(nn.Module):
  """Flax's MNIST example CNN with batch norm: conv32-BN-pool-conv64-BN-pool-dense256-dense."""
  num_classes: int
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                                axis_name=self.axis_name)
    pool = lambda y: nn.avg_pool(y, window_shape=(2, 2), strides=(2, 2))
    x = x.astype(self.dtype)
    # No conv bias: batch norm cancels it, and Adam would turn its zero gradient's
    # rounding noise into full-size steps that make runs depend on device layout.
    conv = lambda features: nn.Conv(features, (3, 3), use_bias=False, dtype=self.dtype)
    x = pool(nn.relu(norm()(conv(32)(x))))
    x = pool(nn.relu(norm()(conv(64)(x))))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(256, dtype=self.dtype)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class ResidualBlock(nn.Module):
  """Two 3x3 convolutions with batch norm and an identity (or projected) shortcut."""
  filters: int
  strides: int = 1
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                     dtype=self.dtype, axis_name=self.axis_name, **kw)
    conv = lambda f, k, s: nn.Conv(f, (k, k), (s, s), use_bias=False, dtype=self.dtype)
    y = nn.relu(norm()(conv(self.filters, 3, self.strides)(x)))
    # Zero-initialised last scale: each block starts as the identity.
    y = norm(scale_init=nn.initializers.zeros)(conv(self.filters, 3, 1)(y))
    if x.shape != y.shape:
      x = norm()(conv(self.filters, 1, self.strides)(x))
    return nn.relu(x + y)


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,            # recompute everything
    "dots": jax.checkpoint_policies.dots_saveable,                # keep matmul outputs
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def rematted(block: type[nn.Module], policy: str, train_argnum: int) -> type[nn.Module]:
  """`block` recomputed in the backward pass under a named policy ("" = stored, as usual).

  Rematerialisation trades compute for activation memory; it does not change
  the values computed. `train_argnum` is the position of `train` in
  `__call__` (self = 0), which must be static.
  """
  if not policy:
    return block
  if policy not in REMAT_POLICIES:
    raise UserError(f"config.model.remat={policy!r} is not one of {sorted(REMAT_POLICIES)} or ''")
  return nn.remat(block, policy=REMAT_POLICIES[policy], static_argnums=(train_argnum,))


class ResNet(nn.Module):
  """A small ResNet for 28x28 to 64x64 images: a 3x3 stem, then stages of blocks."""
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2)
  width: int = 16
  dtype: Any = jnp.float32
  axis_name: str | None = None
  remat: str = ""                 # rematerialise each block: "", full, dots, dots_no_batch

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                             axis_name=self.axis_name)(x))
    block_cls, n = rematted(ResidualBlock, self.remat, train_argnum=2), 0
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        # Named as without remat: the same params (and checkpoints) either way.
        x = block_cls(self.width * 2**stage, strides, self.dtype, self.axis_name,
                      name=f"ResidualBlock_{n}")(x, train)
        n += 1
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


IMAGE_MODELS = {"mlp": MLP, "cnn": CNN, "resnet": ResNet}
MODELS = {**IMAGE_MODELS, **TABLE_MODELS, "transformer_lm": TransformerLM}


def create_model(model_config, axis_name: str | None = None, derived: dict | None = None) -> nn.Module:
  """The module named by `model_config.name`, built from the config's other fields.

  `axis_name` (the pmap axis) goes to models whose batch norm needs it;
  `derived` (vocabulary sizes, output width: `preprocess.model_kwargs`) to
  models that have such fields, unless the config sets them.
  """
  kwargs = dict(model_config)
  name = kwargs.pop("name")
  if name not in MODELS:
    raise ValueError(f"config.model.name={name!r} is not one of {sorted(MODELS)}")
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  fields = MODELS[name].__dataclass_fields__
  for k, v in (derived or {}).items():
    if k in fields:
      kwargs.setdefault(k, v)
  if axis_name is not None and "axis_name" in fields:
    kwargs["axis_name"] = axis_name
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise ValueError(f"config.model: {name} has no field(s) {', '.join(unknown)}")
  return MODELS[name](**kwargs)

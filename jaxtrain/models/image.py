"""Image models: an MLP, Flax's MNIST CNN with batch norm, a small ResNet.

Each is a plain Flax linen module taking `(x, train)` on `batch["image"]`,
named in a config like any user's module (registry.MODELS maps "cnn" to
"jaxtrain.models.image:CNN"); every other `config.model` field is a
constructor argument. Models with batch norm take `axis_name`: under `pmap`
their batch statistics are then computed over the global batch, as under `jit`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxtrain.models.remat import rematted


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
    norm = lambda: nn.BatchNorm(
      use_running_average=not train, momentum=0.9, dtype=self.dtype, axis_name=self.axis_name
    )
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
    norm = lambda **kw: nn.BatchNorm(
      use_running_average=not train, momentum=0.9, dtype=self.dtype, axis_name=self.axis_name, **kw
    )
    conv = lambda f, k, s: nn.Conv(f, (k, k), (s, s), use_bias=False, dtype=self.dtype)
    y = nn.relu(norm()(conv(self.filters, 3, self.strides)(x)))
    # Zero-initialised last scale: each block starts as the identity.
    y = norm(scale_init=nn.initializers.zeros)(conv(self.filters, 3, 1)(y))
    if x.shape != y.shape:
      x = norm()(conv(self.filters, 1, self.strides)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A small ResNet for 28x28 to 64x64 images: a 3x3 stem, then stages of blocks."""

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2)
  width: int = 16
  dtype: Any = jnp.float32
  axis_name: str | None = None
  remat: str = ""  # rematerialise each block: "", full, dots, dots_no_batch

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(
      nn.BatchNorm(
        use_running_average=not train, momentum=0.9, dtype=self.dtype, axis_name=self.axis_name
      )(x)
    )
    block_cls, n = rematted(ResidualBlock, self.remat, train_argnum=2), 0
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        # Named as without remat: the same params (and checkpoints) either way.
        x = block_cls(
          self.width * 2**stage, strides, self.dtype, self.axis_name, name=f"ResidualBlock_{n}"
        )(x, train)
        n += 1
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)

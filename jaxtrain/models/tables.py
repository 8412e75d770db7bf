"""Models for imported tables: text classifiers, tabular MLPs, recommenders.

Each takes the whole preprocessed batch (`input_key = None`; see
data/preprocess.py: `numeric`, `categorical`, `tokens`) and learns its
vocabulary sizes and output width from the fitted preprocessing
(`preprocess.model_kwargs`), so a config names only the architecture.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.models.remat import rematted


def _masked_mean(x, valid):
  """Mean over the sequence axis of the positions where `valid` (padding excluded)."""
  weights = valid.astype(jnp.float32)[..., None]
  return (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)


def _embedding_width(size: int, cap: int) -> int:
  return int(min(cap, max(2, round(1.6 * size**0.56))))  # fast.ai's rule of thumb


class PeriodicEmbedding(nn.Module):
  """Each number x as ReLU(W [cos 2 pi c x, sin 2 pi c x]) with learned frequencies c.

  The "PLR" embedding of Gorishniy et al., "On Embeddings for Numerical
  Features in Tabular Deep Learning" (NeurIPS 2022): an MLP on raw numbers
  fits smooth, monotone shapes; one on periodic features also fits cycles
  and thresholds (an hour of the day, a price band), which is much of what
  separated it from gradient-boosted trees on their benchmarks.
  """

  frequencies: int = 16
  width: int = 16
  sigma: float = 0.5  # the frequencies' initial scale, on standardised inputs

  @nn.compact
  def __call__(self, x):  # [B, n] -> [B, n * width]
    c = self.param(
      "frequencies", nn.initializers.normal(self.sigma), (x.shape[-1], self.frequencies)
    )
    v = 2 * jnp.pi * c[None] * x[..., None]
    features = jnp.concatenate([jnp.cos(v), jnp.sin(v)], axis=-1)  # [B, n, 2k]
    kernel = self.param(
      "kernel",
      nn.initializers.lecun_normal(batch_axis=(0,)),
      (x.shape[-1], 2 * self.frequencies, self.width),
    )  # one linear map per feature
    y = nn.relu(jnp.einsum("bnk,nkw->bnw", features, kernel))
    return y.reshape(x.shape[0], -1)


class TabularMLP(nn.Module):
  """Categorical embeddings and numbers (as they are and periodically embedded), then an MLP.

  `ensemble_size` k > 1 trains k members at once, TabM-mini style (Gorishniy
  et al., "TabM: Advancing Tabular Deep Learning with Parameter-Efficient
  Ensembling", ICLR 2025): each member scales the input by its own vector of
  random signs, shares the hidden layers and has its own head. In training
  the model returns `{"members": [B, k, outputs]}`, and each member learns from
  its own loss (tasks.over_members); otherwise it returns the members' mean.
  """

  input_key = None  # the whole preprocessed batch
  num_outputs: int
  categorical_sizes: Sequence[int] = ()
  features: Sequence[int] = (128, 64)
  max_embedding: int = 32
  dropout_rate: float = 0.0
  numeric_embedding: str = "periodic"  # periodic (PeriodicEmbedding) | none
  ensemble_size: int = 1

  @nn.compact
  def __call__(self, batch, train: bool = False):
    parts = [batch["numeric"]] if "numeric" in batch else []
    if parts and self.numeric_embedding == "periodic":
      parts.append(PeriodicEmbedding(name="periodic")(batch["numeric"]))
    elif self.numeric_embedding not in ("periodic", "none"):
      raise ValueError(f"numeric_embedding={self.numeric_embedding!r}: periodic or none")
    for i, size in enumerate(self.categorical_sizes):
      parts.append(
        nn.Embed(size, _embedding_width(size, self.max_embedding), name=f"embed_{i}")(
          batch["categorical"][:, i]
        )
      )
    x = jnp.concatenate(parts, axis=-1)
    k = self.ensemble_size
    if k > 1:
      signs = self.param("member_signs", _random_signs, (k, x.shape[-1]))
      x = x[:, None, :] * signs  # [B, k, d]
    for width in self.features:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(nn.Dense(width)(x)))
    if k <= 1:
      return nn.Dense(self.num_outputs, name="head")(x)
    kernel = self.param(
      "head_kernel",
      nn.initializers.lecun_normal(batch_axis=(0,)),
      (k, x.shape[-1], self.num_outputs),
    )
    bias = self.param("head_bias", nn.initializers.zeros, (k, self.num_outputs))
    members = jnp.einsum("bkw,kwo->bko", x, kernel) + bias
    return {"members": members} if train else members.mean(axis=1)


def _random_signs(key, shape, dtype=jnp.float32):
  return jax.random.rademacher(key, shape, dtype)


class BagOfEmbeddings(nn.Module):
  """Mean of the text's token embeddings (padding excluded), then a hidden layer."""

  input_key = None  # the whole preprocessed batch
  num_outputs: int
  vocab_size: int
  embed_dim: int = 64
  hidden: int = 64
  dropout_rate: float = 0.0
  categorical_sizes: Sequence[int] = ()

  @nn.compact
  def __call__(self, batch, train: bool = False):
    tokens = batch["tokens"]
    x = _masked_mean(nn.Embed(self.vocab_size, self.embed_dim)(tokens), tokens > 0)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(nn.Dense(self.hidden)(x)))
    return nn.Dense(self.num_outputs, name="head")(x)


class EncoderBlock(nn.Module):
  num_heads: int
  mlp_dim: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x, mask, train: bool):
    drop = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(nn.LayerNorm()(x), mask=mask)
    x = x + drop(y)
    y = nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(self.mlp_dim)(nn.LayerNorm()(x))))
    return x + drop(y)


class TransformerEncoder(nn.Module):
  """A small pre-norm Transformer encoder over tokens; masked mean pooling; a linear head."""

  input_key = None  # the whole preprocessed batch
  num_outputs: int
  vocab_size: int
  max_length: int = 128
  width: int = 64
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 128
  dropout_rate: float = 0.1
  categorical_sizes: Sequence[int] = ()
  remat: str = ""  # rematerialise each block: "", full, dots, dots_no_batch

  @nn.compact
  def __call__(self, batch, train: bool = False):
    tokens = batch["tokens"]
    valid = tokens > 0
    x = nn.Embed(self.vocab_size, self.width)(tokens)
    x = (
      x
      + self.param("positions", nn.initializers.normal(0.02), (self.max_length, self.width))[
        : tokens.shape[1]
      ]
    )
    mask = nn.make_attention_mask(valid, valid)
    block = rematted(EncoderBlock, self.remat, train_argnum=3)
    for i in range(self.depth):  # named as without remat: the same params either way
      x = block(self.num_heads, self.mlp_dim, self.dropout_rate, name=f"EncoderBlock_{i}")(
        x, mask, train
      )
    x = _masked_mean(nn.LayerNorm()(x), valid)
    return nn.Dense(self.num_outputs, name="head")(x)


class MatrixFactorization(nn.Module):
  """Rating = <user, item> + user bias + item bias (on the standardised scale).

  The first two categorical features are the user and the item. Training
  returns `{"prediction", "penalty"}`: `l2` times the squared norms of the
  rows each rating uses (the regression loss adds it), so a user or item
  with few ratings is held near the mean and one with many is free to fit;
  the regularisation of Funk's SVD (Surprise's SVD), which weight decay on
  the whole table is not: that shrinks every row at every step.
  """

  input_key = None  # the whole preprocessed batch
  categorical_sizes: Sequence[int]
  num_outputs: int = 1
  dim: int = 32
  l2: float = 0.1

  @nn.compact
  def __call__(self, batch, train: bool = False):
    user, item = batch["categorical"][:, 0], batch["categorical"][:, 1]
    init = nn.initializers.normal(0.05)
    u = nn.Embed(self.categorical_sizes[0], self.dim, embedding_init=init, name="user")(user)
    v = nn.Embed(self.categorical_sizes[1], self.dim, embedding_init=init, name="item")(item)
    ub = nn.Embed(
      self.categorical_sizes[0], 1, embedding_init=nn.initializers.zeros, name="user_bias"
    )(user)
    ib = nn.Embed(
      self.categorical_sizes[1], 1, embedding_init=nn.initializers.zeros, name="item_bias"
    )(item)
    prediction = (u * v).sum(-1) + ub[:, 0] + ib[:, 0]
    if not train or not self.l2:
      return prediction
    norms = (u**2).sum(-1) + (v**2).sum(-1) + ub[:, 0] ** 2 + ib[:, 0] ** 2
    return {"prediction": prediction, "penalty": self.l2 * norms}


class TwoTower(nn.Module):
  """User and item towers (embedding + MLP) meeting in a normalised dot product.

  Returns (user vectors, the batch's item vectors, every item's vector): the
  loss scores users against the batch's items; evaluation against all items.
  """

  input_key = None  # the whole preprocessed batch
  categorical_sizes: Sequence[int]
  num_outputs: int = 1
  dim: int = 32
  hidden: int = 64

  def setup(self):
    self.user_embed = nn.Embed(self.categorical_sizes[0], self.hidden)
    self.item_embed = nn.Embed(self.categorical_sizes[1], self.hidden)
    self.user_tower = nn.Dense(self.dim)
    self.item_tower = nn.Dense(self.dim)

  def _item(self, ids):
    v = self.item_tower(nn.relu(self.item_embed(ids)))
    return v / jnp.linalg.norm(v, axis=-1, keepdims=True).clip(1e-6)

  def __call__(self, batch, train: bool = False):
    u = self.user_tower(nn.relu(self.user_embed(batch["categorical"][:, 0])))
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True).clip(1e-6)
    return (
      u,
      self._item(batch["categorical"][:, 1]),
      self._item(jnp.arange(self.categorical_sizes[1])),
    )

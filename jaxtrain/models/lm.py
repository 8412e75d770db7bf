"""A decoder-only Transformer language model (GPT-2's shape), and what it costs in FLOPs.

Params stay float32 (the optimizer's master weights); `dtype` is the compute
dtype (bfloat16 for speed), and the logits come out in it too: the loss
takes them to float32. Attention is `jax.nn.dot_product_attention` with a
causal mask, so on a GPU it can run cuDNN's fused flash attention
(`attention="cudnn"`; "" lets JAX choose, "xla" is the portable einsum).
`remat` rematerialises each block under a named policy (models.remat).

The model reads `batch["tokens"]` ([B, T + 1]) and predicts tokens 1..T from
0..T-1; `tasks.language_modeling_loss` scores it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.errors import UserError
from jaxtrain.models.remat import rematted

ATTENTION_IMPLEMENTATIONS = ("", "xla", "cudnn")


class CausalSelfAttention(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32
  attention: str = ""

  @nn.compact
  def __call__(self, x):
    batch, length, width = x.shape
    qkv = nn.Dense(3 * width, dtype=self.dtype, name="qkv")(x)
    q, k, v = jnp.split(
      qkv.reshape(batch, length, 3 * self.num_heads, width // self.num_heads), 3, axis=2
    )
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=self.attention or None)
    return nn.Dense(width, dtype=self.dtype, name="out")(y.reshape(batch, length, width))


class DecoderBlock(nn.Module):
  """Pre-norm: x + attention(norm(x)), then x + MLP(norm(x))."""

  num_heads: int
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  attention: str = ""

  @nn.compact
  def __call__(self, x, train: bool):
    drop = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = CausalSelfAttention(self.num_heads, self.dtype, self.attention)(
      nn.LayerNorm(dtype=self.dtype)(x)
    )
    x = x + drop(y)
    y = nn.Dense(self.mlp_ratio * x.shape[-1], dtype=self.dtype)(nn.LayerNorm(dtype=self.dtype)(x))
    y = nn.Dense(x.shape[-1], dtype=self.dtype)(nn.gelu(y))
    return x + drop(y)


class TransformerLM(nn.Module):
  """Token and position embeddings, `num_layers` decoder blocks, a head tied to the embedding."""

  input_key = None  # reads batch["tokens"] itself
  vocab_size: int = 50304  # GPT-2's 50,257 rounded up to a multiple of 128
  max_length: int = 1024
  num_layers: int = 12
  num_heads: int = 12
  embed_dim: int = 768
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  attention: str = ""  # "" (JAX chooses) | xla | cudnn (fused flash attention, GPU)
  remat: str = ""  # "", full, dots, dots_no_batch

  @nn.compact
  def __call__(self, batch, train: bool = False):
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise UserError(
        f"config.model.attention={self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}"
      )
    if self.embed_dim % self.num_heads:
      raise UserError(
        f"config.model.embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}"
      )
    tokens = batch["tokens"][:, :-1]
    if tokens.shape[1] > self.max_length:
      raise UserError(
        f"sequences of {tokens.shape[1]} tokens are longer than config.model.max_length="
        f"{self.max_length}"
      )
    init = nn.initializers.normal(0.02)
    embed = nn.Embed(
      self.vocab_size, self.embed_dim, dtype=self.dtype, embedding_init=init, name="token_embed"
    )
    positions = self.param("position_embed", init, (self.max_length, self.embed_dim))
    x = (embed(tokens) + positions[: tokens.shape[1]]).astype(self.dtype)
    block = rematted(DecoderBlock, self.remat, train_argnum=2)
    for i in range(self.num_layers):
      x = block(
        self.num_heads,
        self.mlp_ratio,
        self.dropout_rate,
        self.dtype,
        self.attention,
        name=f"DecoderBlock_{i}",
      )(x, train)
    x = nn.LayerNorm(dtype=self.dtype)(x)
    return embed.attend(x)  # [B, T, vocab] in the compute dtype


def num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def train_flops_per_token(params, *, num_layers: int, embed_dim: int, seq_len: int) -> float:
  """Model FLOPs of one training token: 6 per matmul weight, plus causal attention's scores.

  As in the PaLM paper's MFU: 6N counts the forward (2N) and backward (4N)
  multiply-adds of every weight used in a matmul (the kernels, and the tied
  token embedding as the output head; not the position table, biases or
  norms), and 12 * layers * T * width the attention scores and their
  weighting, with no discount for the causal mask. Rematerialisation's
  recomputation is not counted: MFU measures useful work.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  matmul_params = sum(
    x.size for path, x in flat if x.ndim == 2 and "position_embed" not in jax.tree_util.keystr(path)
  )
  return 6.0 * matmul_params + 12.0 * num_layers * seq_len * embed_dim

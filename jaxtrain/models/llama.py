"""A Llama-family decoder (Llama, Qwen2, Mistral share its layout), in the published layout.

`LlamaLM` is `LlamaForCausalLM`: token embeddings, pre-norm decoder layers
(RMSNorm; attention with rotary positions and grouped key/value heads;
a gated SiLU MLP), a final norm and `lm_head` (or the embedding, tied). Its
output is the logits over the vocabulary at every position: causal-LM
fine-tuning scores them on the response tokens (tasks.CausalLM).
`LlamaClassifier` is `LlamaForSequenceClassification`: a `score` head on the
last real token. Submodule names are the reference's (models/hf.py), numerics
match transformers' to 1e-4 in float32.

Reads `batch["tokens"]` (int32 [B, L]) and `batch["attention_mask"]` (1 for
real tokens, padding on the right), as `preprocess.tokenizer="pretrained"`
gives them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.errors import UserError
from jaxtrain.models.hf import Layout

MODEL_TYPES = ("llama", "qwen2", "mistral")


def rotary(x, positions, theta: float):
  """Rotary position embedding of [B, L, heads, d] as transformers applies it (rotate_half)."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [B, L, d/2]
  emb = jnp.concatenate([freqs, freqs], -1)[:, :, None, :]
  cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
  x1, x2 = x[..., : d // 2], x[..., d // 2 :]
  return x * cos + jnp.concatenate([-x2, x1], -1) * sin


class _Attention(nn.Module):
  hidden_size: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  qkv_bias: bool
  rope_theta: float
  dtype: Any

  @nn.compact
  def __call__(self, x, mask):
    b, length, _ = x.shape

    def proj(name, heads, bias):
      return nn.Dense(heads * self.head_dim, use_bias=bias, dtype=self.dtype, name=name)

    q = proj("q_proj", self.num_heads, self.qkv_bias)(x).reshape(b, length, self.num_heads, -1)
    k = proj("k_proj", self.num_kv_heads, self.qkv_bias)(x).reshape(
      b, length, self.num_kv_heads, -1
    )
    v = proj("v_proj", self.num_kv_heads, self.qkv_bias)(x).reshape(
      b, length, self.num_kv_heads, -1
    )
    positions = jnp.broadcast_to(jnp.arange(length)[None], (b, length))
    q, k = rotary(q, positions, self.rope_theta), rotary(k, positions, self.rope_theta)
    repeat = self.num_heads // self.num_kv_heads
    k, v = jnp.repeat(k, repeat, axis=2), jnp.repeat(v, repeat, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(self.head_dim).astype(q.dtype)
    causal = jnp.tril(jnp.ones((length, length), bool))
    allowed = causal[None, None] & mask[:, None, None, :].astype(bool)
    scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores.astype(jnp.float32), -1).astype(v.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, -1)
    return nn.Dense(self.hidden_size, use_bias=False, dtype=self.dtype, name="o_proj")(y)


class _MLP(nn.Module):
  hidden_size: int
  intermediate_size: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    dense = lambda n, f: nn.Dense(f, use_bias=False, dtype=self.dtype, name=n)  # noqa: E731
    h = nn.silu(dense("gate_proj", self.intermediate_size)(x)) * dense(
      "up_proj", self.intermediate_size
    )(x)
    return dense("down_proj", self.hidden_size)(h)


class LlamaLayer(nn.Module):
  hidden_size: int
  intermediate_size: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  qkv_bias: bool
  rope_theta: float
  rms_norm_eps: float
  dtype: Any

  @nn.compact
  def __call__(self, x, mask):
    norm = lambda n: nn.RMSNorm(self.rms_norm_eps, dtype=self.dtype, name=n)  # noqa: E731
    x = x + _Attention(
      self.hidden_size,
      self.num_heads,
      self.num_kv_heads,
      self.head_dim,
      self.qkv_bias,
      self.rope_theta,
      self.dtype,
      name="self_attn",
    )(norm("input_layernorm")(x), mask)
    return x + _MLP(self.hidden_size, self.intermediate_size, self.dtype, name="mlp")(
      norm("post_attention_layernorm")(x)
    )


class LlamaModel(nn.Module):
  """embed_tokens, layers_i, norm: hidden states [B, L, H] (and the embedding, for tying)."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  qkv_bias: bool
  rope_theta: float
  rms_norm_eps: float
  dtype: Any

  @nn.compact
  def __call__(self, tokens, mask):
    embed = nn.Embed(self.vocab_size, self.hidden_size, dtype=self.dtype, name="embed_tokens")
    x = embed(tokens)
    for i in range(self.num_hidden_layers):
      x = LlamaLayer(
        self.hidden_size,
        self.intermediate_size,
        self.num_attention_heads,
        self.num_key_value_heads,
        self.head_dim,
        self.qkv_bias,
        self.rope_theta,
        self.rms_norm_eps,
        self.dtype,
        name=f"layers_{i}",
      )(x, mask)
    return nn.RMSNorm(self.rms_norm_eps, dtype=self.dtype, name="norm")(x), embed


class _Decoder(nn.Module):
  """The fields every Llama-family model shares, from config.json (`from_hf_config`)."""

  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 32
  head_dim: int = 0  # 0: hidden_size // num_attention_heads
  qkv_bias: bool = False  # Qwen2's q, k and v have biases
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  dtype: Any = jnp.float32

  @classmethod
  def from_hf_config(cls, c: dict) -> dict:
    if c.get("model_type") not in MODEL_TYPES:
      raise UserError(
        f"config.json's model_type={c.get('model_type')!r}: {cls.__name__} takes the Llama "
        f"family's layout (model_type {', '.join(MODEL_TYPES)})"
      )
    if (
      c.get("rope_scaling")
      or (c.get("rope_parameters") or {}).get("rope_type", "default") != "default"
    ):
      raise UserError(
        f"config.json's rope scaling ({c.get('rope_scaling') or c.get('rope_parameters')}) is "
        "not supported: only the default rotary embedding is"
      )
    names = (
      "vocab_size",
      "hidden_size",
      "intermediate_size",
      "num_hidden_layers",
      "num_attention_heads",
      "num_key_value_heads",
      "rms_norm_eps",
      "tie_word_embeddings",
    )
    fields = {k: c[k] for k in names if k in c}
    fields["head_dim"] = int(c.get("head_dim") or 0)
    fields["rope_theta"] = float(
      (c.get("rope_parameters") or {}).get("rope_theta") or c.get("rope_theta", 10000.0)
    )
    fields["qkv_bias"] = c.get("model_type") == "qwen2" or bool(c.get("attention_bias"))
    return fields

  def hidden(self, batch):
    tokens = batch["tokens"]
    mask = batch.get("attention_mask", jnp.ones_like(tokens))
    head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
    return LlamaModel(
      self.vocab_size,
      self.hidden_size,
      self.intermediate_size,
      self.num_hidden_layers,
      self.num_attention_heads,
      self.num_key_value_heads,
      head_dim,
      self.qkv_bias,
      self.rope_theta,
      self.rms_norm_eps,
      self.dtype,
      name="model",
    )(tokens, mask)


class LlamaLM(_Decoder):
  """LlamaForCausalLM: logits [B, L, vocab] at every position."""

  input_key = None
  hf_layout = Layout(
    body="model",
    unused=(r"rotary_emb\.inv_freq$",),
    lora_targets=r"self_attn/(q|k|v|o)_proj/kernel$",
    architecture="LlamaForCausalLM",
  )

  @nn.compact
  def __call__(self, batch, train: bool = False):
    x, embed = self.hidden(batch)
    if self.tie_word_embeddings:
      return embed.attend(x)
    return nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype, name="lm_head")(x)


class LlamaClassifier(_Decoder):
  """LlamaForSequenceClassification: `score` on the last real token, `num_outputs` wide."""

  input_key = None
  hf_layout = Layout(
    body="model",
    heads=(r"^score/",),
    unused=(r"^lm_head\.", r"rotary_emb\.inv_freq$"),  # a causal LM's head, when tuning one
    lora_targets=r"self_attn/(q|k|v|o)_proj/kernel$",
    architecture="LlamaForSequenceClassification",
  )
  num_outputs: int = 2

  @nn.compact
  def __call__(self, batch, train: bool = False):
    x, _ = self.hidden(batch)
    mask = batch.get("attention_mask", jnp.ones_like(batch["tokens"]))
    last = jnp.maximum(jnp.sum(mask, -1) - 1, 0)
    pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    return nn.Dense(self.num_outputs, use_bias=False, dtype=self.dtype, name="score")(pooled)

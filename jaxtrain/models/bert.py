"""A BERT-family encoder with a task head, in BERT's published layout (models/hf.py).

`BertClassifier` is `BertForSequenceClassification`: embeddings (word,
position, token type, layer norm), post-norm Transformer layers, a tanh pooler
on the first ([CLS]) token and a linear `classifier` head, `num_outputs` wide
(classes, or 1 for regression). Submodule names are the reference's, so a
Hugging Face folder's tensors load by rule and export back under their names;
numerics match transformers' to 1e-4 in float32 (tests/test_pretrained.py).

Reads `batch["tokens"]` (int32 [B, L]), `batch["attention_mask"]` (1 for real
tokens) and, if present, `batch["token_type_ids"]`: what
`preprocess.tokenizer="pretrained"` gives. Built from a folder's config.json by
`from_hf_config` (`model.pretrained=DIR`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.errors import UserError
from jaxtrain.models.hf import Layout

ACTIVATIONS = {
  "gelu": lambda x: nn.gelu(x, approximate=False),
  "gelu_new": lambda x: nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
  "relu": nn.relu,
  "silu": nn.silu,
  "swish": nn.silu,
}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise UserError(f"hidden_act={name!r} is not one of {', '.join(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def attend(q, k, v, mask, num_heads: int):
  """Multi-head attention of [B, L, H] queries over keys where `mask` ([B, L_k]) is 1."""
  b, lq, width = q.shape
  head = lambda x: x.reshape(x.shape[0], x.shape[1], num_heads, -1)
  q, k, v = head(q), head(k), head(v)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  scores = jnp.where(mask[:, None, None, :].astype(bool), scores, jnp.finfo(scores.dtype).min)
  weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, lq, width)


class NamedDense(nn.Module):
  """A `dense` inside a named block (`intermediate`, `pooler`, ViT's `output`)."""

  features: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.features, dtype=self.dtype, name="dense")(x)


class _Output(nn.Module):
  """LayerNorm(residual + dropout(dense(x))): BERT's `*.output` block."""

  features: int
  eps: float
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x, residual, train: bool):
    y = nn.Dense(self.features, dtype=self.dtype, name="dense")(x)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    return nn.LayerNorm(self.eps, dtype=self.dtype, name="LayerNorm")(residual + y)


class SelfAttention(nn.Module):
  """query, key, value: multi-head attention over the keys `mask` keeps."""

  features: int
  num_heads: int
  dtype: Any

  @nn.compact
  def __call__(self, x, mask):
    q, k, v = (
      nn.Dense(self.features, dtype=self.dtype, name=n)(x) for n in ("query", "key", "value")
    )
    return attend(q, k, v, mask, self.num_heads)


class BertLayer(nn.Module):
  """attention/self/{query,key,value}, attention/output, intermediate, output."""

  hidden_size: int
  num_attention_heads: int
  intermediate_size: int
  layer_norm_eps: float
  hidden_act: str
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x, mask, train: bool):
    a = _Attention(
      self.hidden_size,
      self.num_attention_heads,
      self.layer_norm_eps,
      self.dropout_rate,
      self.dtype,
      name="attention",
    )(x, mask, train)
    h = activation(self.hidden_act)(
      NamedDense(self.intermediate_size, self.dtype, name="intermediate")(a)
    )
    return _Output(
      self.hidden_size, self.layer_norm_eps, self.dropout_rate, self.dtype, name="output"
    )(h, a, train)


class _Attention(nn.Module):
  features: int
  num_heads: int
  eps: float
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x, mask, train: bool):
    y = SelfAttention(self.features, self.num_heads, self.dtype, name="self")(x, mask)
    return _Output(self.features, self.eps, self.dropout_rate, self.dtype, name="output")(
      y, x, train
    )


class _Embeddings(nn.Module):
  vocab_size: int
  hidden_size: int
  max_position_embeddings: int
  type_vocab_size: int
  eps: float
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, tokens, token_types, train: bool):
    embed = lambda n, name: nn.Embed(n, self.hidden_size, dtype=self.dtype, name=name)
    positions = jnp.arange(tokens.shape[1])[None, :]
    x = (
      embed(self.vocab_size, "word_embeddings")(tokens)
      + embed(self.max_position_embeddings, "position_embeddings")(positions)
      + embed(self.type_vocab_size, "token_type_embeddings")(token_types)
    )
    x = nn.LayerNorm(self.eps, dtype=self.dtype, name="LayerNorm")(x)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class BertModel(nn.Module):
  """embeddings, encoder/layer_i, pooler: (hidden states [B, L, H], pooled [B, H])."""

  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int
  layer_norm_eps: float
  hidden_act: str
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, tokens, mask, token_types, train: bool):
    x = _Embeddings(
      self.vocab_size,
      self.hidden_size,
      self.max_position_embeddings,
      self.type_vocab_size,
      self.layer_norm_eps,
      self.dropout_rate,
      self.dtype,
      name="embeddings",
    )(tokens, token_types, train)
    layer = (
      self.hidden_size,
      self.num_attention_heads,
      self.intermediate_size,
      self.layer_norm_eps,
      self.hidden_act,
      self.dropout_rate,
      self.dtype,
    )
    x = _Encoder(self.num_hidden_layers, layer, name="encoder")(x, mask, train)
    pooled = jnp.tanh(NamedDense(self.hidden_size, self.dtype, name="pooler")(x[:, 0]))
    return x, pooled


class _Encoder(nn.Module):
  num_layers: int
  layer: tuple  # BertLayer's fields

  @nn.compact
  def __call__(self, x, mask, train: bool):
    for i in range(self.num_layers):
      x = BertLayer(*self.layer, name=f"layer_{i}")(x, mask, train)
    return x


class BertClassifier(nn.Module):
  """BertForSequenceClassification: `bert` (the encoder), dropout, `classifier` on the pooler.

  `num_outputs` is the number of classes (1: a regression's value); the data
  sets it. The other fields are config.json's (`from_hf_config`).
  """

  input_key = None  # reads tokens, attention_mask (and token_type_ids) from the batch
  hf_layout = Layout(
    body="bert",
    heads=(r"^classifier/",),
    unused=(r"^cls\.", r"position_ids$"),  # BertForPreTraining's heads; an old buffer
    lora_targets=r"attention/self/(query|value)/kernel$",
    architecture="BertForSequenceClassification",
  )

  num_outputs: int = 2
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32

  @classmethod
  def from_hf_config(cls, c: dict) -> dict:
    """This model's arguments from a BERT folder's config.json."""
    if c.get("model_type") not in ("bert", None):
      raise UserError(
        f"config.json's model_type={c.get('model_type')!r}: {cls.__name__} takes BERT's layout "
        "(model_type 'bert')"
      )
    fields = {
      k: c[k]
      for k in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "hidden_act",
      )
      if k in c
    }
    if "hidden_dropout_prob" in c:
      fields["dropout_rate"] = float(c["hidden_dropout_prob"])
    return fields

  @nn.compact
  def __call__(self, batch, train: bool = False):
    tokens = batch["tokens"]
    mask = batch.get("attention_mask", (tokens != 0).astype(jnp.int32))
    types = batch.get("token_type_ids", jnp.zeros_like(tokens))
    _, pooled = BertModel(
      self.vocab_size,
      self.hidden_size,
      self.num_hidden_layers,
      self.num_attention_heads,
      self.intermediate_size,
      self.max_position_embeddings,
      self.type_vocab_size,
      self.layer_norm_eps,
      self.hidden_act,
      self.dropout_rate,
      self.dtype,
      name="bert",
    )(tokens, mask, types, train)
    pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    return nn.Dense(self.num_outputs, dtype=self.dtype, name="classifier")(pooled)

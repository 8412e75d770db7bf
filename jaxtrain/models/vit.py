"""A Vision Transformer with a classification head, in ViT's published layout (models/hf.py).

`ViTClassifier` is `ViTForImageClassification`: a patch embedding (a strided
conv), a [CLS] token and learned positions, pre-norm Transformer layers, a
final layer norm and a linear `classifier` on the [CLS] token. Submodule
names are the reference's, so a Hugging Face folder loads by rule and exports
back; numerics match transformers' to 1e-4 in float32.

Reads `batch["image"]` (float [B, H, W, C] in [0, 1], as jaxtrain's image
pipeline gives it) and normalises it as ViT's image processor does
(`(x - image_mean) / image_std`), after resizing to the model's `image_size`
(bilinear, as the processor resizes); one-channel images are repeated to the
model's three channels.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrain.errors import UserError
from jaxtrain.models.bert import NamedDense, SelfAttention, activation
from jaxtrain.models.hf import Layout


class _Attention(nn.Module):
  features: int
  num_heads: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    everything = jnp.ones(x.shape[:2], jnp.int32)  # every patch attends to every patch
    y = SelfAttention(self.features, self.num_heads, self.dtype, name="attention")(x, everything)
    return NamedDense(self.features, self.dtype, name="output")(y)


class ViTLayer(nn.Module):
  """x + attention(layernorm_before(x)), then + output(act(intermediate(layernorm_after)))."""

  hidden_size: int
  num_attention_heads: int
  intermediate_size: int
  layer_norm_eps: float
  hidden_act: str
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda name: nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name=name)  # noqa: E731
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    x = x + drop(
      _Attention(self.hidden_size, self.num_attention_heads, self.dtype, name="attention")(
        norm("layernorm_before")(x)
      )
    )
    h = NamedDense(self.intermediate_size, self.dtype, name="intermediate")(
      norm("layernorm_after")(x)
    )
    return x + drop(
      NamedDense(self.hidden_size, self.dtype, name="output")(activation(self.hidden_act)(h))
    )


class _Embeddings(nn.Module):
  hidden_size: int
  patch_size: int
  num_patches: int
  dtype: Any

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    x = _Projection(self.hidden_size, p, self.dtype, name="patch_embeddings")(images)
    b = x.shape[0]
    x = x.reshape(b, -1, self.hidden_size)
    cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.hidden_size))
    positions = self.param(
      "position_embeddings",
      nn.initializers.normal(0.02),
      (1, self.num_patches + 1, self.hidden_size),
    )
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.hidden_size)).astype(x.dtype), x], 1)
    return x + positions.astype(x.dtype)


class _Projection(nn.Module):
  hidden_size: int
  patch_size: int
  dtype: Any

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    return nn.Conv(
      self.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="projection"
    )(images)


class _Encoder(nn.Module):
  num_layers: int
  layer: tuple  # ViTLayer's fields

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(self.num_layers):
      x = ViTLayer(*self.layer, name=f"layer_{i}")(x, train)
    return x


class ViTModel(nn.Module):
  """embeddings, encoder/layer_i, layernorm: hidden states [B, 1 + patches, H]."""

  image_size: int
  patch_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  layer_norm_eps: float
  hidden_act: str
  dropout_rate: float
  dtype: Any

  @nn.compact
  def __call__(self, pixels, train: bool):
    num_patches = (self.image_size // self.patch_size) ** 2
    x = _Embeddings(self.hidden_size, self.patch_size, num_patches, self.dtype, name="embeddings")(
      pixels
    )
    layer = (
      self.hidden_size,
      self.num_attention_heads,
      self.intermediate_size,
      self.layer_norm_eps,
      self.hidden_act,
      self.dropout_rate,
      self.dtype,
    )
    x = _Encoder(self.num_hidden_layers, layer, name="encoder")(x, train)
    return nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="layernorm")(x)


class ViTClassifier(nn.Module):
  """ViTForImageClassification: `vit`, then `classifier` on the [CLS] token."""

  input_key = "image"
  hf_layout = Layout(
    body="vit",
    heads=(r"^classifier/",),
    unused=(r"^vit\.pooler\.",),  # ViTModel's pooler, which the classifier does not use
    lora_targets=r"attention/attention/(query|value)/kernel$",
    architecture="ViTForImageClassification",
  )

  num_outputs: int = 10
  image_size: int = 224
  patch_size: int = 16
  num_channels: int = 3
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  dropout_rate: float = 0.0
  image_mean: float = 0.5  # ViTImageProcessor's
  image_std: float = 0.5
  dtype: Any = jnp.float32

  @classmethod
  def from_hf_config(cls, c: dict) -> dict:
    if c.get("model_type") not in ("vit", None):
      raise UserError(
        f"config.json's model_type={c.get('model_type')!r}: {cls.__name__} takes ViT's layout "
        "(model_type 'vit')"
      )
    names = (
      "image_size",
      "patch_size",
      "num_channels",
      "hidden_size",
      "num_hidden_layers",
      "num_attention_heads",
      "intermediate_size",
      "layer_norm_eps",
      "hidden_act",
    )
    fields = {k: c[k] for k in names if k in c}
    if "hidden_dropout_prob" in c:
      fields["dropout_rate"] = float(c["hidden_dropout_prob"])
    return fields

  @nn.compact
  def __call__(self, images, train: bool = False):
    if images.shape[-1] == 1 and self.num_channels == 3:
      images = jnp.repeat(images, 3, axis=-1)
    if images.shape[-1] != self.num_channels:
      raise UserError(
        f"the images have {images.shape[-1]} channels, the ViT takes {self.num_channels}"
      )
    if images.shape[1:3] != (self.image_size, self.image_size):  # as its image processor does
      size = (images.shape[0], self.image_size, self.image_size, images.shape[-1])
      images = jax.image.resize(images.astype(jnp.float32), size, "bilinear")
    pixels = (images.astype(self.dtype) - self.image_mean) / self.image_std
    x = ViTModel(
      self.image_size,
      self.patch_size,
      self.hidden_size,
      self.num_hidden_layers,
      self.num_attention_heads,
      self.intermediate_size,
      self.layer_norm_eps,
      self.hidden_act,
      self.dropout_rate,
      self.dtype,
      name="vit",
    )(pixels, train)
    return nn.Dense(self.num_outputs, dtype=self.dtype, name="classifier")(x[:, 0])

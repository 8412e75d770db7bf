"""LoRA: low-rank adapters on chosen kernels, the base weights held apart and never changed.

A LoRA state trains a small tree, `{"lora": {.../kernel: {"a": [in, r], "b":
[r, out]}}, "train": {...}}` (adapters, and the params trained in full: a new
head), so only it has gradients and optimizer state. The base params sit in
`model_state["frozen"]` (state.FROZEN): the step passes that collection
through untouched (never averaged, never returned by the model), so the base
stays bit-identical, and a checkpoint leaves it out (run/checkpoint.py records
its checksums instead, and a resume checks the base it rebuilt against them).

At every call `LoraApply` hands the model the merged params, kernel + (alpha /
rank) * a @ b, so any model (Linen, NNX, a user's) takes adapters unchanged:
the model never knows. `b` starts at zero (the first step's outputs are the
base model's) and `a` as PEFT's (uniform, bound 1/sqrt(in)).

Needs jax alone: liftable with state.py and steps.py.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxtrain.state import FROZEN, ApplyFn


def _flat(tree) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep="/")


def _nested(flat: dict[str, Any]) -> dict:
  return traverse_util.unflatten_dict(flat, sep="/")


def targets(params, pattern: str) -> list[str]:
  """Paths of the 2-D kernels (Dense, Linear) whose path `pattern` (a regex) searches."""
  return sorted(
    path
    for path, leaf in _flat(params).items()
    if path.endswith("kernel") and jnp.ndim(leaf) == 2 and re.search(pattern, path)
  )


def split(params, *, pattern: str, rank: int, rng, train: str = "") -> tuple[dict, dict]:
  """(trainable, frozen) of a model's params: adapters on `targets(pattern)` plus the params
  `train` (a regex; "" none) names, and every other param, frozen."""
  flat = _flat(params)
  paths = targets(params, pattern)
  adapters = {}
  for i, path in enumerate(paths):
    fan_in, fan_out = flat[path].shape
    bound = 1.0 / jnp.sqrt(fan_in)
    a = jax.random.uniform(jax.random.fold_in(rng, i), (fan_in, rank), jnp.float32, -bound, bound)
    adapters[path] = {"a": a, "b": jnp.zeros((rank, fan_out), jnp.float32)}
  trained = {p: v for p, v in flat.items() if train and re.search(train, p)}
  frozen = {p: v for p, v in flat.items() if p not in trained}
  trainable = {"lora": _nested(adapters)} if adapters else {}
  if trained:
    trainable["train"] = _nested(trained)
  return trainable, _nested(frozen)


def merged(frozen, trainable, scale: float):
  """The model's params: `frozen` with the trained params put back and each adapted kernel
  plus `scale * a @ b` (in the kernel's dtype)."""
  flat = _flat(frozen)
  flat.update(_flat(trainable.get("train", {})))
  adapters = traverse_util.flatten_dict(trainable.get("lora", {}))
  for key in {k[:-1] for k in adapters}:
    path = "/".join(key)
    a, b = adapters[key + ("a",)], adapters[key + ("b",)]
    flat[path] = flat[path] + (scale * (a @ b)).astype(flat[path].dtype)
  return _nested(flat)


@dataclasses.dataclass(frozen=True)
class LoraApply:
  """An apply function that runs `inner` on the merged params (see the module docstring)."""

  inner: ApplyFn
  scale: float

  def __call__(self, variables, batch, *, train, rng):
    variables = dict(variables)
    frozen = variables.pop(FROZEN)
    params = merged(frozen["params"], variables.pop("params"), self.scale)
    outputs, model_state = self.inner({"params": params, **variables}, batch, train=train, rng=rng)
    return outputs, {**model_state, FROZEN: frozen}


def adapt(
  apply_fn: ApplyFn, variables: dict, *, pattern: str, rank: int, alpha: float, rng, train=""
) -> tuple[dict, ApplyFn]:
  """(variables, apply_fn) of a LoRA model: `TrainState.create` takes both, as for any model."""
  variables = dict(variables)
  trainable, frozen = split(
    variables.pop("params"), pattern=pattern, rank=rank, rng=rng, train=train
  )
  return (
    {"params": trainable, **variables, FROZEN: {"params": frozen}},
    LoraApply(apply_fn, alpha / rank),
  )


def base_and_adapters(params, model_state) -> tuple[dict, dict]:
  """(the base params with the trained ones put back, the adapters) of a LoRA state's arrays:
  what an unmerged export writes."""
  flat = _flat(model_state[FROZEN]["params"])
  flat.update(_flat(params.get("train", {})))
  return _nested(flat), params.get("lora", {})

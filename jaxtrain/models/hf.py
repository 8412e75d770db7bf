"""The Hugging Face layout: how a PyTorch model's tensor names and shapes map onto Flax params.

A jaxtrain model that takes pretrained weights names its submodules as the
reference implementation does (`bert/encoder/layer_0/attention/self/query`),
so one rule maps every family, and maps back on export:

  names    `encoder.layer.0.attention.self.query.weight` <-> `encoder/layer_0/attention/self/
           query/kernel`: dots are slashes, a number joins the module before it (`layer_0`,
           Linen's name for the first of a list); a `weight` is the Flax module's `kernel`,
           `embedding` or `scale`, whichever it has; other leaves keep their names.
  layouts  a Linear's `[out, in]` is a Dense kernel's `[in, out]`; a Conv's `OIHW` is `HWIO`.
  prefix   the body's module (`bert`, `model`, `vit`) is added to names saved without it
           (a bare `BertModel`) and written on export, so the folder loads as the
           reference library's task model (`BertForSequenceClassification`).

A model class opts in with two class attributes (a user's own model may too):
`hf_layout = Layout(...)` and `from_hf_config(config) -> constructor arguments`.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

_WEIGHT_LEAVES = ("kernel", "embedding", "scale")


@dataclasses.dataclass(frozen=True)
class Layout:
  """A family's place in the layout: its body's module name and what may differ from a source.

  `heads`: regexes of target params a fine-tuning may leave initialised (a new
  task head, trained in full under LoRA); `unused`: regexes of source tensors
  that are not this model's (another task's head, buffers such as
  `position_ids`), left without a report line.
  """

  body: str
  heads: tuple[str, ...] = ()
  unused: tuple[str, ...] = ()
  lora_targets: str = ""  # the kernels LoRA adapts by default (a regex over param paths)
  architecture: str = ""  # the reference's class an export names (BertForSequenceClassification)

  def is_head(self, path: str) -> bool:
    return any(re.search(h, path) for h in self.heads)

  def is_unused(self, name: str) -> bool:
    return any(re.search(u, name) for u in self.unused)


def module_path(name: str) -> tuple[str, str]:
  """(Flax module path, leaf) of a source tensor name: `a.layer.0.query.weight` ->
  (`a/layer_0/query`, `weight`)."""
  parts = name.split(".")
  joined: list[str] = []
  for part in parts[:-1]:
    if part.isdigit() and joined:
      joined[-1] = f"{joined[-1]}_{part}"
    else:
      joined.append(part)
  return "/".join(joined), parts[-1]


def source_name(path: str) -> str:
  """The source tensor name of a Flax param path (the inverse of `module_path` + leaf)."""
  *modules, leaf = path.split("/")
  parts = []
  for m in modules:
    head, _, number = m.rpartition("_")
    parts.extend([head, number] if head and number.isdigit() else [m])
  return ".".join(parts + ["weight" if leaf in _WEIGHT_LEAVES else leaf])


def to_flax(leaf: str, array: np.ndarray) -> np.ndarray:
  """A source tensor in the Flax leaf's layout (a kernel is transposed)."""
  if leaf == "kernel" and array.ndim == 2:
    return array.T
  if leaf == "kernel" and array.ndim == 4:  # OIHW -> HWIO
    return array.transpose(2, 3, 1, 0)
  return array


def from_flax(leaf: str, array: np.ndarray) -> np.ndarray:
  """A Flax leaf in the source's layout (the inverse of `to_flax`)."""
  if leaf == "kernel" and array.ndim == 2:
    return array.T
  if leaf == "kernel" and array.ndim == 4:  # HWIO -> OIHW
    return array.transpose(3, 2, 0, 1)
  return array


def target_path(name: str, targets: set[str], layout: Layout) -> str | None:
  """The Flax param path (in `targets`) a source tensor name maps to, or None."""
  module, leaf = module_path(name)
  for prefix in ("", layout.body + "/"):
    candidates = (
      [f"{prefix}{module}/{k}" for k in _WEIGHT_LEAVES]
      if leaf == "weight"
      else [f"{prefix}{module}/{leaf}" if module else f"{prefix}{leaf}"]
    )
    for path in candidates:
      if path in targets:
        return path
  return None

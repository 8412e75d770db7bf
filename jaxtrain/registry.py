"""Names in a config -> Python objects: the one way models, tasks and datasets are found.

`config.model.name`, `config.task` and `config.dataset.name` each take
- a short name from a table below, which does nothing but map to an import path;
- `"package.module:Name"`: an attribute of an importable module;
- `"path/to/file.py:Name"`: an attribute of a Python file; a relative path is
  relative to the config file's directory (`base_dir`), so an experiment
  folder (config.py beside model.py) works from any working directory.

jaxtrain's own models, tasks and datasets are found through these same paths:
a user's code is not second-class. Every file loaded from outside jaxtrain is
recorded with its SHA-256 (`Loaded.sha256`), which the run's manifest keeps:
resuming after the file changed is refused, and `jaxtrain rerun` names it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from typing import Any

from jaxtrain.errors import UserError

MODELS = {
  "mlp": "jaxtrain.models.image:MLP",
  "cnn": "jaxtrain.models.image:CNN",
  "resnet": "jaxtrain.models.image:ResNet",
  "tabular_mlp": "jaxtrain.models.tables:TabularMLP",
  "bag_of_embeddings": "jaxtrain.models.tables:BagOfEmbeddings",
  "transformer_encoder": "jaxtrain.models.tables:TransformerEncoder",
  "matrix_factorization": "jaxtrain.models.tables:MatrixFactorization",
  "two_tower": "jaxtrain.models.tables:TwoTower",
  "transformer_lm": "jaxtrain.models.lm:TransformerLM",
  "bert": "jaxtrain.models.bert:BertClassifier",
  "vit": "jaxtrain.models.vit:ViTClassifier",
  "llama": "jaxtrain.models.llama:LlamaLM",
  "llama_classifier": "jaxtrain.models.llama:LlamaClassifier",
}
TASKS = {
  "classification": "jaxtrain.tasks:Classification",
  "regression": "jaxtrain.tasks:Regression",
  "retrieval": "jaxtrain.tasks:Retrieval",
  "language_modeling": "jaxtrain.tasks:LanguageModeling",
  "causal_lm": "jaxtrain.tasks:CausalLM",
}
DATASETS = {
  "digits": "jaxtrain.data.datasets:Digits",
  "synthetic_tokens": "jaxtrain.data.datasets:SyntheticTokens",
  "prompt_response": "jaxtrain.data.datasets:PromptResponse",
}

# module.path:Name or some/file.py:Name (a Windows drive letter is not an attribute name).
_IMPORT_PATH = re.compile(r"^(?P<where>.+?\.py|[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)$")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class Loaded:
  """What a config name resolved to, and the user file (if any) it was read from."""

  name: str  # as the config wrote it
  target: str  # the import path it stands for
  obj: Any
  file: str | None = None  # absolute path of a file from outside jaxtrain
  sha256: str | None = None


def is_import_path(name: str) -> bool:
  return bool(_IMPORT_PATH.match(name))


def sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


_file_modules: dict[tuple[str, str], Any] = {}


def _load_file(path: str, sha: str, field: str):
  """The module of a Python file, loaded once per content (a changed file loads anew).

  Its directory is on `sys.path` while it runs, so it can import its neighbours.
  """
  cached = _file_modules.get((path, sha))
  if cached is not None:
    return cached
  stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  name = f"jaxtrain_user_{stem}_{sha[:12]}"  # top level: TFDS looks up a builder's package
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses (Flax modules) look their module up while being made
  directory = os.path.dirname(path)
  sys.path.insert(0, directory)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # the user's code: whatever it raises is theirs to fix
    del sys.modules[name]
    raise UserError(
      f"{field}: {path} cannot be loaded: {type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''}"
    ) from None
  finally:
    sys.path.remove(directory)
  _file_modules[(path, sha)] = module
  return module


def _attribute(module, attr: str, field: str, where: str):
  obj = module
  for part in attr.split("."):
    if not hasattr(obj, part):
      names = sorted(n for n in vars(module) if not n.startswith("_"))
      raise UserError(f"{field}: {where} has no {attr!r} (it defines: {', '.join(names[:20])})")
    obj = getattr(obj, part)
  return obj


def resolve(name: str, table: dict[str, str], field: str, base_dir: str | None = None) -> Loaded:
  """The object `name` stands for: a short name of `table`, or an import path.

  `field` (e.g. "config.model.name") is named in every error; `base_dir`
  anchors relative file paths (default: the working directory).
  """
  target = table.get(name, name)
  m = _IMPORT_PATH.match(target)
  if m is None:
    raise UserError(
      f"{field}={name!r} is not one of {', '.join(sorted(table))}, nor an import "
      "path ('package.module:Name' or 'file.py:Name')"
    )
  where, attr = m["where"], m["attr"]
  if where.endswith(".py"):
    path = os.path.abspath(os.path.join(base_dir or os.getcwd(), os.path.expanduser(where)))
    if not os.path.isfile(path):
      raise UserError(
        f"{field}={name!r}: {path} does not exist"
        + (
          ""
          if os.path.isabs(where)
          else " (a relative path is taken from the config file's directory)"
        )
      )
    sha = sha256_of(path)
    return Loaded(
      name, target, _attribute(_load_file(path, sha, field), attr, field, path), path, sha
    )
  try:
    module = importlib.import_module(where)
  except ImportError as e:
    raise UserError(f"{field}={name!r}: cannot import {where}: {e}") from None
  obj = _attribute(module, attr, field, where)
  file = getattr(module, "__file__", None)
  if file is None or os.path.abspath(file).startswith(_PACKAGE_DIR + os.sep):
    return Loaded(name, target, obj)  # jaxtrain's own: its version is in the manifest
  file = os.path.abspath(file)
  return Loaded(name, target, obj, file, sha256_of(file))

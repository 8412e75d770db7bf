"""What a run reads and trains: its data's splits and fitted preprocessing, its model and task.

Shared by training, `jaxtrain predict`/`export` and retraining, so every one
of them sees the same examples through the same preprocessing. A resumed run
of an imported dataset named without a version stays on the version it
started with (from its manifest), not a newer import.

The model, task and dataset are found by name (registry.py: a short name or
an import path, files relative to the config's directory `base_dir`), the
built-in ones exactly like a user's. A model is a Flax Linen module class,
an NNX module class (its constructor takes `rngs`), or a function returning
either; `config.model`'s other fields are its arguments, and what the data
implies (vocabulary sizes, output width: `preprocess.model_kwargs`; the
compute dtype) fills arguments it declares that the config leaves unset. A
task is built the same way from `config.loss` (tasks.py). `RunInputs.code`
lists every user file loaded, with its SHA-256, for the manifest.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtrain import registry, tasks
from jaxtrain.config import base_config
from jaxtrain.data import datasets, importing, input_pipeline, preprocess, store
from jaxtrain.errors import UserError
from jaxtrain.run import checkpoint, manifest, workdir as wd
from jaxtrain.state import ApplyFn, linen_apply_fn, nnx_split

SPLIT_FIELDS = ("train_split", "eval_split", "test_split")
_NOT_ARGUMENTS = ("self", "parent", "name", "rngs")  # set by Flax or by us, never by a config


def _signature(obj) -> inspect.Signature:
  # A class's own constructor: NNX's metaclass hides it behind (*args, **kwargs).
  return inspect.signature(obj.__init__ if isinstance(obj, type) else obj)


def _arguments(obj) -> tuple[dict[str, inspect.Parameter], bool]:
  """(named keyword arguments `obj` takes, whether it also takes **kwargs)."""
  try:
    params = _signature(obj).parameters
  except (TypeError, ValueError):
    return {}, True
  named = {
    n: p
    for n, p in params.items()
    if n not in _NOT_ARGUMENTS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
  }
  return named, any(p.kind == p.VAR_KEYWORD for p in params.values())


def _takes_rngs(obj) -> bool:
  try:
    return "rngs" in _signature(obj).parameters
  except (TypeError, ValueError):
    return False


@dataclasses.dataclass(frozen=True)
class Model:
  """A model named in the config, built for this run's data.

  `make()` builds the module (Linen: the module; NNX: a fresh one from `rngs`),
  `init(rng, batch)` its variables, `apply_fn(axis_name)` jaxtrain's apply
  function (under pmap, batch norms reduce over `axis_name`).
  """

  loaded: registry.Loaded
  kwargs: dict
  input_key: str | None
  is_nnx: bool
  pretrained: str = ""  # a Hugging Face folder its weights come from (model.pretrained)

  def inputs(self, batch):
    """One example of zeros shaped like what the model is called on."""
    taken = batch if self.input_key is None else batch[self.input_key]
    if self.input_key is None:
      taken = {k: v for k, v in taken.items() if k not in ("label", "mask")}
    return jax.tree.map(lambda x: jnp.zeros((1,) + x.shape[1:], x.dtype), taken)

  def make(self, rngs=None, axis_name: str | None = None):
    kwargs = dict(self.kwargs)
    if self.is_nnx:
      return self.loaded.obj(**kwargs, rngs=rngs)
    if axis_name is not None and "axis_name" in _arguments(self.loaded.obj)[0]:
      kwargs["axis_name"] = axis_name
    module = self.loaded.obj(**kwargs)
    if not isinstance(module, nn.Module):
      raise UserError(
        f"config.model.name={self.loaded.name!r} made a {type(module).__name__}, "
        "not a Flax Linen or NNX module"
      )
    return module

  def init(self, rng, batch) -> dict[str, Any]:
    """The step-0 variables (`{"params": ..., "batch_stats": ...}`), a function of `rng` alone."""
    if self.is_nnx:
      return jax.jit(lambda key: nnx_split(self.make(nnx.Rngs(key)), self.input_key)[0])(rng)
    module = self.make()
    kwargs = {"train": False} if "train" in inspect.signature(module.__call__).parameters else {}
    return jax.jit(functools.partial(module.init, **kwargs))(
      {"params": rng, "dropout": rng}, self.inputs(batch)
    )

  def apply_fn(self, axis_name: str | None = None) -> ApplyFn:
    if self.is_nnx:
      abstract = nnx.eval_shape(lambda: self.make(nnx.Rngs(0)))
      return nnx_split(abstract, self.input_key, axis_name)[1]
    return linen_apply_fn(self.make(axis_name=axis_name), self.input_key)


def pretrained_fields(loaded: registry.Loaded, folder: str) -> dict:
  """A model's arguments from a pretrained folder's config.json (its `from_hf_config`)."""
  from_hf_config = getattr(loaded.obj, "from_hf_config", None)
  if from_hf_config is None:
    raise UserError(
      f"config.model.name={loaded.name!r} cannot take model.pretrained: it has no "
      "from_hf_config (the built-in bert, llama and vit do; models/hf.py says how to add it)"
    )
  return from_hf_config(checkpoint.read_pretrained(folder).config)


def _model_arguments(model_config, derived: dict, base_dir: str | None):
  """(what `model_config.name` names, its arguments, whether it is NNX, the pretrained
  folder or ""), checked. A pretrained folder's config.json gives the arguments the
  config leaves unset, before the data's (`derived`)."""
  fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model_config.items()}
  name = fields.pop("name")
  pretrained = fields.pop("pretrained", "")
  loaded = registry.resolve(name, registry.MODELS, "config.model.name", base_dir)
  obj = loaded.obj
  is_class = isinstance(obj, type)
  is_nnx = is_class and issubclass(obj, nnx.Module)
  if not callable(obj) or (is_class and not (is_nnx or issubclass(obj, nn.Module))):
    raise UserError(
      f"config.model.name={name!r} is not a Flax Linen or NNX module class, "
      "nor a function returning a Linen module"
    )
  if is_nnx and not _takes_rngs(obj):
    raise UserError(
      f"config.model.name={name!r}: an NNX module's constructor must take `rngs` "
      "(its parameters are initialised from them)"
    )
  arguments, open_ended = _arguments(obj)
  unknown = sorted(set(fields) - set(arguments))
  if unknown and not open_ended:
    raise UserError(
      f"config.model: {loaded.target} has no argument(s) {', '.join(unknown)} "
      f"(it takes: {', '.join(arguments) or 'none'})"
    )
  if pretrained:
    pretrained = os.path.abspath(os.path.expanduser(pretrained))  # as the command line means it
    for k, v in pretrained_fields(loaded, pretrained).items():
      fields.setdefault(k, v)
  for k, v in derived.items():
    if k in arguments:
      fields.setdefault(k, v)
  return loaded, fields, is_nnx, pretrained


def create_model(
  model_config, *, derived: dict | None = None, base_dir: str | None = None, rngs=None
):
  """The module a config's `model` section names, for code that builds its own state.

  A Linen module; an NNX module is made from `rngs` (default `nnx.Rngs(0)`).
  """
  loaded, fields, is_nnx, pretrained = _model_arguments(model_config, derived or {}, base_dir)
  return Model(loaded, fields, "image", is_nnx, pretrained).make(
    rngs if rngs is not None else nnx.Rngs(0)
  )


def _check_tokenizer_fits(prep: dict, fields: dict, config) -> None:
  """A pretrained tokenizer's ids and lengths must be ones the model has embeddings for."""
  text = prep.get("text") or {}
  if text.get("tokenizer") != "pretrained":
    return
  vocab, positions = fields.get("vocab_size"), fields.get("max_position_embeddings")
  if vocab is not None and text["size"] > vocab:
    raise UserError(
      f"preprocess.tokenizer: {text['source']} has {text['size']} tokens, the model "
      f"{config.model.name} embeds {vocab}: the tokenizer is not this model's"
    )
  if positions is not None and text["max_length"] > positions:
    raise UserError(
      f"preprocess.max_length={text['max_length']} exceeds the model's "
      f"{positions} positions (max_position_embeddings): lower it"
    )


def build_model(config, prep: dict, example_batch, base_dir: str | None = None) -> Model:
  """The model `config.model` names, with its arguments from the config and the data."""
  derived = preprocess.model_kwargs(prep)
  if config.get("compute_dtype", "float32") != "float32":
    derived["dtype"] = jnp.dtype(config.compute_dtype)
  loaded, fields, is_nnx, pretrained = _model_arguments(config.model, derived, base_dir)
  _check_tokenizer_fits(prep, fields, config)
  input_key = config.get("model_input") or getattr(loaded.obj, "input_key", "image")
  if input_key is not None and input_key not in example_batch:
    if config.get("model_input"):
      raise UserError(
        f"config.model_input={input_key!r} is not a feature of the data "
        f"(it has: {', '.join(sorted(example_batch))})"
      )
    input_key = None  # no image: the model takes the whole batch
  return Model(loaded, fields, input_key, is_nnx, pretrained)


def build_task(
  config, prep: dict, base_dir: str | None = None
) -> tuple[tasks.Task, registry.Loaded]:
  """The task `config.task` names, its options from `config.loss` and the data (tasks.py)."""
  loaded = registry.resolve(config.task, registry.TASKS, "config.task", base_dir)
  obj = loaded.obj
  options = dict(config.get("loss") or {})
  extra = set(options) - set(base_config().loss)  # fields the config added for its task
  derived = {**preprocess.task_kwargs(prep), "top_k": config.eval_top_k}
  if not isinstance(obj, type) and hasattr(obj, "loss"):  # an instance: nothing to set
    arguments: dict = {}
  elif isinstance(obj, type):
    arguments = _arguments(obj)[0]
  elif callable(obj):  # a loss function: its keyword-only arguments are its options
    arguments = {
      n: p for n, p in inspect.signature(obj).parameters.items() if p.kind == p.KEYWORD_ONLY
    }
  else:
    raise UserError(f"config.task={config.task!r} is not a loss function or a task class")
  unknown = sorted(extra - set(arguments))
  if unknown:
    raise UserError(
      f"config.loss: {loaded.target} takes no option(s) {', '.join(unknown)} "
      f"(it takes: {', '.join(arguments) or 'none'})"
    )
  kwargs = {
    k: options[k] if k in options else derived[k] for k in arguments if k in options or k in derived
  }
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  if isinstance(obj, type):
    task = obj(**kwargs)
  elif kwargs:
    task = functools.partial(obj, **kwargs)
  else:
    task = obj
  return tasks.Task.of(task), loaded


@dataclasses.dataclass
class RunInputs:
  builder: object
  schema: dict | None
  sources: dict  # config field ("train_split", ...) -> random-access source or None
  prep: dict  # the fitted preprocessing (preprocess.py)
  seen: dict | None  # retrieval: each user's training items
  task: tasks.Task
  code: dict  # config field -> {"name", "file", "sha256"} of user files loaded
  base_dir: str | None = None

  def transform(self, train: bool) -> Callable:
    return preprocess.make_transform(self.prep, train=train, seen=self.seen)

  def save_preprocessing(self, workdir: str) -> None:
    """Writes the fitted preprocessing into the run (once its checks have passed)."""
    if jax.process_index() == 0:
      preprocess.save(wd.preprocess(workdir), self.prep, self.seen)

  def model(self, config, example_batch) -> Model:
    return build_model(config, self.prep, example_batch, self.base_dir)


def _code_record(config, task_code: registry.Loaded, dataset, base_dir: str | None) -> dict:
  """{config field: {name, file, sha256}} of the user files the model, task and dataset came
  from."""
  loaded = (
    registry.resolve(config.model.name, registry.MODELS, "config.model.name", base_dir),
    task_code,
    datasets.builder_class(dataset, base_dir),
  )
  return {
    field: {"name": l.name, "file": l.file, "sha256": l.sha256}
    for field, l in zip(("config.model.name", "config.task", "config.dataset.name"), loaded)
    if l is not None and l.file is not None
  }


def pinned_dataset(config, workdir: str | None):
  """`config.dataset`, with an imported dataset's version pinned to the one the run started on."""
  dataset = config.dataset
  if not workdir or ":" in dataset.name or not os.path.exists(wd.manifest(workdir)):
    return dataset
  data_dir = dataset.data_dir or store.default_data_dir()
  if store.imported_dir(data_dir, dataset.name) is None:
    return dataset
  started = manifest.read(workdir).get("dataset", {})
  if started.get("name") != dataset.name or not started.get("version"):
    return dataset
  pinned = dataset.copy_and_resolve_references()
  pinned.name = f"{dataset.name}:{started['version']}"
  return pinned


def source_arrays(source) -> dict[str, np.ndarray]:
  if isinstance(source, input_pipeline.InMemorySource):
    return source.arrays
  return input_pipeline.InMemorySource(source).arrays


def load(
  config, workdir: str | None = None, *, fit: bool, dataset=None, base_dir: str | None = None
) -> RunInputs:
  """The run's inputs: the preprocessing fitted afresh (and saved in `workdir`), or read from it.

  A run fits when it starts and reads what it fitted when it resumes, so
  predictions and resumed steps use exactly the training-time preprocessing.
  """
  dataset = dataset or pinned_dataset(config, workdir)
  builder = datasets.get_builder(dataset, base_dir)
  schema = importing.read_schema(builder.data_dir)
  sources = {
    k: input_pipeline.cached(
      datasets.get_source(builder, dataset[k], f"dataset.{k}"), dataset.cache_max_mb << 20
    )
    if dataset[k]
    else None
    for k in SPLIT_FIELDS
  }
  if not fit and (schema is not None or preprocess.saved(wd.preprocess(workdir))):
    prep, seen = preprocess.load(wd.preprocess(workdir))
    task, task_code = build_task(config, prep, base_dir)
  else:
    train = source_arrays(sources["train_split"]) if schema is not None else {}
    prep = preprocess.fit(schema, train, config)
    if config.init_from.workdir:
      prep = preprocess.inherit(prep, wd.preprocess(config.init_from.workdir))
    task, task_code = build_task(
      config, prep, base_dir
    )  # a task that cannot use this data says so first
    seen = preprocess.fit_seen(train, prep) if task.needs_seen_items else None
  code = _code_record(config, task_code, dataset, base_dir)
  return RunInputs(builder, schema, sources, prep, seen, task, code, base_dir)


def load_for_inference(config, workdir: str, base_dir: str | None = None) -> RunInputs:
  """A finished run's schema, preprocessing and task, without reading its splits or writing."""
  dataset = pinned_dataset(config, workdir)
  builder = datasets.get_builder(dataset, base_dir, prepare=False)
  schema = importing.read_schema(builder.data_dir)
  if preprocess.saved(wd.preprocess(workdir)):
    prep, seen = preprocess.load(wd.preprocess(workdir))
  else:
    prep, seen = preprocess.fit(None, {}, config), None
  task, task_code = build_task(config, prep, base_dir)
  code = _code_record(config, task_code, dataset, base_dir)
  return RunInputs(builder, schema, {}, prep, seen, task, code, base_dir)

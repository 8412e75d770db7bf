"""What a run reads: its dataset's splits, the preprocessing fitted to them, its task and model.

Shared by training, `jaxtrain predict`/`export` and retraining, so every one
of them sees the same examples through the same preprocessing. A resumed run
of an imported dataset named without a version stays on the version it
started with (from its manifest), not a newer import.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain import data_import, datasets, input_pipeline, manifest, preprocess, tasks
from jaxtrain.models import IMAGE_MODELS, create_model
from jaxtrain.state import linen_apply_fn

SPLIT_FIELDS = ("train_split", "eval_split", "test_split")


@dataclasses.dataclass
class RunInputs:
  builder: object
  schema: dict | None
  sources: dict            # config field ("train_split", ...) -> random-access source or None
  prep: dict               # the fitted preprocessing (preprocess.py)
  seen: dict | None        # retrieval: each user's training items
  task: tasks.Task

  def transform(self, train: bool) -> Callable:
    return preprocess.make_transform(self.prep, train=train, seen=self.seen)

  def model(self, config, axis_name: str | None = None):
    """The model; `config.compute_dtype` goes to models with a `dtype` (their compute dtype:
    Flax keeps params in float32, so bfloat16 here is mixed precision with float32 masters)."""
    derived = preprocess.model_kwargs(self.prep)
    if config.get("compute_dtype", "float32") != "float32":
      derived["dtype"] = jnp.dtype(config.compute_dtype)
    return create_model(config.model, axis_name, derived)

  def apply_fn(self, config, axis_name: str | None = None):
    input_key = "image" if config.model.name in IMAGE_MODELS else None
    return linen_apply_fn(self.model(config, axis_name), input_key)


def pinned_dataset(config, workdir: str | None):
  """`config.dataset`, with an imported dataset's version pinned to the one the run started on."""
  dataset = config.dataset
  if not workdir or ":" in dataset.name or not os.path.exists(manifest.path(workdir)):
    return dataset
  data_dir = dataset.data_dir or datasets.default_data_dir()
  if datasets.imported_dir(data_dir, dataset.name) is None:
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


def load(config, workdir: str | None = None, *, fit: bool, dataset=None) -> RunInputs:
  """The run's inputs: the preprocessing fitted afresh (and saved in `workdir`), or read from it.

  A run fits when it starts and reads what it fitted when it resumes, so
  predictions and resumed steps use exactly the training-time preprocessing.
  """
  dataset = dataset or pinned_dataset(config, workdir)
  builder = datasets.get_builder(dataset)
  schema = data_import.read_schema(builder.data_dir)
  sources = {k: input_pipeline.cached(datasets.get_source(builder, dataset[k], f"dataset.{k}"),
                                      dataset.cache_max_mb << 20) if dataset[k] else None
             for k in SPLIT_FIELDS}
  if not fit and (schema is not None or preprocess.saved(workdir)):
    prep, seen = preprocess.load(workdir)
  else:
    train = source_arrays(sources["train_split"]) if schema is not None else {}
    prep = preprocess.fit(schema, train, config)
    if config.init_from.workdir:
      prep = preprocess.inherit(prep, config.init_from.workdir)
    tasks.make_task(config, prep)  # a task that cannot use this data says so first
    seen = preprocess.fit_seen(train, prep) if config.task == "retrieval" else None
    if workdir and jax.process_index() == 0:
      preprocess.save(workdir, prep, seen)
  return RunInputs(builder, schema, sources, prep, seen, tasks.make_task(config, prep))


def load_for_inference(config, workdir: str) -> RunInputs:
  """A finished run's schema, preprocessing and task, without reading its splits."""
  builder = datasets.get_builder(pinned_dataset(config, workdir))
  schema = data_import.read_schema(builder.data_dir)
  prep, seen = preprocess.load(workdir) if preprocess.saved(workdir) else (preprocess.fit(None, {}, config), None)
  return RunInputs(builder, schema, {}, prep, seen, tasks.make_task(config, prep))

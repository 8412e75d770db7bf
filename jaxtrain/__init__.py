"""jaxtrain: a functional training toolkit for JAX.

Where things are. Layers import only downwards (tests/test_layers.py checks it):

  core (jax, flax, optax, ml_collections only)
    state.py           TrainState (the pytree a step reads and writes); linen_apply_fn,
                       nnx_split / nnx_apply_fn (Flax NNX modules as pure functions)
    steps.py           train_step, eval_step, predict_step (pure), on-device metric totals
    tasks.py           losses and metrics: classification, regression, retrieval,
                       language modeling (F1, MCC, ROC-AUC, PR-AUC, RMSE, MAPE, recall@k,
                       perplexity)
    optim.py           Optax optimizers and schedules from config.optimizer; freezing,
                       per-group learning rates
    lora.py            LoRA adapters on any model, the base held fixed (state.FROZEN)
    config.py          config defaults and value checks
    registry.py        names in a config -> objects: short names and import paths
                       ("model.py:Net") for models, tasks and datasets
    errors.py          UserError: one line naming what to fix
    files.py           files written whole or not at all (the only os.replace)
  models/              built-in Flax modules: image.py (MLP, CNN, ResNet), tables.py,
                       lm.py (GPT-2-shaped LM), remat.py; pretrained layouts: bert.py,
                       llama.py (Llama, Qwen2, Mistral), vit.py, hf.py (Hugging Face names
                       and layouts <-> Flax params)
  data/                datasets.py (TFDS builders), importing/ (`jaxtrain data import`),
                       columns.py (tables read column-wise in chunks, kinds, missing values),
                       records.py (tf.train.Example shards written fast), preprocess.py
                       (fitted on train), input_pipeline.py (Grain), store.py
  run/                 loop.py (train_and_evaluate: setup, train, finish), hooks.py
                       (periodic work: logging, evaluation + early stopping, checkpoints,
                       preemption, progress, yours), inputs.py (a run's data, model, task),
                       feeds.py (batches from the host or gathered on the device; the auto
                       steps per dispatch), compiled.py, workdir.py (every workdir name,
                       the lock, config.json, the events log), checkpoint.py (the only
                       Orbax reader/writer, every read verified; safetensors and Hugging
                       Face folders read and written), parallel.py
                       (mesh/pmap layout), distributed.py, preemption.py, nan_guard.py,
                       early_stopping.py, finetune.py (init_from, model.pretrained, LoRA),
                       manifest.py, metric_writers.py
  tools/               cli.py (`jaxtrain ...`), sweep.py (Optuna), report.py, predict.py
                       (predict/export), export_hf.py (export --format safetensors),
                       rerun.py, managed.py (SageMaker, Vertex AI)
Scheduled retraining (promote only if better): experiments/retrain.py. Benchmarks and
experiment folders: experiments/.

`from jaxtrain import train_step` loads the core alone (jax, flax, optax): names
from the upper layers are imported when first used.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
  "TrainState": "jaxtrain.state",
  "linen_apply_fn": "jaxtrain.state",
  "nnx_apply_fn": "jaxtrain.state",
  "nnx_split": "jaxtrain.state",
  "train_step": "jaxtrain.steps",
  "eval_step": "jaxtrain.steps",
  "predict_step": "jaxtrain.steps",
  "classification_loss": "jaxtrain.steps",
  "accumulate": "jaxtrain.steps",
  "summarize": "jaxtrain.steps",
  "make_optimizer": "jaxtrain.optim",
  "UserError": "jaxtrain.errors",
  "train_and_evaluate": "jaxtrain.run.loop",
  "Hook": "jaxtrain.run.hooks",
  "Loop": "jaxtrain.run.hooks",
  "tree_digest": "jaxtrain.run.checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'jaxtrain' has no attribute {name!r}")
  value = getattr(importlib.import_module(_EXPORTS[name]), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))

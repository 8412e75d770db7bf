"""jaxtrain: a functional training toolkit for JAX.

Where things are:
  state.py           TrainState (the pytree a step reads and writes), linen_apply_fn
  steps.py           train_step, eval_step, predict_step (pure), on-device metric totals
  tasks.py           classification, regression, retrieval, language modeling: losses,
                     metrics (F1, ROC-AUC, RMSE, MAPE, recall@k, NDCG@k, perplexity), predictions
  optim.py           Optax optimizers and schedules from config.optimizer
  finetune.py        init_from another run (params matched by path and shape), freezing,
                     per-group learning rates
  models.py          MLP, CNN (Flax's MNIST example with batch norm), small ResNet; registry
  table_models.py    tabular MLP, bag of embeddings, Transformer encoder, matrix
                     factorization, two towers
  lm.py              decoder-only Transformer LM (GPT-2 shape, flash attention, remat);
                     model FLOPs per token (MFU)
  datasets.py        TFDS builders: embedded digits, synthetic tokens, IDX files, imports,
                     standard TFDS by name
  data_import.py     `jaxtrain data import`: CSV/Parquet/JSONL/npz/folders -> versioned TFDS,
                     rows validated, split by fraction/column/time, lags
  preprocess.py      fitted on the train split, saved with the run: scaling, vocabularies,
                     tokenizer, class weights
  run_inputs.py      a run's splits + preprocessing + task + model, shared by train/predict
  input_pipeline.py  Grain: seeded per-epoch shuffle, process sharding, padded eval,
                     prefetch to device
  parallel.py        Layout: jit over a device mesh (optionally fsdp) or pmap; placing
                     state and batches; compiling a step either way
  distributed.py     multi-host: jax.distributed from flags, SLURM, Open MPI, JobSet
  checkpoint.py      Orbax save/restore of state + data position, corrupt-checkpoint
                     fallback; params digests
  early_stopping.py  patience on an eval metric; the k best checkpoints
  nan_guard.py       non-finite steps: never applied or saved; halt or skip
  preemption.py      SIGTERM/SIGINT: save and exit 75
  manifest.py        manifest.json: versions, devices, data fingerprint; config-change checks
  rerun.py           `jaxtrain rerun`: train a manifest again, compare the bits
  metric_writers.py  console, metrics.jsonl, TensorBoard (scalars, text, hparams), live bar
  config.py          config defaults and value checks
  train.py           train_and_evaluate: the loop
  sweep.py           `jaxtrain sweep`: Optuna studies of ordinary runs, pruning, best config
  report.py          `jaxtrain report`: curves and sweep plots as HTML + PNGs
  predict.py         `jaxtrain predict` (files) and `jaxtrain export` (jax.export), evaluate_run
  cli.py             `jaxtrain train | sweep | report | inspect | rerun | data | predict | export`
Scheduled retraining (promote only if better): experiments/retrain.py. Benchmarks:
experiments/ (loop_overhead, startup, small_model, input_wait, lm_mfu,
checkpoint_blocking, lightning_compare; each has --quick).
"""

from jaxtrain.checkpoint import tree_digest
from jaxtrain.errors import UserError
from jaxtrain.optim import make_optimizer
from jaxtrain.state import TrainState, linen_apply_fn
from jaxtrain.steps import (accumulate, classification_loss, eval_step, predict_step, summarize,
                            train_step)
from jaxtrain.train import train_and_evaluate

__all__ = [
    "TrainState", "train_step", "eval_step", "predict_step", "classification_loss", "linen_apply_fn",
    "accumulate", "summarize", "make_optimizer", "train_and_evaluate", "tree_digest",
    "UserError",
]
__version__ = "0.1.0"

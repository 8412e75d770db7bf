"""jaxtrain: a functional training toolkit for JAX.

Where things are:
  state.py           TrainState (the pytree a step reads and writes), linen_apply_fn
  steps.py           train_step, eval_step (pure), losses, on-device metric totals
  optim.py           Optax optimizers and schedules from config.optimizer
  models.py          MLP, CNN (Flax's MNIST example with batch norm), small ResNet
  datasets.py        TFDS builders: embedded digits, IDX files, standard TFDS by name
  input_pipeline.py  Grain: seeded per-epoch shuffle, process sharding, padded eval,
                     prefetch to device
  parallel.py        Layout: jit over a device mesh (optionally fsdp) or pmap; placing
                     state and batches; compiling a step either way
  distributed.py     multi-host: jax.distributed from flags, SLURM, Open MPI, JobSet
  checkpoint.py      Orbax save/restore of state + data position, corrupt-checkpoint
                     fallback; params digests
  nan_guard.py       non-finite steps: never applied or saved; halt or skip
  preemption.py      SIGTERM/SIGINT: save and exit 75
  manifest.py        manifest.json: versions, devices, data fingerprint; config-change checks
  rerun.py           `jaxtrain rerun`: train a manifest again, compare the bits
  metric_writers.py  console, metrics.jsonl, TensorBoard (scalars, text, hparams), live bar
  config.py          config defaults and value checks
  train.py           train_and_evaluate: the loop
  sweep.py           `jaxtrain sweep`: Optuna studies of ordinary runs, pruning, best config
  report.py          `jaxtrain report`: curves and sweep plots as HTML + PNGs
  cli.py             `jaxtrain train | sweep | report | inspect | rerun`, one-line errors
"""

from jaxtrain.checkpoint import tree_digest
from jaxtrain.errors import UserError
from jaxtrain.optim import make_optimizer
from jaxtrain.state import TrainState, linen_apply_fn
from jaxtrain.steps import accumulate, classification_loss, eval_step, summarize, train_step
from jaxtrain.train import train_and_evaluate

__all__ = [
    "TrainState", "train_step", "eval_step", "classification_loss", "linen_apply_fn",
    "accumulate", "summarize", "make_optimizer", "train_and_evaluate", "tree_digest",
    "UserError",
]
__version__ = "0.1.0"

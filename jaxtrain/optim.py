"""Optax optimizers and learning-rate schedules from `config.optimizer`.

The schedule's horizon is `num_train_steps` as the config resolves it, never
how long this particular process happens to run: a run stopped and resumed
follows the same curve as one that ran straight through.
"""

from __future__ import annotations

import jax
import optax

from jaxtrain import finetune
from jaxtrain.config import OPTIMIZERS, SCHEDULES


def make_schedule(opt, num_train_steps: int) -> optax.Schedule:
  lr, warmup = opt.learning_rate, opt.warmup_steps
  if opt.schedule == "constant":
    if warmup == 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                                 optax.constant_schedule(lr)], [warmup])
  if opt.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, max(num_train_steps, warmup + 1), end_value=lr * opt.end_lr_factor)
  if opt.schedule == "warmup_linear":
    return optax.join_schedules([
        optax.linear_schedule(0.0, lr, warmup),
        optax.linear_schedule(lr, lr * opt.end_lr_factor, max(num_train_steps - warmup, 1))],
        [warmup])
  if opt.schedule == "piecewise":
    boundaries, scales = tuple(opt.piecewise_boundaries), tuple(opt.piecewise_scales)
    if len(boundaries) != len(scales):
      raise ValueError("config.optimizer.piecewise_boundaries and piecewise_scales "
                       f"must have equal lengths, got {len(boundaries)} and {len(scales)}")
    return optax.piecewise_constant_schedule(lr, dict(zip(boundaries, scales)))
  raise ValueError(f"config.optimizer.schedule={opt.schedule!r} is not one of {SCHEDULES}")


def decay_mask(params):
  """True for weights that decay: kernels and embeddings, not biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _base_optimizer(opt, schedule) -> list[optax.GradientTransformation]:
  if opt.name == "adamw":
    return [optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                        weight_decay=opt.weight_decay, mask=decay_mask)]
  parts = []
  if opt.weight_decay > 0:  # coupled (L2) decay, as torch.optim.SGD/Adam do it
    parts.append(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask))
  if opt.name == "sgd":
    parts.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
  elif opt.name == "adam":
    parts.append(optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps))
  else:
    raise ValueError(f"config.optimizer.name={opt.name!r} is not one of {OPTIMIZERS}")
  return parts


def make_optimizer(opt, num_train_steps: int) -> tuple[optax.GradientTransformation,
                                                        optax.Schedule]:
  """The optimizer `opt` (a `config.optimizer`) describes, and its schedule.

  With `opt.accumulate_steps=k` (gradient accumulation, `optax.MultiSteps`)
  the params change every k-th step by the mean of k steps' gradients: a
  batch k times larger in memory of one (the schedule counts updates).
  With `opt.freeze` or `opt.lr_multipliers` the params are partitioned
  (`optax.multi_transform`): frozen ones get zero updates (no weight decay
  either), and gradient clipping sees only the trainable ones.
  """
  k = opt.accumulate_steps
  schedule = make_schedule(opt, max(num_train_steps // k, 1))
  partition = bool(opt.freeze or opt.lr_multipliers)
  parts = []
  if opt.grad_clip_norm > 0:
    clip = optax.clip_by_global_norm(opt.grad_clip_norm)
    if opt.freeze:
      clip = optax.masked(clip, lambda p: jax.tree.map(
          lambda label: label != "frozen", finetune.param_labels(p, opt.freeze, ())))
    parts.append(clip)
  if partition:
    parts.append(finetune.partitioned(lambda s: optax.chain(*_base_optimizer(opt, s)), schedule, opt))
  else:
    parts += _base_optimizer(opt, schedule)
  tx = optax.chain(*parts)
  if k > 1:  # one update per k steps, from the mean of their gradients
    return optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation(), lambda step: schedule(step // k)
  return tx, schedule

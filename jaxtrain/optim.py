"""Optax optimizers and learning-rate schedules from `config.optimizer`.

The schedule's horizon is `num_train_steps` as the config resolves it, never
how long this particular process happens to run: a run stopped and resumed
follows the same curve as one that ran straight through.

Param paths are `/`-joined names, e.g. `Conv_0/kernel`, `layers/0/bias`;
`optimizer.freeze` and `optimizer.lr_multipliers` are regexes searched in them.
"""

from __future__ import annotations

import re

import jax
import optax

from jaxtrain.config import OPTIMIZERS, SCHEDULES
from jaxtrain.errors import UserError


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flat(tree) -> dict[str, object]:
  return {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def param_labels(params, freeze: str, multipliers) -> dict:
  """A label per param: "frozen", "group_<i>" (first matching multiplier) or "default"."""
  patterns = [(re.compile(regex), f"group_{i}") for i, (regex, _) in enumerate(multipliers)]

  def label(path, _):
    name = path_str(path)
    if freeze and re.search(freeze, name):
      return "frozen"
    return next((g for p, g in patterns if p.search(name)), "default")

  return jax.tree_util.tree_map_with_path(label, params)


def check_patterns(params, freeze: str, multipliers) -> None:
  names = list(flat(params))
  for field, regex in [("optimizer.freeze", freeze)] + [
    ("optimizer.lr_multipliers", r) for r, _ in multipliers
  ]:
    if not regex:
      continue
    try:
      compiled = re.compile(regex)
    except re.error as e:
      raise UserError(f"config.{field}={regex!r} is not a regex: {e}") from None
    if not any(compiled.search(n) for n in names):
      raise UserError(
        f"config.{field}={regex!r} matches no parameter (they are: "
        f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''})"
      )


def partitioned(make_tx, schedule, opt) -> optax.GradientTransformation:
  """`make_tx(schedule)` per param group: frozen params get zero updates, groups scaled rates."""
  multipliers, freeze = tuple(tuple(m) for m in opt.lr_multipliers), str(opt.freeze)
  transforms = {"default": make_tx(schedule), "frozen": optax.set_to_zero()}
  for i, (_, factor) in enumerate(multipliers):
    transforms[f"group_{i}"] = make_tx(lambda count, f=float(factor): schedule(count) * f)
  # Plain values captured (not the config): equal configs give equal optimizers (state.py).
  labels = lambda params: param_labels(params, freeze, multipliers)
  return optax.multi_transform(transforms, labels)


def make_schedule(opt, num_train_steps: int) -> optax.Schedule:
  lr, warmup = opt.learning_rate, opt.warmup_steps
  if opt.schedule == "constant":
    if warmup == 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
  if opt.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup, max(num_train_steps, warmup + 1), end_value=lr * opt.end_lr_factor
    )
  if opt.schedule == "warmup_linear":
    return optax.join_schedules(
      [
        optax.linear_schedule(0.0, lr, warmup),
        optax.linear_schedule(lr, lr * opt.end_lr_factor, max(num_train_steps - warmup, 1)),
      ],
      [warmup],
    )
  if opt.schedule == "piecewise":
    boundaries, scales = tuple(opt.piecewise_boundaries), tuple(opt.piecewise_scales)
    if len(boundaries) != len(scales):
      raise ValueError(
        "config.optimizer.piecewise_boundaries and piecewise_scales "
        f"must have equal lengths, got {len(boundaries)} and {len(scales)}"
      )
    return optax.piecewise_constant_schedule(lr, dict(zip(boundaries, scales)))
  raise ValueError(f"config.optimizer.schedule={opt.schedule!r} is not one of {SCHEDULES}")


def decay_mask(params):
  """True for weights that decay: kernels and embeddings, not biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _base_optimizer(opt, schedule) -> list[optax.GradientTransformation]:
  if opt.name == "adamw":
    return [
      optax.adamw(
        schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask
      )
    ]
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


def make_optimizer(
  opt, num_train_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
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
      freeze = str(opt.freeze)
      clip = optax.masked(
        clip, lambda p: jax.tree.map(lambda label: label != "frozen", param_labels(p, freeze, ()))
      )
    parts.append(clip)
  if partition:
    parts.append(partitioned(lambda s: optax.chain(*_base_optimizer(opt, s)), schedule, opt))
  else:
    parts += _base_optimizer(opt, schedule)
  tx = optax.chain(*parts)
  if k > 1:  # one update per k steps, from the mean of their gradients
    return optax.MultiSteps(
      tx, every_k_schedule=k
    ).gradient_transformation(), lambda step: schedule(step // k)
  return tx, schedule

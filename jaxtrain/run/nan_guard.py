"""Non-finite losses and gradients: never applied, never checkpointed.

`guard` follows each train step: a small on-device `health` record counts
steps whose metrics (loss, gradient norm, ...) are not all finite; the loop
reads it only where it already waits for the device (log, evaluation and
checkpoint boundaries), then applies `nan_policy`:
- "halt": stop with an error naming the first bad step and metric; the state
  in memory is dropped, the latest checkpoint is the last finite state;
- "skip": such an update leaves params, optimizer state and batch statistics
  as they were (the step counter still advances, so data and PRNG stay
  aligned with an uninterrupted run); halt after `nan_max_consecutive_skips`
  bad steps in a row.
A skipped step leaves the optimizer state whole, its own step count included
(as `optax.apply_if_finite` does), so schedules resume where they were.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtrain.errors import UserError


class NonFiniteError(UserError):
  """Training met a non-finite loss or gradient (nan_policy decides when to raise)."""


HEALTH_FIELDS = ("skipped", "consecutive", "first_bad_step", "first_bad_metric")


def new_health() -> dict[str, jax.Array]:
  return {
    "skipped": jnp.int32(0),
    "consecutive": jnp.int32(0),
    "first_bad_step": jnp.int32(-1),
    "first_bad_metric": jnp.int32(-1),
  }


def as_vector(health) -> jax.Array:
  """The record as one int32[4] array: what the loop carries (one buffer, not four)."""
  return jnp.stack([jnp.asarray(health[k], jnp.int32) for k in HEALTH_FIELDS])


def as_dict(health) -> dict:
  """The record by name, from either form."""
  if isinstance(health, dict):
    return health
  return {k: health[i] for i, k in enumerate(HEALTH_FIELDS)}


def guard(state, new_state, new_metrics, health, *, keep_finite: bool = True):
  """(state, metrics, health): the step's outcome, recorded in `health`.

  `keep_finite` ("skip"): `new_state` is kept only if all its metrics are
  finite, and a skipped step reports zeros, so running totals stay finite.
  Without it ("halt") the step's result is returned as it is: the loop halts
  at the next `check` (before any log, evaluation or save reads the state),
  and selecting costs as much as a small model's whole step on a CPU. Metrics
  are checked in sorted-name order, the order `check` names them in.
  """
  names = sorted(new_metrics)
  bad = jnp.stack([~jnp.all(jnp.isfinite(new_metrics[k])) for k in names])
  ok = ~jnp.any(bad)
  kept, reported = new_state, new_metrics
  if keep_finite:  # one branch taken, not an elementwise select over every array
    kept, reported = jax.lax.cond(
      ok,
      lambda: (new_state, new_metrics),
      lambda: (state.replace(step=new_state.step), jax.tree.map(jnp.zeros_like, new_metrics)),
    )
  first = health["first_bad_step"] < 0
  health = {
    "skipped": health["skipped"] + (~ok).astype(jnp.int32),
    "consecutive": jnp.where(ok, 0, health["consecutive"] + 1),
    "first_bad_step": jnp.where(~ok & first, state.step, health["first_bad_step"]),
    "first_bad_metric": jnp.where(
      ~ok & first, jnp.argmax(bad).astype(jnp.int32), health["first_bad_metric"]
    ),
  }
  return kept, reported, health


def check(health, metric_names, *, policy: str, max_consecutive: int) -> int:
  """Host-side: raises NonFiniteError if the policy says stop; returns skipped steps."""
  h = {k: int(v) for k, v in as_dict(jax.device_get(health)).items()}
  if h["first_bad_step"] < 0:
    return 0
  metric = sorted(metric_names)[h["first_bad_metric"]]
  if policy == "halt":
    raise NonFiniteError(
      f"non-finite {metric} at step {h['first_bad_step'] + 1} "
      "(nan_policy=halt): stopped without saving it; the latest "
      "checkpoint holds the last finite state"
    )
  if h["consecutive"] >= max_consecutive:
    raise NonFiniteError(
      f"{h['consecutive']} steps in a row had a non-finite loss or "
      f"gradient (first: {metric} at step {h['first_bad_step'] + 1}; "
      f"nan_max_consecutive_skips={max_consecutive}): stopped"
    )
  return h["skipped"]


@jax.jit  # one program for the whole state, not an op per leaf at every save
def all_finite(tree) -> jax.Array:
  """True if every floating-point leaf of `tree` is finite (checked before a save)."""
  leaves = [
    jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)

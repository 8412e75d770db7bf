"""Pure training and evaluation steps, and the losses that drive them.

`train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) ->
metrics` have no side effects: wrap them in `jax.jit` (donating the state), in
`jax.pmap` with `axis_name=...`, or call them inside your own scan.

A loss function `loss_fn(outputs, batch[, params])` returns *per-example*
values: `{"loss": [B], "accuracy": [B]}` (or vectors, `[B, K]`, summed the
same way: per-class hits, score histograms). It gets the params if it takes
a third argument, for terms such as L2 or a KL penalty; a scalar value
counts for every example (its mean is itself).
The steps reduce them with the batch's optional `mask` (1 for real examples, 0
for padding), so an evaluation over padded batches counts every example once.
Under `pmap` the reduction is a `psum` of sums over a `psum` of counts, which
is the exact global mean even when devices hold different numbers of real
examples.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtrain.state import FROZEN, TrainState

Metrics = dict[str, jax.Array]


def classification_loss(logits: jax.Array, batch: Mapping[str, jax.Array]) -> Metrics:
  """Softmax cross-entropy on integer `batch["label"]`, and accuracy."""
  labels = batch["label"]
  logits = logits.astype(jnp.float32)  # a bfloat16 model's loss is still taken in float32
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  accuracy = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss": loss, "accuracy": accuracy}


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def takes_params(loss_fn: Callable) -> bool:
  """Whether `loss_fn` takes a third positional argument (the params)."""
  try:
    return _takes_params(loss_fn)
  except TypeError:  # an unhashable callable: asked afresh (only while tracing)
    return _takes_params.__wrapped__(loss_fn)


@functools.lru_cache(maxsize=256)
def _takes_params(loss_fn: Callable) -> bool:
  try:
    parameters = inspect.signature(loss_fn).parameters.values()
  except (TypeError, ValueError):
    return False
  positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def per_example(loss_fn: Callable, outputs, batch, params) -> Metrics:
  """`loss_fn`'s per-example values, passing `params` if it takes them."""
  return loss_fn(outputs, batch, params) if takes_params(loss_fn) else loss_fn(outputs, batch)


def _pmean_floats(tree, axis_name):
  """Averages the floating-point leaves across devices; integer ones (counters) stay as they are."""
  return jax.tree.map(
    lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.inexact) else x, tree
  )


def _weighted_sums(per_example: Metrics, batch, axis_name):
  """Masked sums of each per-example metric and the global example count."""
  mask = batch.get("mask")
  if mask is None:
    rows = next((v.shape[0] for v in per_example.values() if jnp.ndim(v)), None)
    if rows is None:  # only scalars: the batch's leading dimension counts the examples
      rows = jax.tree.leaves(batch)[0].shape[0]
    mask = jnp.ones((rows,), jnp.float32)
  mask = mask.astype(jnp.float32)
  count = _psum(jnp.sum(mask), axis_name)

  def masked_sum(v):
    v = jnp.asarray(v, jnp.float32)
    if v.ndim == 0:  # a batch-level term (an L2 penalty): the same for every example
      return v * jnp.sum(mask)
    # A metric may be a vector per example (per-class counts, score histograms).
    return jnp.sum(v * mask.reshape(mask.shape + (1,) * (v.ndim - 1)), axis=0)

  return {k: masked_sum(v) for k, v in per_example.items()}, count


def _means(sums, count, axis_name) -> Metrics:
  safe = jnp.maximum(count, 1.0)
  metrics = {k: _psum(v, axis_name) / safe for k, v in sums.items()}
  metrics["count"] = count
  return metrics


def train_step(
  state: TrainState, batch: Mapping[str, jax.Array], *, axis_name: str | None = None
) -> tuple[TrainState, Metrics]:
  """One optimizer update. Returns the new state and this batch's mean metrics.

  Randomness (dropout) comes from `fold_in(state.rng, state.step)`. With
  `axis_name` (under `pmap`) gradients, batch statistics and metrics are
  reduced across devices, and each device folds in its index so devices draw
  different dropout masks. (Under `jit` the key is the same everywhere and the
  masks are drawn for the global batch: with JAX's partitionable threefry they
  do not depend on the device count.)
  """
  rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

  def loss_and_aux(params):
    outputs, model_state = state.apply_fn(
      {"params": params, **state.model_state}, batch, train=True, rng=rng
    )
    sums, count = _weighted_sums(
      per_example(state.loss_fn, outputs, batch, params), batch, axis_name
    )
    # The local sum over the global count: summing gradients across devices
    # then gives the gradient of the global mean.
    return sums["loss"] / jnp.maximum(count, 1.0), (model_state, sums, count)

  grads, (model_state, sums, count) = jax.grad(loss_and_aux, has_aux=True)(state.params)
  model_state = {k: v for k, v in model_state.items() if k != FROZEN}
  if axis_name is not None:
    grads = jax.lax.psum(grads, axis_name)
    model_state = _pmean_floats(model_state, axis_name)
  if FROZEN in state.model_state:  # held fixed: the very arrays it came with
    model_state[FROZEN] = state.model_state[FROZEN]
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = _means(sums, count, axis_name)
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["param_norm"] = optax.tree.norm(params)  # non-finite if an update overflowed
  new_state = state.replace(
    step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
  )
  return new_state, metrics


def eval_step(
  state: TrainState, batch: Mapping[str, jax.Array], *, axis_name: str | None = None
) -> Metrics:
  """Mean metrics over the batch's real (unmasked) examples, plus their count."""
  rng = jax.random.fold_in(state.rng, state.step)
  outputs, _ = state.apply_fn(state.variables, batch, train=False, rng=rng)
  sums, count = _weighted_sums(
    per_example(state.loss_fn, outputs, batch, state.params), batch, axis_name
  )
  return _means(sums, count, axis_name)


def predict_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Any:
  """The model's outputs in inference mode (no dropout, running batch-norm statistics)."""
  outputs, _ = state.apply_fn(state.variables, batch, train=False, rng=state.rng)
  return outputs


def accumulate(totals: Metrics | None, metrics: Metrics) -> Metrics:
  """Adds a step's mean metrics, weighted by its count, to running totals.

  Runs on device (inside the loop's jitted step), so the loop never waits for
  a metric until it logs. `summarize` turns totals back into means.
  """
  count = metrics["count"]
  weighted = {k: v * count for k, v in metrics.items() if k != "count"}
  weighted["count"] = count
  if totals is None:
    return weighted
  return jax.tree.map(jnp.add, totals, weighted)


def summarize(totals: Mapping[str, Any]) -> dict[str, float]:
  """Host-side means from `accumulate`'s totals (one device-to-host fetch).

  Scalars become floats; vector metrics stay NumPy arrays (a task's
  `finalize` turns them into scalars such as F1 or ROC-AUC).
  """
  totals = jax.device_get(totals)
  count = float(totals["count"])
  means = {
    k: (float(v) if np.ndim(v) == 0 else np.asarray(v, np.float64)) / max(count, 1.0)
    for k, v in totals.items()
    if k != "count"
  }
  means["count"] = count
  return means

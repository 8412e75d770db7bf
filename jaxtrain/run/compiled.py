"""The pure steps as the loop runs them: compiled per layout, metrics summed on device.

`train_fn(layout, state, k)(state, totals, health, batch)` runs k training
steps in one dispatch (one `lax.scan` for k > 1), guards each against
non-finite values (nan_guard.py) and adds its metrics to running totals on
the device, so the loop never waits for a step. `evaluate` runs `eval_step`
over every example of a split.
"""

from __future__ import annotations

import functools

import jax

from jaxtrain.data import input_pipeline
from jaxtrain.run import nan_guard, parallel
from jaxtrain.steps import accumulate, eval_step, summarize, train_step


def _train_and_accumulate(state, totals, health, batch, axis_name=None):
  new_state, metrics = train_step(state, batch, axis_name=axis_name)
  state, metrics, health = nan_guard.guard(state, new_state, metrics, health)
  return state, accumulate(totals, metrics), health


def _train_many(state, totals, health, batches, axis_name=None):
  """`_train_and_accumulate` over k stacked batches in one program (`lax.scan`): one dispatch."""
  def body(carry, batch):
    return _train_and_accumulate(*carry, batch, axis_name=axis_name), None
  # XLA:CPU runs convolutions inside a loop body several times slower than
  # outside one (jax-ml/jax#12868: 9x for the MNIST CNN here), so on CPU the
  # k steps are unrolled; accelerators keep the loop (k times less to compile).
  unroll = jax.default_backend() == "cpu"
  (state, totals, health), _ = jax.lax.scan(body, (state, totals, health), batches, unroll=unroll)
  return state, totals, health


def _eval_and_accumulate(state, totals, batch, axis_name=None):
  return accumulate(totals, eval_step(state, batch, axis_name=axis_name))


@functools.cache
def eval_fn(layout: parallel.Layout):
  return layout.compile(_eval_and_accumulate, donate_argnums=(1,),
                        out_shardings=parallel.replicated(layout.mesh))


def train_fn(layout: parallel.Layout, state, steps_per_dispatch: int = 1):
  """The loop's step (or k steps) for `layout` and `state` (whose fsdp shardings it keeps)."""
  if not layout.fsdp:
    return _replicated_train_fn(layout, steps_per_dispatch)
  every = parallel.replicated(layout.mesh)
  return layout.compile(_train_and_accumulate if steps_per_dispatch == 1 else _train_many,
                        donate_argnums=(0, 1, 2),
                        out_shardings=(layout.state_shardings(state), every, every))


@functools.cache
def _replicated_train_fn(layout: parallel.Layout, steps_per_dispatch: int = 1):
  every = parallel.replicated(layout.mesh)
  return layout.compile(_train_and_accumulate if steps_per_dispatch == 1 else _train_many,
                        donate_argnums=(0, 1, 2), out_shardings=(every, every, every))


def evaluate(state, source, *, batch_size: int, layout: parallel.Layout,
             transform=input_pipeline.to_model_inputs, finalize=None) -> dict[str, float]:
  """Mean metrics over every example of `source` (padded last batch masked out).

  `state` is in the layout's step form (under pmap: a copy per device);
  `finalize` (a task's) turns per-class and histogram totals into scalars.
  """
  dataset = input_pipeline.eval_dataset(
      source, global_batch_size=batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), transform=transform)
  step_fn, totals = eval_fn(layout), None
  for local_batch in input_pipeline.iterate(dataset):
    batch = layout.put_batch(local_batch)
    if totals is None:
      totals = layout.zeros_like(jax.eval_shape(step_fn, state, None, batch))
    with jax.transfer_guard("disallow"):
      totals = step_fn(state, totals, batch)
  metrics = summarize(layout.fetch(totals))
  return finalize(metrics) if finalize else metrics


def without_count(metrics: dict) -> dict:
  """Metrics as reported: the example count as an int `num_examples`."""
  metrics = dict(metrics)
  metrics["num_examples"] = int(metrics.pop("count"))
  return metrics

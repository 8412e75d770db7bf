"""The pure steps as the loop runs them: compiled per layout, metrics summed on device.

`train_fn(layout, state, k)(state, totals, health, batch)` runs k training
steps in one dispatch (one `lax.scan` for k > 1), guards each against
non-finite values (nan_guard.py) and adds its metrics to running totals on
the device, so the loop never waits for a step. `gathering_train_fn` does
the same for a split held on the devices, each step gathering its own batch
(feeds.DeviceFeed). `evaluate` runs `eval_step` over every example of a split.

Every loop that dispatches programs keeps at most `MAX_IN_FLIGHT` of them
unfinished (`InFlight`): on XLA:CPU an unbounded queue deadlocks a
multi-device run (see `InFlight`), and on any backend it bounds memory and
how long a stop waits for the steps already queued.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.data import input_pipeline
from jaxtrain.run import nan_guard, parallel
from jaxtrain.steps import accumulate, eval_step, summarize, train_step


# XLA:CPU runs the per-device parts of every program on one pool of max(cores, devices)
# threads, and admits 32 programs per device in flight: the launch of the 33rd waits for a
# slot *on a pool thread*. With the host 32 dispatches ahead, that waiting launch can hold
# the thread that the last device's part of the oldest program needs, while the other
# devices' parts hold theirs waiting for it in an all-reduce: nothing moves again. Seen
# with 2 to 8 simulated devices (gdb: 8 pool threads = 7 parts in the rendezvous + 1 launch
# waiting on device 7's slots; experiments/dispatch_deadlock.py hangs at 32 in flight and
# never at 31). Keeping at most MAX_IN_FLIGHT dispatches unfinished leaves the slots free.
MAX_IN_FLIGHT = 8


class InFlight:
  """At most `limit` dispatched programs unfinished: `add(output)` after each dispatch.

  `output` is one of the dispatch's results that no later dispatch donates
  (waiting on a donated buffer fails). Once more than `limit` are held the
  oldest is waited for: the host stays up to `limit` programs ahead of the
  devices, which keeps them busy, and never further.
  """

  def __init__(self, limit: int = MAX_IN_FLIGHT):
    self.limit, self._outputs = limit, collections.deque()

  def add(self, output) -> None:
    self._outputs.append(output)
    if len(self._outputs) > self.limit:
      jax.block_until_ready(self._outputs.popleft())


def _train_and_accumulate(
  state, totals, health, batch, *, keep_finite: bool = True, axis_name=None
):
  new_state, metrics = train_step(state, batch, axis_name=axis_name)
  state, metrics, record = nan_guard.guard(
    state, new_state, metrics, nan_guard.as_dict(health), keep_finite=keep_finite
  )
  health = record if isinstance(health, dict) else nan_guard.as_vector(record)
  if totals is not None and not isinstance(totals, dict):  # packed (see pack_totals)
    return state, totals + _flat(accumulate(None, metrics)), health
  return state, accumulate(totals, metrics), health


# The loop carries its metric totals as one float32 vector when every total is
# float32 (the usual case): a step's dispatch costs per argument and result
# buffer, and for a small model a dozen scalars cost as much as its compute.
# The sums are the same additions, so the same bits.


def _flat(metrics):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(metrics)])


def packable(total_shapes) -> bool:
  return all(s.dtype == jnp.float32 for s in jax.tree.leaves(total_shapes))


def unpack_totals(totals, total_shapes) -> dict:
  """Host-side: the totals by name (a packed vector split in `total_shapes`' leaf order)."""
  if isinstance(totals, dict):
    return totals
  values = np.asarray(totals)
  leaves, treedef = jax.tree.flatten(total_shapes)
  out, at = [], 0
  for leaf in leaves:
    size = int(np.prod(leaf.shape, dtype=np.int64))
    out.append(values[at : at + size].reshape(leaf.shape))
    at += size
  return jax.tree.unflatten(treedef, out)


def _train_many(state, totals, health, batches, *, keep_finite: bool = True, axis_name=None):
  """`_train_and_accumulate` over k stacked batches in one program (`lax.scan`): one dispatch."""

  def body(carry, batch):
    return _train_and_accumulate(*carry, batch, keep_finite=keep_finite, axis_name=axis_name), None

  carry = (state, totals, health)
  (state, totals, health), _ = jax.lax.scan(
    body, carry, batches, unroll=_unroll(body, carry, jax.tree.map(lambda x: x[0], batches))
  )
  return state, totals, health


def _unroll(body, carry, x) -> bool:
  """Whether to unroll a scan of `body`: on CPU, where it convolves.

  XLA:CPU runs convolutions inside a loop body several times slower than
  outside one (jax-ml/jax#12868: 9x for the MNIST CNN here), so there the k
  steps are unrolled; anything else keeps the loop, which compiles in the
  time of one step (an unrolled MLP of 32 steps takes 13x longer, and runs slower).
  """
  if jax.default_backend() != "cpu":
    return False
  return "conv_general_dilated" in str(jax.make_jaxpr(body)(carry, x))


def groups_bit_exactly(state, totals, health, batch) -> bool:
  """Whether k steps in one program give the bits of k one-step dispatches.

  Not where `_unroll` unrolls (XLA:CPU convolutions): the unrolled steps were
  measured to differ from single steps in the last bits (a CNN, k = 2, 10, 50:
  four digests), so an automatic k there would make a run's bits depend on the
  k it picked. A rolled loop gave single steps' bits (tests/test_feeds.py).
  """
  body = lambda carry, b: (_train_and_accumulate(*carry, b), None)
  return not _unroll(body, (state, totals, health), batch)


def _gather(arrays, window, step, batch_size: int):
  """Global step `step`'s batch from the split on the device (feeds.DeviceFeed's window)."""
  orders = window["orders"]
  num_examples = next(iter(arrays.values())).shape[0]
  per_epoch = num_examples // batch_size
  epoch, position = step // per_epoch, step % per_epoch
  start = (epoch - window["first_epoch"]) * num_examples + position * batch_size
  rows = jax.lax.dynamic_slice(orders, (start,), (batch_size,))
  return jax.tree.map(lambda a: a[rows], arrays)


def _gather_and_train(
  state,
  totals,
  health,
  cursor,
  arrays,
  window,
  *,
  k: int,
  batch_size: int,
  keep_finite: bool = True,
  sharding=None,
  axis_name=None,
):
  """k steps from global step `cursor`, each gathering its own batch: no input from the host."""

  def one(carry, i):
    batch = _gather(arrays, window, cursor + i, batch_size)
    if sharding is not None:  # the batch is split over the devices like a fed one
      batch = jax.lax.with_sharding_constraint(batch, sharding)
    return _train_and_accumulate(*carry, batch, keep_finite=keep_finite, axis_name=axis_name), None

  if k == 1:
    (state, totals, health), _ = one((state, totals, health), 0)
  else:
    carry = (state, totals, health)
    (state, totals, health), _ = jax.lax.scan(
      one, carry, np.arange(k), unroll=_unroll(one, carry, 0)
    )
  return state, totals, health, cursor + k


def _eval_and_accumulate(state, totals, batch, axis_name=None):
  return accumulate(totals, eval_step(state, batch, axis_name=axis_name))


@functools.cache
def eval_fn(layout: parallel.Layout):
  # The totals are not donated: `evaluate` waits on earlier ones (InFlight).
  return layout.compile(_eval_and_accumulate, out_shardings=parallel.replicated(layout.mesh))


def train_fn(
  layout: parallel.Layout, state, steps_per_dispatch: int = 1, *, keep_finite: bool = True
):
  """The loop's step (or k steps) for `layout` and `state` (whose fsdp shardings it keeps).

  The state and totals are donated; the NaN guard's `health` is not, so the
  feeds can wait on an earlier dispatch's (InFlight).
  `keep_finite` (nan_policy "skip"): a step with non-finite metrics leaves the
  state as it was. Without it (nan_policy "halt") the step's result is kept
  whatever it is: the run halts at its next log, evaluation or save, before
  anything reads the state, and the selection would cost as much as a small
  model's step.
  """
  if not layout.fsdp:
    return _replicated_train_fn(layout, steps_per_dispatch, keep_finite)
  every = parallel.replicated(layout.mesh)
  return layout.compile(
    _train_fn(steps_per_dispatch, keep_finite),
    donate_argnums=(0, 1),
    out_shardings=(layout.state_shardings(state), every, every),
  )


def _train_fn(steps_per_dispatch: int, keep_finite: bool):
  return functools.partial(
    _train_and_accumulate if steps_per_dispatch == 1 else _train_many, keep_finite=keep_finite
  )


@functools.cache
def _replicated_train_fn(layout: parallel.Layout, steps_per_dispatch: int, keep_finite: bool):
  every = parallel.replicated(layout.mesh)
  return layout.compile(
    _train_fn(steps_per_dispatch, keep_finite),
    donate_argnums=(0, 1),
    out_shardings=(every, every, every),
  )


@functools.cache
def gathering_train_fn(
  layout: parallel.Layout, steps_per_dispatch: int, batch_size: int, keep_finite: bool = True
):
  """`(state, totals, health, cursor, arrays, window) -> (..., cursor + k)` for `DeviceFeed`."""
  assert layout.mode == "jit" and not layout.fsdp, layout
  every = parallel.replicated(layout.mesh)
  sharding = parallel.data_sharded(layout.mesh) if layout.num_devices > 1 else None
  fn = functools.partial(
    _gather_and_train,
    k=steps_per_dispatch,
    batch_size=batch_size,
    keep_finite=keep_finite,
    sharding=sharding,
  )
  return layout.compile(fn, donate_argnums=(0, 1, 3), out_shardings=(every,) * 4)


def evaluate(
  state,
  source,
  *,
  batch_size: int,
  layout: parallel.Layout,
  transform=input_pipeline.to_model_inputs,
  finalize=None,
  between_batches=None,
) -> dict[str, float]:
  """Mean metrics over every example of `source` (padded last batch masked out).

  `state` is in the layout's step form (under pmap: a copy per device);
  `finalize` (a task's) turns per-class and histogram totals into scalars;
  `between_batches()` is called after each batch (the final test: a stop signal).
  """
  dataset = input_pipeline.eval_dataset(
    source,
    global_batch_size=batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    transform=transform,
  )
  step_fn, totals, in_flight = eval_fn(layout), None, InFlight()
  for local_batch in input_pipeline.iterate(dataset):
    batch = layout.put_batch(local_batch)
    if totals is None:
      totals = layout.zeros_like(jax.eval_shape(step_fn, state, None, batch))
    with jax.transfer_guard("disallow"):
      totals = step_fn(state, totals, batch)
    in_flight.add(totals)
    if between_batches is not None:
      between_batches()
  metrics = summarize(layout.fetch(totals))
  return finalize(metrics) if finalize else metrics


def without_count(metrics: dict) -> dict:
  """Metrics as reported: the example count as an int `num_examples`."""
  metrics = dict(metrics)
  metrics["num_examples"] = int(metrics.pop("count"))
  return metrics

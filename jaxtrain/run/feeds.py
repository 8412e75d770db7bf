"""How the training batches reach the step: fed from the host, or gathered on the devices.

Both give global step g the same batch (input_pipeline.py's contract: rows
[g*B, (g+1)*B) of epoch g // steps_per_epoch's permutation), so a run's
bits do not depend on which one it used, and a checkpoint holds the same
data position (`{"next_index": ...}`) from either.

`HostFeed`: each dispatch takes the next batch from the Grain pipeline,
already copied to the devices by `DevicePrefetch`. Any split, any layout.

`DeviceFeed`: a training split whose model inputs fit in
`config.dataset.device_cache_max_mb` is placed on the devices once, with
the permutations of the epochs in flight; the compiled step gathers its own
batch there from a step counter it carries. The host does nothing per step
but dispatch: no iterator, no copy, no transfer. For small models this
host work, not the device, sets the speed. One process, `jit` layout.

`dispatch(loop, k)` runs k steps from `loop.step`. k comes from a pace:
`steps_per_dispatch` itself, or with `steps_per_dispatch=0` ("auto") an
`AutoPace`, which measures one-step dispatches at the start and then
dispatches as many steps at once as make a few milliseconds of work, on the
multiples of every cadence (logging, evaluation, checkpoints, hooks), so
they stay exact. k steps in one dispatch give the bits of k dispatches.
"""

from __future__ import annotations

import json
import logging
import math
import time

import jax
import numpy as np

from jaxtrain.data import input_pipeline
from jaxtrain.run import compiled, parallel

log = logging.getLogger("jaxtrain")


_WINDOW_STEPS = 1024  # DeviceFeed holds the orders of the epochs of at least this many steps,
_WINDOW_BYTES = 16 << 20  # ... in at most this much memory (more only where k needs it)


class HostFeed:
  """Batches from the host pipeline (`DevicePrefetch` over Grain), k fixed per run."""

  def __init__(
    self, iterator, layout: parallel.Layout, steps_per_dispatch: int, *, keep_finite: bool = True
  ):
    self.iterator, self.layout, self.k = iterator, layout, steps_per_dispatch
    self.keep_finite = keep_finite
    self.in_flight = compiled.InFlight()

  def dispatch(self, loop, k: int) -> None:
    assert k == self.k, (k, self.k)  # the iterator's grouping is fixed when it is built
    t_data = time.perf_counter()
    batch = next(self.iterator)
    loop.data_wait += time.perf_counter() - t_data
    step_fn = compiled.train_fn(self.layout, loop.state, k, keep_finite=self.keep_finite)
    with jax.transfer_guard("disallow"):
      loop.state, loop.totals, loop.health = step_fn(loop.state, loop.totals, loop.health, batch)
    self.in_flight.add(loop.health)

  def get_state(self) -> bytes:
    return self.iterator.get_state()

  def set_state(self, state: bytes) -> None:
    self.iterator.set_state(state)

  def start_prefetch(self) -> None:
    self.iterator.start_prefetch()


class DeviceFeed:
  """The transformed training split on the devices; each step gathers its batch there.

  `position_unit`: the steps one unit of the checkpointed `next_index` stands
  for (a host pipeline grouped by k counts groups), so either feed resumes
  the other's checkpoints.
  """

  def __init__(
    self,
    arrays: dict[str, np.ndarray],
    layout: parallel.Layout,
    *,
    batch_size: int,
    seed: int,
    position_unit: int = 1,
    keep_finite: bool = True,
  ):
    self.layout, self.batch_size, self.seed, self.unit = layout, batch_size, seed, position_unit
    self.keep_finite = keep_finite
    self.num_examples = len(next(iter(arrays.values())))
    self.steps_per_epoch = input_pipeline.steps_per_epoch(self.num_examples, batch_size)
    self.arrays = layout.put_replicated(arrays)
    self.step = 0  # the next step's global index, on the host
    self._cursor = None  # the same, on the device (the step carries it)
    self._window = None  # (first epoch, number of epochs, their orders on the device)
    self._guarded: set[int] = set()  # the k whose program ran under the transfer guard
    self.in_flight = compiled.InFlight()

  def _epochs_held(self, k: int) -> int:
    # Steps s .. s+k-1 span at most ceil(k / steps_per_epoch) + 1 epochs wherever s
    # falls; holding those of at least _WINDOW_STEPS steps makes a refresh rare, as
    # far as _WINDOW_BYTES of orders allow.
    needed = math.ceil(k / self.steps_per_epoch) + 1
    ample = math.ceil(_WINDOW_STEPS / self.steps_per_epoch) + 1
    affordable = _WINDOW_BYTES // (4 * self.num_examples)
    return max(needed, min(ample, affordable))

  def _orders(self, k: int):
    """The window of epoch orders that steps `self.step` .. + k - 1 read, refreshed as needed."""
    count = self._epochs_held(k)
    first, last = self.step // self.steps_per_epoch, (self.step + k - 1) // self.steps_per_epoch
    held = self._window
    if held is None or held[1] != count or not held[0] <= first <= last < held[0] + count:
      orders = np.concatenate(
        [
          input_pipeline.epoch_order(self.seed, e, self.num_examples)
          for e in range(first, first + count)
        ]
      ).astype(np.int32)
      self._window = (
        first,
        count,
        self.layout.put_replicated({"first_epoch": np.int32(first), "orders": orders}),
      )
    return self._window[2]

  def dispatch(self, loop, k: int) -> None:
    if self._cursor is None:
      self._cursor = self.layout.put_replicated(np.int32(self.step))
    window = self._orders(k)
    step_fn = compiled.gathering_train_fn(self.layout, k, self.batch_size, self.keep_finite)
    args = (loop.state, loop.totals, loop.health, self._cursor, self.arrays, window)
    if k in self._guarded:
      loop.state, loop.totals, loop.health, self._cursor = step_fn(*args)
    else:  # every argument is already on the devices; the guard proves it once per program
      with jax.transfer_guard("disallow"):
        loop.state, loop.totals, loop.health, self._cursor = step_fn(*args)
      self._guarded.add(k)
    self.in_flight.add(loop.health)
    self.step += k

  def groups_bit_exactly(self, loop) -> bool:
    """Whether k steps per dispatch keep one-step dispatches' bits (compiled.groups_bit_exactly)."""
    batch = jax.tree.map(lambda a: a[: self.batch_size], self.arrays)
    return compiled.groups_bit_exactly(loop.state, loop.totals, loop.health, batch)

  # Grain's checkpoint handler saves and restores the position through these.
  def get_state(self) -> bytes:
    return json.dumps({"next_index": self.step // self.unit}).encode()

  def set_state(self, state: bytes) -> None:
    self.step, self._cursor = json.loads(state)["next_index"] * self.unit, None

  def start_prefetch(self) -> None:
    pass


class FixedPace:
  """`steps_per_dispatch=k`: k steps in every dispatch."""

  def __init__(self, k: int):
    self.k = k

  def __call__(self, loop) -> int:
    return self.k


class AutoPace:
  """`steps_per_dispatch="auto"`: k from the measured time of a one-step dispatch.

  The first dispatch compiles (its time estimates what compiling a k-step
  program costs); the next `measure` are timed. If a step takes less than
  `target_s`, k is the largest divisor of `cadence` (the gcd of every cadence
  and of the run's end) with k * step time <= `target_s`, at most `max_k`,
  and only if the steps left would save more than that compile costs. Until
  `loop.step` is a multiple of k, steps go one at a time. k stays 1 where
  grouping would change the bits (a convolution on CPU: `groups_bit_exactly`),
  since k comes from a clock and the bits must not.
  """

  def __init__(self, cadence: int, *, target_s: float = 0.004, max_k: int = 128, measure: int = 20):
    self.cadence, self.target_s, self.max_k, self.measure = cadence, target_s, max_k, measure
    self.k = None  # decided
    self.step_seconds = None  # the measured time of one step, one per dispatch
    self._calls, self._t0, self._compile_s = 0, None, 0.0

  def __call__(self, loop) -> int:
    if self.k is None:
      self._calls += 1
      now = time.perf_counter()
      if self._calls == 1:
        self._t0 = now
      elif self._calls == 2:  # the loop waited for the first step
        self._compile_s, self._t0 = now - self._t0, now
      elif self._calls == self.measure + 2:
        jax.block_until_ready(loop.totals)
        self.step_seconds = (time.perf_counter() - self._t0) / self.measure
        check = getattr(getattr(loop, "train_iter", None), "groups_bit_exactly", None)
        exact = check is None or check(loop)
        self.k = self.choose(self.step_seconds, loop.last_step - loop.step) if exact else 1
        log.info(
          "steps_per_dispatch=auto: a step takes %.3g ms; %d per dispatch",
          1e3 * self.step_seconds,
          self.k,
        )
      if self.k is None:
        return 1
    return self.k if loop.step % self.k == 0 else 1

  def choose(self, step_seconds: float, steps_left: int) -> int:
    want = min(self.max_k, int(self.target_s / step_seconds))
    k = max((d for d in range(1, want + 1) if self.cadence % d == 0), default=1)
    # Worth a compile only if the steps left would gain more than it costs, taking
    # (conservatively) a k-step dispatch to halve the time per step.
    return k if k > 1 and steps_left * step_seconds / 2 > self._compile_s else 1


def pace_for(steps_per_dispatch: int, feed, cadences) -> FixedPace | AutoPace:
  """The pace of `config.steps_per_dispatch` (0 = auto) for this feed and these cadences."""
  if steps_per_dispatch:
    return FixedPace(steps_per_dispatch)
  if not isinstance(feed, DeviceFeed):  # a host pipeline is grouped by a fixed k when built
    return FixedPace(1)
  return AutoPace(math.gcd(*[c for c in cadences if c and c > 1]) or 1)


def fits_on_device(source, transform, max_bytes: int, layout: parallel.Layout) -> dict | None:
  """The split's model inputs as arrays, if it is held in memory and they take <= `max_bytes`.

  The transform is applied to the whole split at once: it works example by
  example (preprocess.py), so the rows are those a batch would get.
  """
  if (
    max_bytes <= 0
    or layout.mode != "jit"
    or layout.fsdp
    or jax.process_count() > 1
    or not isinstance(source, input_pipeline.InMemorySource)
  ):
    return None
  raw = sum(v.nbytes for v in source.arrays.values())
  if raw > max_bytes:  # before transforming: floats take at most 4x a uint8 image
    return None
  arrays = transform(source.arrays)
  if sum(np.asarray(v).nbytes for v in arrays.values()) > max_bytes:
    return None
  return {k: np.asarray(v) for k, v in arrays.items()}

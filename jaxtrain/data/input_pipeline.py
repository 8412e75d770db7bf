"""Grain pipelines: the data order is a pure function of (seed, epoch, step, process).

Training: each epoch is a fresh permutation of the split, drawn from
(seed, epoch) by NumPy; global batch g takes positions
[g*B, (g+1)*B) of its epoch, dropping the remainder; process p reads rows
[p*L, (p+1)*L) of it, L = B / process_count. So the global batch is the same
whatever the number of processes, and element g of the pipeline is global
step g: the iterator's checkpointed state is just the next step.

Evaluation: every example exactly once, the last batch padded and masked.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import sys
from typing import Callable, Iterator, Mapping

import grain
import numpy as np

from jaxtrain.errors import UserError

Batch = dict[str, np.ndarray]


def to_model_inputs(batch: Mapping[str, np.ndarray]) -> Batch:
  """uint8 images to float32 in [0, 1]; every other feature unchanged."""
  batch = dict(batch)
  if "image" in batch and batch["image"].dtype == np.uint8:
    batch["image"] = batch["image"].astype(np.float32) * np.float32(1 / 255)
  return batch


class InMemorySource:
  """A split decoded once into one array per feature; a batch is a fancy index.

  Decoding TFDS records costs about as much per example as a small model's
  step: for splits that fit in memory, `cached` pays it once instead of every
  epoch, with the same examples at the same indices (so the same bits).
  """

  def __init__(self, source, chunk: int = 1024):
    columns: dict[str, list] = {}
    for start in range(0, len(source), chunk):
      part = _read(source, range(start, min(start + chunk, len(source))))
      for k, v in part.items():
        columns.setdefault(k, []).append(v)
    self.arrays = {k: np.concatenate(v) for k, v in columns.items()}
    self._length = len(source)

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, i):
    return {k: v[int(i)] for k, v in self.arrays.items()}

  def read_batch(self, indices) -> Batch:
    indices = np.asarray(indices, np.int64)
    return {k: v[indices] for k, v in self.arrays.items()}


def cached(source, max_bytes: int):
  """`source` in memory (an InMemorySource) if its decoded size is at most `max_bytes`."""
  if max_bytes <= 0 or len(source) == 0:
    return source
  example = source[0]
  size = sum(np.asarray(v).nbytes for v in example.values()) * len(source)
  return InMemorySource(source) if size <= max_bytes else source


def _read(source, indices) -> Batch:
  """One stacked batch of examples (a single batched read where the source has one)."""
  if hasattr(source, "read_batch"):
    return source.read_batch(indices)
  indices = [int(i) for i in indices]
  if hasattr(source, "__getitems__"):
    examples = source.__getitems__(indices)
  else:
    examples = [source[i] for i in indices]
  return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise UserError(
      f"batch_size={global_batch_size} is not divisible by the process count {process_count}"
    )
  return global_batch_size // process_count


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  steps = num_examples // global_batch_size
  if steps == 0:
    raise UserError(
      f"batch_size={global_batch_size} is larger than the training split ({num_examples} examples)"
    )
  return steps


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of the examples in training epoch `epoch`: a function of (seed, epoch) alone."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_dataset(
  source,
  *,
  global_batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  transform: Callable[[Batch], Batch] = to_model_inputs,
) -> grain.MapDataset:
  """An endless MapDataset whose element g is this process's share of global batch g."""
  n = len(source)
  local = local_batch_size(global_batch_size, process_count)
  per_epoch = steps_per_epoch(n, global_batch_size)

  def batch_at(step: int) -> Batch:
    epoch, b = divmod(step, per_epoch)
    start = b * global_batch_size + process_index * local
    return transform(_read(source, order(epoch)[start : start + local]))

  @functools.lru_cache(maxsize=2)
  def order(epoch: int) -> np.ndarray:
    # One vectorised draw per epoch, so a step costs no per-example lookups.
    return epoch_order(seed, epoch, n)

  return grain.MapDataset.range(sys.maxsize).map(batch_at)


def grouped(dataset: grain.MapDataset, k: int) -> grain.MapDataset:
  """Element g holds elements g*k .. g*k+k-1 stacked on a new leading axis (steps per dispatch)."""

  def group(g: int) -> Batch:
    batches = [dataset[g * k + i] for i in range(k)]
    return {key: np.stack([b[key] for b in batches]) for key in batches[0]}

  return grain.MapDataset.range(sys.maxsize // k).map(group)


def eval_dataset(
  source,
  *,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  transform: Callable[[Batch], Batch] = to_model_inputs,
) -> grain.MapDataset:
  """Finite batches covering each example once; padding rows have mask 0."""
  n = len(source)
  if n == 0:
    raise UserError("the evaluation split is empty")
  local = local_batch_size(global_batch_size, process_count)

  def batch_at(b: int) -> Batch:
    positions = b * global_batch_size + process_index * local + np.arange(local)
    real = positions < n
    batch = transform(_read(source, np.where(real, positions, 0)))
    batch["mask"] = real.astype(np.float32)
    return batch

  return grain.MapDataset.range(math.ceil(n / global_batch_size)).map(batch_at)


def iterate(dataset: grain.MapDataset, prefetch: int = 2) -> Iterator[Batch]:
  """A checkpointable iterator that reads `prefetch` batches ahead on threads."""
  options = grain.ReadOptions(num_threads=max(prefetch, 1), prefetch_buffer_size=prefetch)
  return iter(dataset.to_iter_dataset(options))


class DevicePrefetch:
  """Keeps `size` batches already placed on the devices ahead of the step.

  `put` starts each batch's host-to-device copy (asynchronously) while earlier
  steps run. The position it checkpoints is the consumer's, not the
  reader's: `get_state` is the state of `iterator` just before the next batch
  the loop has not yet taken, so a restore sees exactly the batches an
  uninterrupted run would have. Orbax saves it through Grain's handler.
  """

  def __init__(self, iterator, put: Callable, size: int = 2):
    self._iterator, self._put, self._size = iterator, put, max(size, 0)
    self._queue: collections.deque = collections.deque()

  def __iter__(self):
    return self

  def __next__(self):
    while len(self._queue) <= self._size:
      state = self._iterator.get_state()
      self._queue.append((state, self._put(next(self._iterator))))
    return self._queue.popleft()[1]

  def get_state(self) -> bytes:
    state = self._queue[0][0] if self._queue else self._iterator.get_state()
    return json.dumps(state).encode()

  def set_state(self, state: bytes) -> None:
    self._queue.clear()
    self._iterator.set_state(json.loads(state))

  def start_prefetch(self) -> None:
    """Grain's checkpoint handler calls this after a restore; reading starts on demand."""

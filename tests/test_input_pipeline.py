"""The data order: a pure function of (seed, epoch, step, process), and exact eval coverage."""

import numpy as np
import pytest

from jaxtrain.data import input_pipeline
from jaxtrain.errors import UserError


class Numbers:
  """A random-access source whose example i carries i, so orders can be read back."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"id": np.int64(i), "image": np.full((2, 2, 1), i % 256, np.uint8)}


def _ids(dataset, steps):
  return [dataset[g]["id"].tolist() for g in range(steps)]


def test_each_epoch_is_a_new_permutation_with_the_remainder_dropped():
  ds = input_pipeline.train_dataset(Numbers(23), global_batch_size=5, seed=7)
  batches = _ids(ds, 12)  # 4 steps an epoch (3 examples dropped), 3 epochs
  epochs = [sum(batches[4 * e : 4 * e + 4], []) for e in range(3)]
  for epoch in epochs:
    assert len(epoch) == 20 and len(set(epoch)) == 20 and set(epoch) <= set(range(23))
  assert epochs[0] != epochs[1] != epochs[2]
  assert ds[0]["image"].dtype == np.float32 and ds[0]["image"].max() <= 1.0


def test_order_depends_on_seed_only():
  a = _ids(input_pipeline.train_dataset(Numbers(50), global_batch_size=10, seed=1), 10)
  b = _ids(input_pipeline.train_dataset(Numbers(50), global_batch_size=10, seed=1), 10)
  c = _ids(input_pipeline.train_dataset(Numbers(50), global_batch_size=10, seed=2), 10)
  assert a == b and a != c


def test_processes_split_each_global_batch_in_order():
  one = input_pipeline.train_dataset(Numbers(40), global_batch_size=8, seed=3)
  parts = [
    input_pipeline.train_dataset(
      Numbers(40), global_batch_size=8, seed=3, process_index=p, process_count=4
    )
    for p in range(4)
  ]
  for g in range(12):
    assert sum((part[g]["id"].tolist() for part in parts), []) == one[g]["id"].tolist()


def test_iterator_state_resumes_the_same_stream():
  ds = input_pipeline.train_dataset(Numbers(30), global_batch_size=4, seed=0)
  it = input_pipeline.iterate(ds)
  for _ in range(9):
    next(it)
  state = it.get_state()
  expected = [next(it)["id"].tolist() for _ in range(5)]
  fresh = input_pipeline.iterate(ds)
  fresh.set_state(state)
  assert [next(fresh)["id"].tolist() for _ in range(5)] == expected
  assert expected == _ids(ds, 14)[9:]


@pytest.mark.parametrize("size", [0, 1, 3])
def test_device_prefetch_checkpoints_the_consumers_position(size):
  """Batches read ahead onto the device are not lost or skipped by a save/restore."""
  from jaxtrain.run import parallel

  layout = parallel.Layout(parallel.make_mesh())
  ds = input_pipeline.train_dataset(Numbers(30), global_batch_size=4, seed=0)
  it = input_pipeline.DevicePrefetch(input_pipeline.iterate(ds), layout.put_batch, size)
  taken = [np.asarray(next(it)["id"]).tolist() for _ in range(6)]
  assert taken == _ids(ds, 6)
  state = it.get_state()  # what Grain's checkpoint handler saves
  expected = [np.asarray(next(it)["id"]).tolist() for _ in range(4)]
  fresh = input_pipeline.DevicePrefetch(input_pipeline.iterate(ds), layout.put_batch, size)
  fresh.set_state(state)
  assert [np.asarray(next(fresh)["id"]).tolist() for _ in range(4)] == expected == _ids(ds, 10)[6:]


@pytest.mark.parametrize("processes", [1, 2])
def test_eval_covers_every_example_once_with_padding_masked(processes):
  seen = []
  for p in range(processes):
    ds = input_pipeline.eval_dataset(
      Numbers(23), global_batch_size=10, process_index=p, process_count=processes
    )
    for batch in input_pipeline.iterate(ds):
      assert batch["id"].shape == (10 // processes,)
      seen += batch["id"][batch["mask"] == 1].tolist()
      assert batch["mask"].sum() <= len(batch["mask"])
  assert sorted(seen) == list(range(23))


def test_batch_size_errors_name_both_numbers():
  with pytest.raises(UserError, match="batch_size=10 is not divisible by the process count 3"):
    input_pipeline.train_dataset(Numbers(40), global_batch_size=10, seed=0, process_count=3)
  with pytest.raises(
    UserError, match=r"batch_size=64 is larger than the training split \(40 examples\)"
  ):
    input_pipeline.train_dataset(Numbers(40), global_batch_size=64, seed=0)


def test_a_split_held_in_memory_gives_the_same_batches():
  source = Numbers(57)
  held = input_pipeline.cached(source, 1 << 20)
  assert isinstance(held, input_pipeline.InMemorySource) and len(held) == 57
  assert input_pipeline.cached(source, 100) is source  # too big for the limit: read as it is
  for make in (
    lambda s: input_pipeline.train_dataset(s, global_batch_size=8, seed=4),
    lambda s: input_pipeline.eval_dataset(s, global_batch_size=8),
  ):
    plain, fast = make(source), make(held)
    for g in range(8):
      assert all(np.array_equal(plain[g][k], fast[g][k]) for k in plain[g])

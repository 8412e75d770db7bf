"""TFDS builders on real files: embedded digits, IDX directories, standard names."""

import gzip
import shutil

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxtrain.data import datasets
from jaxtrain.errors import UserError
from conftest import require_mnist


def _dataset(data_dir, **fields):
  return ConfigDict({"name": "digits", "path": "", "data_dir": data_dir, **fields})


def test_digits_are_the_real_sklearn_digits_in_a_fixed_split(data_dir):
  from sklearn.datasets import load_digits

  builder = datasets.get_builder(_dataset(data_dir))
  train = datasets.get_source(builder, "train")
  test = datasets.get_source(builder, "test")
  assert (len(train), len(test)) == (1437, 360)
  # Every original image appears exactly once across the two splits, pixels scaled to 0..255.
  originals = load_digits()
  got = sorted(train[i]["image"].tobytes() + bytes([train[i]["label"]]) for i in range(len(train)))
  got += sorted(test[i]["image"].tobytes() + bytes([test[i]["label"]]) for i in range(len(test)))
  expected = np.round(originals.images * (255 / 16)).astype(np.uint8)[..., None]
  want = [expected[i].tobytes() + bytes([originals.target[i]]) for i in range(len(expected))]
  assert sorted(got) == sorted(want)
  assert train[0]["image"].shape == (8, 8, 1) and train[0]["image"].dtype == np.uint8


def test_split_slicing(data_dir):
  builder = datasets.get_builder(_dataset(data_dir))
  head, tail = (datasets.get_source(builder, s) for s in ("train[:90%]", "train[90%:]"))
  assert len(head) + len(tail) == 1437 and len(tail) == 144
  whole = datasets.get_source(builder, "train")
  assert np.array_equal(tail[0]["image"], whole[len(head)]["image"])


def test_idx_directory_reads_real_mnist(tmp_path):
  mnist = require_mnist()
  builder = datasets.get_builder(_dataset(str(tmp_path), name="mnist", path=str(mnist)))
  test = datasets.get_source(builder, "test")
  assert len(test) == 10_000
  labels = datasets.read_idx(mnist / "t10k-labels-idx1-ubyte.gz")
  images = datasets.read_idx(mnist / "t10k-images-idx3-ubyte.gz")
  assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the published first t10k labels
  assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  # The prepared split keeps the file's order, so test[8000:] is the last 2,000.
  tail = datasets.get_source(builder, "test[8000:]")
  assert np.array_equal(tail[0]["image"][..., 0], images[8000])
  assert tail[1999]["label"] == labels[9999]


def test_changed_files_are_a_new_dataset(tmp_path):
  mnist = require_mnist()
  src = tmp_path / "src"
  src.mkdir()
  for f in mnist.glob("t10k-*"):
    shutil.copy(f, src / f.name)
  a = datasets.get_builder(_dataset(str(tmp_path / "dd"), path=str(src)))
  labels = datasets.read_idx(src / "t10k-labels-idx1-ubyte.gz").copy()
  labels[0] = 3
  with gzip.open(src / "t10k-labels-idx1-ubyte.gz", "wb") as f:
    f.write(bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big") + labels.tobytes())
  b = datasets.get_builder(_dataset(str(tmp_path / "dd"), path=str(src)))
  assert a.data_dir != b.data_dir
  assert datasets.get_source(b, "test")[0]["label"] == 3
  assert datasets.get_source(a, "test")[0]["label"] == 7


def _write_idx(path, magic, dims, payload):
  path.write_bytes(bytes(magic) + b"".join(d.to_bytes(4, "big") for d in dims) + payload)


@pytest.mark.parametrize(
  "case, message",
  [
    ("truncated", "is truncated or padded: header says shape (3, 2, 2)"),
    ("bad_magic", "is not an IDX file"),
    ("no_labels", "split 'test' has no labels file"),
    ("empty_dir", "holds no IDX files"),
  ],
)
def test_bad_idx_files_name_the_file(tmp_path, case, message):
  src = tmp_path / "src"
  src.mkdir()
  images = src / "t10k-images-idx3-ubyte"
  labels = src / "t10k-labels-idx1-ubyte"
  if case == "truncated":
    _write_idx(images, [0, 0, 8, 3], [3, 2, 2], bytes(10))
    _write_idx(labels, [0, 0, 8, 1], [3], bytes(3))
  elif case == "bad_magic":
    _write_idx(images, [0, 0, 8, 3], [3, 2, 2], bytes(12))
    _write_idx(labels, [7, 7, 7, 7], [3], bytes(3))
  elif case == "no_labels":
    _write_idx(images, [0, 0, 8, 3], [3, 2, 2], bytes(12))
  with pytest.raises(UserError) as info:
    datasets.get_builder(_dataset(str(tmp_path / "dd"), path=str(src)))
  assert message in str(info.value)
  if case in ("truncated", "bad_magic"):
    assert str(src) in str(info.value)
  # Nothing half-written is left where a later run would take it for data.
  assert not list((tmp_path / "dd").glob("idx_images/*/1.*"))


def test_missing_path_and_unprepared_tfds_dataset(tmp_path):
  with pytest.raises(UserError, match=r"dataset.path=/no/such/dir is not a directory"):
    datasets.get_builder(_dataset(str(tmp_path), path="/no/such/dir"))
  with pytest.raises(UserError) as info:
    datasets.get_builder(_dataset(str(tmp_path), name="mnist"))
  assert f"dataset 'mnist' is not prepared in {tmp_path}" in str(info.value)
  assert f"tfds build mnist --data_dir {tmp_path}" in str(info.value)


def test_unknown_split_lists_the_real_ones(data_dir):
  builder = datasets.get_builder(_dataset(data_dir))
  with pytest.raises(
    UserError,
    match=r"dataset.eval_split='validation' cannot be read from digits \(its splits: test, train\)",
  ):
    datasets.get_source(builder, "validation", "dataset.eval_split")
  with pytest.raises(UserError, match=r"dataset.train_split='train\[5:5\]' is empty"):
    datasets.get_source(builder, "train[5:5]")


def test_processes_preparing_one_data_dir_at_once_all_see_the_splits(tmp_path):
  """A multi-host job's processes start together on an empty (shared) data_dir."""
  import subprocess
  import sys
  from conftest import ROOT

  code = (
    "import sys; from ml_collections import ConfigDict; from jaxtrain.data import datasets; "
    "b = datasets.get_builder(ConfigDict(dict(name='digits', path='', data_dir=sys.argv[1]))); "
    "print(len(datasets.get_source(b, 'train[:90%]')))"
  )
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", code, str(tmp_path)],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for _ in range(3)
  ]
  outputs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0, 0], outputs
  assert [out.strip().splitlines()[-1] for out, _ in outputs] == ["1293"] * 3

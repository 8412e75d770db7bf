"""Data parallelism: jit over a mesh, pmap, fsdp, on 8 simulated CPU devices.

JAX fixes the device count when it starts, so runs on 8 devices happen in
child processes started with `--xla_force_host_platform_device_count=8`.
"""

import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxtrain.run import parallel
from jaxtrain.config import base_config
from jaxtrain.errors import UserError
from jaxtrain.run.loop import train_and_evaluate

from conftest import ROOT

# Each variant trains configs/digits.py (CNN with batch norm and dropout) for 50
# steps and reports step 50's own training loss, the params digest, and the
# params themselves for distance checks.
RUNS = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, "tests")
from conftest import load_config
from jaxtrain.run import checkpoint
from jaxtrain.run.metric_writers import read_metrics
from jaxtrain.run.loop import train_and_evaluate

out = {}
for name, overrides in json.loads(sys.argv[1]).items():
  c = load_config("digits")
  c.num_train_steps, c.log_every_steps, c.dataset.test_split = 50, 1, ""
  c.dataset.data_dir = sys.argv[2]
  for key, value in overrides.items():
    if "." in key:
      c[key.split(".")[0]][key.split(".")[1]] = value
    else:
      c[key] = value
  workdir = f"{sys.argv[3]}/{name}"
  state = train_and_evaluate(c, workdir)
  kernel = lambda tree: tree["Dense_0"]["kernel"]
  out[name] = {
      "devices": jax.device_count(),
      "loss": [e for e in read_metrics(workdir) if e["split"] == "train"][-1]["loss"],
      "digest": checkpoint.tree_digest(state.params),
      "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)],
      "kernel_shape": list(kernel(state.params).shape),
      "kernel_shards": [list(s.data.shape) for s in kernel(state.params).addressable_shards],
      "mu_shards": [
        list(s.data.shape) for s in kernel(state.opt_state[0][0].mu).addressable_shards
      ],
  }
print("RESULT " + json.dumps(out))
"""


def _train_variants(variants: dict, devices: int, data_dir: str, workdir) -> dict:
  env = dict(
    os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
  )
  proc = subprocess.run(
    [sys.executable, "-c", RUNS, json.dumps(variants), data_dir, str(workdir)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT ") :])


def _relative_distance(a, b) -> float:
  a, b = (np.concatenate([np.asarray(x).ravel() for x in t]) for t in (a, b))
  return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("parallel")
  no_dropout = {"model.dropout_rate": 0.0}
  results = _train_variants({"jit": {}, "jit_no_dropout": no_dropout}, 1, data_dir, workdir / "one")
  results8 = _train_variants(
    {
      "jit": {},
      "fsdp": {"parallel.fsdp": True},
      "jit_no_dropout": no_dropout,
      "pmap_no_dropout": {"parallel.mode": "pmap", **no_dropout},
      "jit_scan": {"steps_per_dispatch": 5, "log_every_steps": 5},
      "pmap_scan": {
        "parallel.mode": "pmap",
        "steps_per_dispatch": 5,
        "log_every_steps": 5,
        **no_dropout,
      },
    },
    8,
    data_dir,
    workdir / "eight",
  )
  return {"1": results, "8": results8}


def test_jit_on_8_devices_matches_1_device_within_1e5(runs):
  one, eight = runs["1"], runs["8"]
  assert one["jit"]["devices"] == 1 and eight["jit"]["devices"] == 8
  # Dropout is on here: under jit its masks are drawn for the global batch, and
  # JAX's partitionable threefry makes them independent of the device count.
  for name in ("jit", "jit_no_dropout"):
    assert eight[name]["loss"] == pytest.approx(one[name]["loss"], rel=1e-5)
    # Not bit-identical: 8 partial gradient sums are added in another order than 1.
    assert _relative_distance(one[name]["params"], eight[name]["params"]) < 1e-5


def test_pmap_matches_jit_and_1_device_within_1e5(runs):
  one, eight = runs["1"]["jit_no_dropout"], runs["8"]
  pmap, jit = eight["pmap_no_dropout"], eight["jit_no_dropout"]
  assert pmap["loss"] == pytest.approx(jit["loss"], rel=1e-5)
  assert pmap["loss"] == pytest.approx(one["loss"], rel=1e-5)
  # Why not the same digest: pmap psums per-device sums, jit lets XLA reduce the
  # global batch; the two add the same numbers in different orders. Measured
  # about 3e-7 after 50 steps. With dropout the two modes differ by design:
  # pmap draws a mask per device (fold_in of the device index), jit one for the
  # global batch, so the test compares them without dropout.
  assert _relative_distance(jit["params"], pmap["params"]) < 1e-5


def test_steps_per_dispatch_matches_single_steps_within_1e6_in_both_modes(runs):
  """5 steps in one scanned program (jit over 8 devices, and pmap) vs. 5 dispatched steps.

  On one device the bits are the same (test_steps_per_dispatch.py). On 8, XLA
  compiles the scanned step's cross-device sums in another order: measured
  8e-8 (jit) and 1.1e-7 (pmap) relative after 50 steps, the size of the
  8-vs-1-device difference above.
  """
  eight = runs["8"]
  for scanned, single in (("jit_scan", "jit"), ("pmap_scan", "pmap_no_dropout")):
    assert _relative_distance(eight[scanned]["params"], eight[single]["params"]) < 1e-6, scanned


def test_fsdp_matches_replicated_and_really_shards(runs):
  fsdp, replicated = runs["8"]["fsdp"], runs["8"]["jit"]
  assert fsdp["loss"] == pytest.approx(replicated["loss"], rel=1e-5)
  assert _relative_distance(replicated["params"], fsdp["params"]) < 1e-5
  assert fsdp["kernel_shape"] == [256, 256]  # the CNN's dense kernel
  rows, cols = fsdp["kernel_shape"]
  assert len(fsdp["kernel_shards"]) == 8
  for shards in (fsdp["kernel_shards"], fsdp["mu_shards"]):  # params and Adam's moment
    assert all(s[0] * s[1] * 8 == rows * cols for s in shards), shards
  assert replicated["kernel_shards"] == [[256, 256]] * 8


def test_fsdp_spec_shards_the_largest_divisible_dimension():
  assert parallel.fsdp_spec((256, 1024), 8, 1 << 14) == P(None, "data")
  assert parallel.fsdp_spec((1024, 256), 8, 1 << 14) == P("data")
  assert parallel.fsdp_spec((3, 3, 64, 128), 8, 1 << 14) == P(None, None, None, "data")
  assert parallel.fsdp_spec((1000, 30), 8, 1 << 14) == P("data")
  assert parallel.fsdp_spec((999, 33), 8, 1 << 14) == P()  # nothing divisible: whole
  assert parallel.fsdp_spec((64,), 8, 1 << 14) == P()  # small: whole


def test_batch_size_not_divisible_by_devices_names_both_numbers():
  eight = types.SimpleNamespace(devices=np.empty(8))
  with pytest.raises(
    UserError,
    match=r"^batch_size=60 must be divisible by the device count "
    r"\(8\) and the process count \(1\)$",
  ):
    parallel.check_batch_size(60, eight)
  parallel.check_batch_size(64, eight)


def test_batch_size_error_through_the_cli_on_8_devices(tmp_path, data_dir):
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
    TFDS_DATA_DIR=data_dir,
  )
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxtrain.tools.cli",
      "train",
      "--config",
      "configs/digits.py",
      "--workdir",
      str(tmp_path / "w"),
      "--config.batch_size=60",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
    "jaxtrain: error: batch_size=60 must be divisible by the device count (8) "
    "and the process count (1)"
  )
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_fsdp_with_pmap_is_a_config_error(small_config, tmp_path):
  small_config.parallel.update(mode="pmap", fsdp=True)
  with pytest.raises(UserError, match=r"config.parallel.fsdp=True needs parallel.mode='jit'"):
    train_and_evaluate(small_config, str(tmp_path))


def test_pmap_on_one_device_resumes_a_jit_checkpoint(small_config, tmp_path):
  """Checkpoints hold the state without pmap's device axis: the modes share them."""
  small_config.model.dropout_rate = 0.0  # pmap folds the device index into dropout's key
  straight = train_and_evaluate(small_config, str(tmp_path / "straight"))
  train_and_evaluate(small_config, str(tmp_path / "mixed"), stop_at_step=30)
  small_config.parallel.mode = "pmap"
  mixed = train_and_evaluate(small_config, str(tmp_path / "mixed"), allow_config_change=True)
  assert (
    int(mixed.step) == 60
    and mixed.params["Dense_0"]["kernel"].shape == straight.params["Dense_0"]["kernel"].shape
  )
  assert _relative_distance(jax.tree.leaves(straight.params), jax.tree.leaves(mixed.params)) < 1e-5


def test_default_config_is_jit_without_fsdp():
  c = base_config()
  assert (c.parallel.mode, c.parallel.fsdp, c.parallel.prefetch_to_device) == ("jit", False, 2)

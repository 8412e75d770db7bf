"""The command line's default path on the device counts users have: every run ends, and agrees.

`jaxtrain train` as a user types it, on 1, 2, 4 and 8 simulated CPU devices:
jit over the mesh with the training split on the devices (the default),
pmap, the host feed, and one process joined through a coordinator (gloo's
collectives). Before run/compiled.py's `InFlight` bound, the default path hung
on 4 and 8 devices (XLA:CPU's launch pool starved: experiments/dispatch_deadlock.py);
here a hang fails the test at its timeout, and XLA's own 40 s collective
timeout ends a stuck process first.

What "agrees" means: more devices add their partial gradient sums in another
order, 1e-7 apart in a step's loss, and training itself grows that: on 2
devices a step near a ReLU's or max-pool's kink turns it into 2e-5 at once
(step 23 of this run, measured), 2e-3 in the loss by step 60. So a run's
params at step 20, before that, are within 1e-5 (relative) of one device's;
its final params are bit for bit those of the same layout fed the other way
(host feed vs. on the devices) and of a second try; its final loss is within
5% of one device's (a wrong batch or a lost step would be far more).
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxtrain.run import checkpoint
from jaxtrain.run.metric_writers import read_metrics

from conftest import ROOT, require_mnist

STEPS = 60
DIGITS = [
  "--config",
  "configs/digits.py",
  f"--config.num_train_steps={STEPS}",
  "--config.eval_every_steps=30",
  "--config.checkpoint_every_steps=20",
  "--config.keep_checkpoints=3",
  "--config.log_every_steps=20",
  "--config.model.dropout_rate=0.0",  # pmap's masks differ
  "--config.parallel.stall_timeout_s=60",
  "--config.parallel.startup_timeout_s=300",
]
TOLERANCE = 1e-5  # params at step 20


def _train(workdir, devices: int, data_dir, *extra, config=DIGITS, early=20, timeout=300) -> dict:
  """{"early": params at step `early`, "final": final params, "loss": the last train loss}."""
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    TFDS_DATA_DIR=data_dir,
  )
  try:
    proc = subprocess.run(
      [
        sys.executable,
        "-m",
        "jaxtrain.tools.cli",
        "train",
        *config,
        "--workdir",
        str(workdir),
        "--quiet",
        *extra,
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
    )
  except subprocess.TimeoutExpired as e:
    pytest.fail(
      f"{devices} devices {' '.join(extra)}: hung (no end in {timeout} s); "
      f"{(e.stderr or b'')[-2000:]!r}"
    )
  assert proc.returncode == 0, f"{devices} devices {' '.join(extra)}: {proc.stderr[-3000:]}"
  step, final = checkpoint.load_arrays(str(workdir))
  assert step == int(config[2].split("=")[1])
  losses = [e["loss"] for e in read_metrics(str(workdir)) if e["split"] == "train"]
  return {
    "early": checkpoint.load_arrays(str(workdir), early)[1]["params"],
    "final": final["params"],
    "loss": losses[-1],
  }


def _distance(a, b) -> float:
  """|a - b| / |a| over every parameter."""
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  a, b = flat(a), flat(b)
  return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  """The one-device run, and each layout's first run (the ones others compare with)."""
  return {"1": _train(tmp_path_factory.mktemp("one") / "w", 1, data_dir)}


CASES = {  # name: (devices, extra flags, a run whose final params it equals bit for bit)
  "jit-device-feed-2": (2, [], None),
  "jit-device-feed-4": (4, [], None),
  "jit-device-feed-8": (8, [], None),
  "jit-device-feed-8-again": (8, [], "jit-device-feed-8"),  # a race shows on some tries only
  "jit-host-feed-8": (8, ["--config.dataset.device_cache_max_mb=0"], "jit-device-feed-8"),
  "pmap-8": (8, ["--config.parallel.mode=pmap"], None),
  "coordinator-4": (4, ["--num_processes", "1"], None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_default_path_ends_and_agrees_with_one_device(case, runs, data_dir, tmp_path):
  devices, extra, same_as = CASES[case]
  run = runs[case] = _train(tmp_path / "w", devices, data_dir, *extra)
  one = runs["1"]
  assert _distance(one["early"], run["early"]) < TOLERANCE, case
  assert run["loss"] == pytest.approx(one["loss"], rel=0.05), case
  if same_as is not None:
    assert checkpoint.tree_digest(run["final"]) == checkpoint.tree_digest(runs[same_as]["final"])


def test_mnist_on_8_devices_ends_and_agrees_with_one_device(data_dir, tmp_path):
  mnist = [
    "--config",
    "configs/mnist.py",
    "--config.num_train_steps=100",
    f"--config.dataset.path={require_mnist()}",
    "--config.dataset.train_split=test[:8000]",
    "--config.dataset.eval_split=test[8000:]",
    "--config.eval_every_steps=50",
    "--config.checkpoint_every_steps=10",
    "--config.keep_checkpoints=10",
    "--config.model.dropout_rate=0.0",
    "--config.parallel.stall_timeout_s=60",
    "--config.parallel.startup_timeout_s=300",
  ]
  # SGD at 0.1 with momentum grows the layouts' difference faster: compared at step 10.
  one = _train(tmp_path / "one", 1, data_dir, config=mnist, early=10)
  eight = _train(tmp_path / "eight", 8, data_dir, config=mnist, early=10)
  assert _distance(one["early"], eight["early"]) < TOLERANCE
  assert eight["loss"] == pytest.approx(one["loss"], rel=0.05)

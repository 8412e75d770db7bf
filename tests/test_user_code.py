"""A researcher's own code, named in a config: the experiment folders in experiments/.

experiments/mnist_nnx (an NNX model with dropout and batch norm) and
experiments/mnist_linen_smoothing (a Linen model with its own loss: label
smoothing plus an L2 term on the params) are copied out of the package and
trained on the embedded digits by `jaxtrain train`: killed with SIGKILL and
restarted, they end with the uninterrupted run's bits; on 8 simulated devices
jit is within 1e-5 of one device, and pmap's batch norm uses the global batch.
Editing a model file is named by `rerun` and refused by a resume.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxtrain.errors import UserError
from jaxtrain.run import checkpoint, manifest
from jaxtrain.run.loop import train_and_evaluate
from jaxtrain.run.metric_writers import read_metrics
from jaxtrain.tools.cli import main

from conftest import ROOT

EXPERIMENTS = {"nnx": "mnist_nnx", "linen": "mnist_linen_smoothing"}


def _folder(tmp_path, kind):
  """The experiment folder, copied where a user would keep it: outside the package."""
  folder = tmp_path / EXPERIMENTS[kind]
  shutil.copytree(ROOT / "experiments" / EXPERIMENTS[kind], folder)
  return folder


def _digits_flags(data_dir, kind, steps=40, **extra):
  """Overrides that train the MNIST experiment briefly on the embedded 8x8 digits."""
  flags = {
    "dataset.name": "digits",
    "dataset.train_split": "train[:90%]",
    "dataset.eval_split": "train[90%:]",
    "dataset.data_dir": data_dir,
    "batch_size": 32,
    "num_train_steps": steps,
    "log_every_steps": 10,
    "eval_every_steps": 20,
    "checkpoint_every_steps": 10,
    "model.width": 8,
    "model.hidden": 32,
    **extra,
  }
  if kind == "nnx":
    flags["model.image_size"] = 8
  return [f"--config.{k}={v}" for k, v in flags.items()]


def _config(folder, flags):
  """The config as `jaxtrain train --config folder/config.py <flags>` resolves it."""
  from jaxtrain.tools.cli import _parse_flags

  return _parse_flags(["--config", str(folder / "config.py"), "--workdir", "unused", *flags]).config


def _cli(folder, workdir, flags, env=None):
  return subprocess.Popen(
    [
      sys.executable,
      "-m",
      "jaxtrain.tools.cli",
      "train",
      "--quiet",
      "--config",
      str(folder / "config.py"),
      "--workdir",
      str(workdir),
      *flags,
    ],
    cwd=folder.parent,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _digest(workdir):
  return checkpoint.tree_digest(checkpoint.load_arrays(str(workdir))[1])


@pytest.mark.parametrize("kind", ["nnx", "linen"])
def test_kill_9_and_the_same_command_end_with_the_uninterrupted_bits(kind, tmp_path, data_dir):
  folder = _folder(tmp_path, kind)
  flags = _digits_flags(data_dir, kind)
  train_and_evaluate(_config(folder, flags), str(tmp_path / "straight"), config_dir=str(folder))

  workdir = tmp_path / "killed"
  proc = _cli(folder, workdir, flags)
  deadline = time.monotonic() + 300
  while not checkpoint.saved_steps(str(workdir)) and proc.poll() is None:  # the first save
    assert time.monotonic() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert checkpoint.saved_steps(str(workdir))[-1] < 40  # it was stopped before the end
  restart = _cli(folder, workdir, flags)
  out, _ = restart.communicate(timeout=300)
  assert restart.returncode == 0, out[-2000:]
  assert _digest(workdir) == _digest(tmp_path / "straight")
  events = read_metrics(str(workdir))
  assert [e["step"] for e in events if e["split"] == "eval"][-1] == 40
  if kind == "linen":  # its own loss, with the L2 term it computes from the params
    last = [e for e in events if e["split"] == "train"][-1]
    assert last["l2_penalty"] > 0 and last["loss"] > last["cross_entropy"]


DEVICES = r"""
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from pathlib import Path
from test_user_code import _config, _digits_flags
from jaxtrain.run.loop import train_and_evaluate
folder, data_dir, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
params = {}
for name, kind, extra in json.loads(sys.argv[4]):
  c = _config(folder / kind, _digits_flags(data_dir, kind, steps=10, **extra))
  state = train_and_evaluate(c, f"{out}/{name}", config_dir=str(folder / kind))
  params[name] = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)]
print("RESULT", json.dumps({"devices": jax.device_count(), "params": params}))
"""


def _gap(a, b):
  return max(max(abs(x - y) for x, y in zip(u, v)) for u, v in zip(a, b))


def test_eight_devices_jit_matches_one_device_and_pmap_batch_norm_is_global(tmp_path, data_dir):
  folders = tmp_path / "folders"
  for kind, name in EXPERIMENTS.items():
    shutil.copytree(ROOT / "experiments" / name, folders / kind)
  runs = [
    ["linen_jit", "linen", {}],
    ["nnx_jit", "nnx", {}],
    # Dropout off: under pmap each device draws its own masks (by design).
    ["nnx_pmap", "nnx", {"model.dropout_rate": 0.0, "parallel.mode": "pmap"}],
    ["nnx_nodrop", "nnx", {"model.dropout_rate": 0.0}],
  ]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "-c",
      DEVICES,
      str(folders),
      data_dir,
      str(tmp_path / "d8"),
      json.dumps(runs[:3]),
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT ", 1)[1])
  assert result["devices"] == 8
  import jax

  assert jax.device_count() == 1  # the one-device runs: here, in the test's own process
  results = {8: result["params"], 1: {}}
  for name, kind, extra in (runs[0], runs[1], runs[3]):
    c = _config(folders / kind, _digits_flags(data_dir, kind, steps=10, **extra))
    state = train_and_evaluate(c, str(tmp_path / "d1" / name), config_dir=str(folders / kind))
    results[1][name] = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)]
  assert _gap(results[8]["linen_jit"], results[1]["linen_jit"]) < 1e-5
  assert _gap(results[8]["nnx_jit"], results[1]["nnx_jit"]) < 1e-5
  # Per-device batch statistics (4 examples each) would move the params by ~1e-2.
  assert _gap(results[8]["nnx_pmap"], results[1]["nnx_nodrop"]) < 1e-5


def test_an_edited_model_file_is_named_by_rerun_and_refused_by_a_resume(tmp_path, data_dir, capsys):
  folder = _folder(tmp_path, "nnx")
  flags = _digits_flags(data_dir, "nnx", steps=20)
  workdir = tmp_path / "run"
  argv = [
    "train",
    "--quiet",
    "--config",
    str(folder / "config.py"),
    "--workdir",
    str(workdir),
    *flags,
  ]
  assert main(argv + ["--stop_at_step=10"]) == 0
  record = manifest.read(str(workdir))["code"]["config.model.name"]
  assert record["file"] == str(folder / "model.py") and record["name"] == "model.py:ConvNet"

  model = folder / "model.py"
  model.write_text(model.read_text().replace("return self.head(x)", "return 2.0 * self.head(x)"))
  capsys.readouterr()
  assert main(argv) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"{workdir} was trained with other code: {model} " in err[0]
  assert "changed: sha256" in err[0] and "--allow_config_change" in err[0]
  assert checkpoint.saved_steps(str(workdir)) == [10]  # nothing saved was touched

  rerun = ["rerun", str(workdir), "--into", str(tmp_path / "again"), "--data_dir", data_dir]
  assert main(rerun) == 1  # a workdir never names code to run: the folder must be given
  assert "pass --code DIR" in capsys.readouterr().err
  assert main(rerun + ["--code", str(folder)]) == 1  # other bits
  report = capsys.readouterr().out
  assert "params digest DIFFERS" in report
  assert f"{model} (config.model.name='model.py:ConvNet') changed: sha256" in report

  assert main(argv + ["--allow_config_change"]) == 0  # resumes with the code as it is now
  resumes = manifest.read(str(workdir))["resumes"]
  assert resumes[-1]["code_changes"]["config.model.name.sha256"][1] != record["sha256"]


def test_a_model_file_relative_to_the_working_directory_is_not_the_configs(tmp_path, data_dir):
  """Relative paths start at the config file's directory, wherever the command runs."""
  folder = _folder(tmp_path, "linen")
  proc = _cli(folder, tmp_path / "w", _digits_flags(data_dir, "linen", steps=10))
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-2000:]  # run from folder's parent: model.py is not in cwd
  with pytest.raises(
    UserError,
    match=r"config.task='loss.py:smoothed_cross_entropy': .*/loss.py does "
    r"not exist \(a relative path is taken from the config file's",
  ):
    train_and_evaluate(
      _config(folder, _digits_flags(data_dir, "linen")),
      str(tmp_path / "x"),
      config_dir=str(tmp_path),
    )

"""SIGTERM (or SLURM's SIGUSR1) mid-run: status 75, a checkpoint at the step reached, an exact resume."""

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from test_cli import jaxtrain


def _args(workdir, data_dir):
  return ["--config", "configs/digits.py", "--workdir", str(workdir),
          f"--config.dataset.data_dir={data_dir}", "--config.model.name=mlp",
          "--config.num_train_steps=5000", "--config.checkpoint_every_steps=10000",
          "--config.log_every_steps=10", "--config.dataset.test_split="]


def test_a_stop_that_the_interrupted_code_wraps_in_its_own_error_still_exits_75(monkeypatch, capsys):
  """Seen in CI: SIGTERM during start-up's TFDS import became "RuntimeError: Error calling
  __set_name__" (Python 3.11 wraps what a class body's set-up raises), then a data error."""
  from jaxtrain.tools import cli

  def interrupted(argv):
    try:
      signal.raise_signal(signal.SIGTERM)
      raise AssertionError("the handler did not stop the command")
    except BaseException as e:
      raise RuntimeError("Error calling __set_name__ on 'Field' instance 'data_source'") from e
  monkeypatch.setitem(cli.COMMANDS, "inspect", interrupted)
  assert cli.main(["inspect", "somewhere"]) == 75
  assert capsys.readouterr().err.strip() == (
      "jaxtrain: preempted: SIGTERM received: stopped before anything new was trained; nothing "
      "saved was touched; run the same command to resume")
  monkeypatch.setitem(cli.COMMANDS, "inspect", lambda argv: 1 / 0)  # no signal: the error is the error
  with pytest.raises(ZeroDivisionError):
    cli.main(["inspect", "somewhere"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_saves_the_step_reached_and_resumes_exactly(tmp_path, data_dir, sig):
  proc = subprocess.Popen([sys.executable, "-u", "-m", "jaxtrain.tools.cli", "train",
                           *_args(tmp_path / "run", data_dir)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in proc.stdout:  # wait until training is under way
    if " step 100 " in line:
      break
  sent = time.monotonic()
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=60)
  assert time.monotonic() - sent < 30  # fits a 30-second grace period
  assert proc.returncode == 75, stderr
  message = stderr.strip().splitlines()[-1]
  assert message.startswith(f"jaxtrain: preempted: {sig.name} received: saved a checkpoint at step ")
  step = int(message.split("at step ")[1].split(";")[0])
  assert 100 <= step < 5000
  info = json.loads(jaxtrain("inspect", str(tmp_path / "run"), "--json").stdout)
  assert info["latest_step"] == step
  if sig != signal.SIGTERM:
    return  # the same path from here on

  assert jaxtrain("train", *_args(tmp_path / "run", data_dir)).returncode == 0
  assert jaxtrain("train", *_args(tmp_path / "straight", data_dir)).returncode == 0
  resumed, straight = (json.loads(jaxtrain("inspect", str(tmp_path / w), "--json").stdout)
                       for w in ("run", "straight"))
  assert resumed["latest_step"] == straight["latest_step"] == 5000
  assert resumed["state_digest"] == straight["state_digest"]

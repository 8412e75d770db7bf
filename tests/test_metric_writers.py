"""Live progress on a terminal, plain lines elsewhere; config flattening for HParams."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from jaxtrain.run.metric_writers import ProgressBar, flatten_config

from conftest import ROOT

ARGS = ["train", "--config", "configs/digits.py", "--config.num_train_steps=120",
        "--config.log_every_steps=40", "--config.dataset.test_split=",
        '--config.model={"name": "mlp", "num_classes": 10, "features": [32]}']


def _run_on_a_terminal(args, data_dir) -> str:
  """Output of `jaxtrain ...` run with a pseudo-terminal as stdout."""
  primary, secondary = pty.openpty()
  fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # rows, columns
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-m", "jaxtrain.tools.cli", *args], cwd=ROOT, env=env,
                          stdout=secondary, stderr=subprocess.DEVNULL)
  os.close(secondary)
  chunks = []
  while True:
    try:
      data = os.read(primary, 4096)
    except OSError:  # the child closed the terminal
      break
    if not data:
      break
    chunks.append(data)
  assert proc.wait(timeout=300) == 0
  os.close(primary)
  return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_live_bar_and_quiet_gets_plain_lines(tmp_path, data_dir):
  live = _run_on_a_terminal([*ARGS, "--workdir", str(tmp_path / "live")], data_dir)
  assert "epoch 1" in live and "step/s" in live and "/120" in live  # step, epoch, rate
  assert "loss=" in live and "ex/s=" in live                          # last logged metrics
  assert "step 120 train " in live                                    # log lines still there
  assert f"curves: {tmp_path / 'live'}" in live or f"tensorboard --logdir {tmp_path / 'live'}" in live
  quiet = _run_on_a_terminal([*ARGS, "--workdir", str(tmp_path / "quiet"), "--quiet"], data_dir)
  assert "step/s" not in quiet and not re.search(r"\r(?!\n)", quiet)  # no redrawn line
  assert "step 40 train " in quiet and "step 120 train " in quiet


def test_the_bar_is_off_without_a_terminal(capsys):
  bar = ProgressBar(100, 0, 10, enabled=True)  # pytest's stdout is not a terminal
  bar.update(5)
  bar.set_metrics(3, "train", {"loss": 0.5})
  bar.close()
  assert capsys.readouterr().out == ""


def test_flatten_config_gives_dotted_scalars():
  flat = flatten_config({"seed": 0, "optimizer": {"name": "adamw", "learning_rate": 0.1},
                         "model": {"features": [64, 32], "bias": True}})
  assert flat == {"seed": 0, "optimizer.name": "adamw", "optimizer.learning_rate": 0.1,
                  "model.features": "[64, 32]", "model.bias": True}

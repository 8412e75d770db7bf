"""SIGTERM (or SLURM's SIGUSR1) mid-run: status 75, a checkpoint at the step reached, an exact
resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from jaxtrain.errors import Preempted
from jaxtrain.run import checkpoint
from test_cli import jaxtrain


def _args(workdir, data_dir):
  return [
    "--config",
    "configs/digits.py",
    "--workdir",
    str(workdir),
    f"--config.dataset.data_dir={data_dir}",
    "--config.model.name=mlp",
    "--config.num_train_steps=5000",
    "--config.checkpoint_every_steps=10000",
    "--config.log_every_steps=10",
    "--config.dataset.test_split=",
  ]


def test_a_stop_that_the_interrupted_code_wraps_in_its_own_error_still_exits_75(
  monkeypatch, capsys
):
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
    "saved was touched; run the same command to resume"
  )
  monkeypatch.setitem(
    cli.COMMANDS, "inspect", lambda argv: 1 / 0
  )  # no signal: the error is the error
  with pytest.raises(ZeroDivisionError):
    cli.main(["inspect", "somewhere"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_saves_the_step_reached_and_resumes_exactly(tmp_path, data_dir, sig):
  proc = subprocess.Popen(
    [sys.executable, "-u", "-m", "jaxtrain.tools.cli", "train", *_args(tmp_path / "run", data_dir)],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  for line in proc.stdout:  # wait until training is under way
    if " step 100 " in line:
      break
  sent = time.monotonic()
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=60)
  assert time.monotonic() - sent < 30  # fits a 30-second grace period
  assert proc.returncode == 75, stderr
  message = stderr.strip().splitlines()[-1]
  assert message.startswith(
    f"jaxtrain: preempted: {sig.name} received: saved a checkpoint at step "
  )
  step = int(message.split("at step ")[1].split(";")[0])
  assert 100 <= step < 5000
  info = json.loads(jaxtrain("inspect", str(tmp_path / "run"), "--json").stdout)
  assert info["latest_step"] == step
  if sig != signal.SIGTERM:
    return  # the same path from here on

  assert jaxtrain("train", *_args(tmp_path / "run", data_dir)).returncode == 0
  assert jaxtrain("train", *_args(tmp_path / "straight", data_dir)).returncode == 0
  resumed, straight = (
    json.loads(jaxtrain("inspect", str(tmp_path / w), "--json").stdout) for w in ("run", "straight")
  )
  assert resumed["latest_step"] == straight["latest_step"] == 5000
  assert resumed["state_digest"] == straight["state_digest"]


_STUCK_MODEL = '''
"""A model whose step blocks inside XLA (a host callback that sleeps) once a flag file exists."""
import os
import time

import flax.linen as nn
import jax


class Net(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))

    def wait(v):
      if os.path.exists(os.environ["STUCK_FLAG"]):
        time.sleep(3600)
      return v
    x = jax.pure_callback(wait, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
    return nn.Dense(self.num_classes)(x)
'''
_STUCK_CONFIG = '''
from jaxtrain.config import base_config


def get_config():
  c = base_config()
  c.model = dict(name="model.py:Net", num_classes=10)
  c.dataset.update(name="digits", train_split="train[:90%]", eval_split="", test_split="")
  c.update(batch_size=32, num_train_steps=400, log_every_steps=10, checkpoint_every_steps=20)
  c.optimizer.update(name="adam", learning_rate=1e-3)
  c.parallel.stop_grace_s = 3
  return c
'''


def _stuck_run(folder, workdir, data_dir, flag):
  env = dict(os.environ, STUCK_FLAG=str(flag), TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
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
    ],
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )


def _stuck_setup(tmp_path):
  folder = tmp_path / "stuck"
  folder.mkdir()
  (folder / "model.py").write_text(_STUCK_MODEL)
  (folder / "config.py").write_text(_STUCK_CONFIG)
  return folder


def _wait_for_checkpoint(workdir, step, proc):
  deadline = time.monotonic() + 300
  while step not in checkpoint.saved_steps(str(workdir)):
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert time.monotonic() < deadline, "no checkpoint came"
    time.sleep(0.05)


def test_a_signal_while_a_step_is_stuck_in_xla_ends_the_process_after_the_grace(tmp_path, data_dir):
  """The main thread waits inside XLA, where no Python handler runs: the grace thread ends it."""
  folder, flag = _stuck_setup(tmp_path), tmp_path / "stuck.flag"
  proc = _stuck_run(folder, tmp_path / "w", data_dir, flag)
  _wait_for_checkpoint(tmp_path / "w", 40, proc)
  flag.write_text("")  # every step from here on blocks in its callback
  time.sleep(1)  # the loop is now waiting for a step that never ends
  sent = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=60)
  took = time.monotonic() - sent
  assert proc.returncode in (75, 76) and took < 3 + 10, (proc.returncode, took, stderr[-2000:])
  [line] = [l for l in stderr.splitlines() if l.startswith("jaxtrain:")]
  assert re.fullmatch(
    r"jaxtrain: preempted: SIGTERM received: stopped while stuck in the (step|save) at "
    r"step \d+ \(not done within parallel.stop_grace_s=3\); the last checkpoint is "
    r"step \d+( \(a save in flight is lost\))?; run the same command to resume",
    line,
  ), line
  assert "Traceback" not in stderr
  last = checkpoint.saved_steps(str(tmp_path / "w"))[-1]
  assert f"the last checkpoint is step {last}" in line

  flag.unlink()  # the same command resumes, to the bits of a run never stuck
  for workdir in ("w", "straight"):
    resumed = _stuck_run(folder, tmp_path / workdir, data_dir, flag)
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[1][-2000:]
  digests = [
    checkpoint.tree_digest(checkpoint.load_arrays(str(tmp_path / w))[1]) for w in ("w", "straight")
  ]
  assert digests[0] == digests[1]


def test_a_second_ctrl_c_ends_a_stuck_process_at_once(tmp_path, data_dir):
  folder, flag = _stuck_setup(tmp_path), tmp_path / "stuck.flag"
  (folder / "config.py").write_text(_STUCK_CONFIG.replace("stop_grace_s = 3", "stop_grace_s = 600"))
  proc = _stuck_run(folder, tmp_path / "w", data_dir, flag)
  _wait_for_checkpoint(tmp_path / "w", 20, proc)
  flag.write_text("")
  time.sleep(1)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.5)
  assert proc.poll() is None  # the first waits for a boundary (600 s of grace)
  sent = time.monotonic()
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=30)
  assert proc.returncode in (75, 76) and time.monotonic() - sent < 10, stderr[-2000:]
  [line] = [l for l in stderr.splitlines() if l.startswith("jaxtrain:")]
  assert line.startswith("jaxtrain: preempted: SIGINT received: stopped while stuck in ")
  assert "(a second Ctrl-C)" in line


def test_sigterm_in_start_up_of_a_fresh_and_a_resumed_run_exits_75_and_resumes_exactly(tmp_path):
  """The soak's scan at one point, in start-up (experiments/multiprocess_soak.py --scan does every
  0.1 s; the tests above stop training runs)."""
  out = tmp_path / "scan.json"
  proc = subprocess.run(
    [
      sys.executable,
      "experiments/multiprocess_soak.py",
      "--scan",
      "--load",
      "0",
      "--busy",
      "0",
      "--scan_delays",
      "0.5",
      "--hang_s",
      "120",
      "--json",
      str(out),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=1200,
  )
  tries = json.loads(out.read_text())["tries"]
  assert [t["resumed"] for t in tries] == [False, True]
  for t in tries:
    assert t["exit"] in (0, 75) and not t["traceback"], t
    assert t["ok"], t  # one line, stopped within a few steps, resumed to the same bits
  assert proc.returncode == 0, proc.stdout[-2000:]


def test_a_handler_only_records_and_scopes_nest_on_one_record():
  from jaxtrain.run import preemption

  with preemption.watching():
    os.kill(os.getpid(), signal.SIGHUP)
    time.sleep(0)  # the handler runs between two bytecodes of this thread, and returns
    with preemption.PreemptionWatcher() as watcher:  # a scope inside: the same record
      assert watcher.signal_name == "SIGHUP" and watcher.should_stop(10)
    with pytest.raises(Preempted, match="^SIGHUP received: saved a checkpoint at step 7;"):
      preemption.check(step=7)
    preemption.acting_jointly()
    preemption.check()  # several processes stop where they agree, not here
  with preemption.watching():  # a new outermost scope: a new record
    assert preemption.received() is None
    preemption.check()


def test_the_grace_thread_ends_the_process_only_if_no_boundary_comes(capsys):
  from jaxtrain.run import preemption

  ended = []
  with (
    preemption.watching(),
    preemption.running(
      where=lambda: "the step at step 12", checkpoints=lambda: (10, False), grace_s=0.2
    ),
    preemption.GraceThread(exit=ended.append) as grace,
  ):
    os.kill(os.getpid(), signal.SIGTERM)
    grace._thread.join(timeout=30)  # it returns once it has ended the process
  assert ended == [75]
  assert capsys.readouterr().err.strip() == (
    "jaxtrain: preempted: SIGTERM received: stopped while stuck in the step at step 12 (not "
    "done within parallel.stop_grace_s=0.2); the last checkpoint is step 10; run the same "
    "command to resume"
  )

  ended.clear()
  with (
    preemption.watching(),
    preemption.running(
      where=lambda: "the step at step 12", checkpoints=lambda: (10, False), grace_s=0.2
    ),
    preemption.GraceThread(exit=ended.append),
  ):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0)
    assert preemption.observe() == "SIGTERM"  # a boundary: the main thread acts on it
    time.sleep(0.6)
  assert ended == []


def test_a_stop_with_a_save_in_flight_is_76():
  from jaxtrain.run import preemption

  with preemption.running(where=lambda: "the save at step 40", checkpoints=lambda: (20, True)):
    line, status = preemption.stuck_line("SIGINT", "a second Ctrl-C")
  assert status == 76 and line == (
    "jaxtrain: preempted: SIGINT received: stopped while stuck in the save at step 40 (a second "
    "Ctrl-C); the last checkpoint is step 20 (a save in flight is lost); run the same command "
    "to resume"
  )

"""A job of several processes when one of them fails: killed, doubled, or told differently.

Helpers and layout as in tests/test_distributed.py (processes on 127.0.0.1,
gloo's collectives), in a file of its own so the two run side by side.
"""

import os
import re
import signal
import sys
import time

from test_distributed import CONFIG, _launch, _wait, _wait_for_checkpoint


def test_a_killed_process_is_named_by_the_survivor_in_one_line_within_the_stall_limit(
  data_dir, tmp_path
):
  workdir = tmp_path / "dead"
  procs = _launch(
    workdir,
    data_dir,
    processes=2,
    devices_each=1,
    tag="dead",
    extra=["--config.num_train_steps=5000"],
  )
  _wait_for_checkpoint(workdir, 20, procs)
  procs[1].send_signal(signal.SIGKILL)
  killed = time.monotonic()
  codes, logs = _wait(procs, workdir, "dead")
  took = time.monotonic() - killed
  assert codes == [76, -signal.SIGKILL], logs[0][-3000:]
  assert took < 120, took  # the stall limit's floor; JAX's own heartbeat timeout is 100 s
  [line] = [l for l in logs[0].splitlines() if l.startswith("jaxtrain:")]
  assert re.fullmatch(
    r"jaxtrain: stalled: process 1 of 2 is gone: not heard from in \d+ s \(here: "
    r"the \w+ at step \d+ of process 0 of 2\); exiting with status 76: the newest "
    r"checkpoint is intact, run the same command to resume from it",
    line,
  ), line
  assert "Traceback" not in logs[0] and "Check failure" not in logs[0]


def test_a_second_job_on_a_workdir_is_refused_by_every_one_of_its_processes(data_dir, tmp_path):
  workdir = tmp_path / "shared"
  first = _launch(
    workdir,
    data_dir,
    processes=2,
    devices_each=1,
    tag="first",
    extra=["--config.num_train_steps=5000"],
  )
  try:
    _wait_for_checkpoint(workdir, 20, first)
    codes, logs = _wait(
      _launch(workdir, data_dir, processes=2, devices_each=1, tag="second"), workdir, "second"
    )
    assert codes == [1, 1], logs
    for log in logs:
      [line] = [l for l in log.splitlines() if l.startswith("jaxtrain:")]
      assert re.fullmatch(
        rf"jaxtrain: error: {re.escape(str(workdir))} is in use by process \d+ on "
        r".* one run writes a workdir at a time; wait for it, stop it, or use "
        r"another workdir",
        line,
      ), line
    assert all(p.poll() is None for p in first)  # the first job trains on
  finally:
    for p in first:
      p.kill()


def test_start_over_must_be_given_to_every_process_or_none(data_dir, tmp_path):
  workdir = tmp_path / "half"
  argv = lambda i, port: [
    sys.executable,
    "-m",
    "jaxtrain.tools.cli",
    "train",
    *CONFIG,
    "--workdir",
    str(workdir),
    "--coordinator",
    f"127.0.0.1:{port}",
    "--num_processes",
    "2",
    "--process_id",
    str(i),
    *(["--start_over"] if i == 1 else []),
  ]
  codes, logs = _wait(
    _launch(workdir, data_dir, processes=2, devices_each=1, tag="half", command=argv),
    workdir,
    "half",
  )
  assert codes == [1, 1], logs
  for log in logs:
    assert log.strip().splitlines()[-1] == (
      "jaxtrain: error: --start_over was given to processes [1] of 2 only: give it to every "
      "process of the job, or to none"
    )
  assert not os.path.exists(workdir / "checkpoints")

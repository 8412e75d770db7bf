"""The stall watchdog: alone with a fake clock, and a run that stalls, exits 76, and resumes
exactly."""

import re
import subprocess
import sys
import textwrap

from conftest import ROOT
from jaxtrain.run import checkpoint
from jaxtrain.run.watchdog import STALLED, Watchdog


def test_the_watchdog_names_the_phase_step_and_process_once_the_limit_passes():
  now = [100.0]
  dog = Watchdog(30, startup_timeout_s=600, process="process 1 of 2", clock=lambda: now[0])
  dog.mark("evaluation", 200)
  now[0] += 5  # the first evaluation compiles: start-up's limit
  dog.mark("evaluation", 250)
  now[0] += 30
  assert dog.check() is None  # at the limit, not past it
  now[0] += 1
  assert dog.check() == (
    "jaxtrain: stalled: the evaluation at step 250 of process 1 of 2 has not "
    "finished in 31 s (parallel.stall_timeout_s=30); exiting with status 76: "
    "the newest checkpoint is intact, run the same command to resume from it"
  )
  dog.mark("step", 251)  # progress: the clock starts again
  assert dog.check() is None
  assert Watchdog(0, clock=lambda: 1e9).check() is None  # 0: never


def test_the_limit_is_start_ups_for_a_first_phase_then_a_multiple_of_the_slowest_seen():
  now = [0.0]
  dog = Watchdog(1800, startup_timeout_s=600, clock=lambda: now[0])
  assert dog.limit() == (600, "parallel.startup_timeout_s=600")
  now[0] += 601
  assert dog.check().startswith(
    "jaxtrain: stalled: the start-up at step 0 of process 0 of 1 has "
    "not finished in 601 s (parallel.startup_timeout_s=600)"
  )
  dog.mark("step", 1)
  assert dog.limit() == (600, "parallel.startup_timeout_s=600")  # the first step compiles
  now[0] += 5
  dog.mark("step", 2)  # from here on: 10 x the slowest step, at least 120 s
  assert dog.limit() == (120, "10 x the slowest step so far, 5 s, at least 120 s")
  now[0] += 0.01
  dog.mark("step", 3)  # later steps replace the first (compiling) one
  assert dog.limit() == (120, "10 x the slowest step so far, 0.01 s, at least 120 s")
  now[0] += 30
  dog.mark("step", 4)
  assert dog.limit() == (300, "10 x the slowest step so far, 30 s, at least 120 s")
  now[0] += 301
  assert dog.stalled() == (
    "the step at step 4 of process 0 of 1 has not finished in 301 s "
    "(10 x the slowest step so far, 30 s, at least 120 s)"
  )
  dog.mark("step", 5)  # 10 x 301 s is past the ceiling
  assert dog.limit() == (1800, "parallel.stall_timeout_s=1800")
  dog.mark("evaluation", 5)
  assert dog.limit() == (600, "parallel.startup_timeout_s=600")  # its first: it compiles
  assert dog.doing() == "the evaluation at step 5"
  assert Watchdog(1800, startup_timeout_s=0).limit() is None  # 0: start-up never stalls


def test_its_thread_exits_with_76(capsys):
  exited = []
  dog = Watchdog(0.2, exit=exited.append)
  with dog:
    dog._thread.join(timeout=30)  # it exits its loop once it has reported
  assert exited == [STALLED]
  assert "stalled: the start-up at step 0 of process 0 of 1" in capsys.readouterr().err


class _Peers:
  """The coordination service's key-value store, as two processes' watchdogs share it."""

  def __init__(self):
    self.reports = []

  def publish(self, what):
    self.reports.append(what)

  def poll(self):
    return self.reports[0] if self.reports else None

  def leave(self):
    pass

  def beat(self):
    pass

  def gone(self, silence_s):
    return None

  def counts(self):
    return {}

  def wait_for_the_others(self, seconds, silence_s):
    pass


def test_a_stall_is_told_to_the_other_processes_which_stop_with_it(capsys):
  peers, exited = _Peers(), {}
  stalled = Watchdog(
    0.2, process="process 1 of 2", peers=peers, exit=lambda status: exited.setdefault("1", status)
  )
  waiting = Watchdog(
    3600, process="process 0 of 2", peers=peers, exit=lambda status: exited.setdefault("0", status)
  )
  waiting.mark("step", 40)
  with stalled, waiting:
    stalled._thread.join(timeout=60)
    waiting._thread.join(timeout=60)  # its own timeout is an hour away: it stops on the report
  assert exited == {"1": STALLED, "0": STALLED}
  [report] = peers.reports  # the seconds waited depend on how late the thread woke up
  assert re.fullmatch(
    r"the start-up at step 0 of process 1 of 2 has not finished in \d+ s "
    r"\(parallel.stall_timeout_s=0.2\)",
    report,
  )
  lines = capsys.readouterr().err.splitlines()
  assert lines == [
    f"jaxtrain: stalled: {report}; exiting with status 76: the newest checkpoint is "
    "intact, run the same command to resume from it",
    f"jaxtrain: stalled: {report}; process 0 of 2 stops with it (here: step, step 40); "
    "exiting with status 76: the newest checkpoint is intact, run the same command "
    "to resume from it",
  ]


_STALLING_RUN = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, {tests!r})
    from conftest import load_config
    from jaxtrain import Hook, train_and_evaluate

    class Stall(Hook):  # a stand-in for a hung collective: never returns at step 30
      def run(self, loop):
        threading.Event().wait()

    c = load_config("digits")
    c.update(num_train_steps=60, checkpoint_every_steps=20, eval_every_steps=20, log_every_steps=10)
    c.model = dict(name="mlp", num_classes=10, features=(32,), dropout_rate=0.0)
    c.dataset.data_dir = {data_dir!r}
    c.parallel.stall_timeout_s = 20  # above any start-up, compile or save of this run, loaded too
    stall = sys.argv[2] == "stall"
    train_and_evaluate(c, sys.argv[1], hooks=[Stall(30)] if stall else [])
""")


def test_a_stalled_run_exits_76_in_one_line_and_the_same_command_resumes_exactly(
  tmp_path, data_dir
):
  script = tmp_path / "run.py"
  script.write_text(_STALLING_RUN.format(tests=str(ROOT / "tests"), data_dir=data_dir))
  run = lambda workdir, mode: subprocess.run(
    [sys.executable, str(script), str(workdir), mode],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  stalled = run(tmp_path / "w", "stall")
  assert stalled.returncode == STALLED, stalled.stderr[-2000:]
  [line] = [l for l in stalled.stderr.splitlines() if "stalled" in l]
  assert line.startswith(
    "jaxtrain: stalled: the step at step 30 of process 0 of 1 has not finished in "
  )
  assert checkpoint.saved_steps(str(tmp_path / "w"))[-1] == 20  # written whole before the stall
  assert run(tmp_path / "w", "go").returncode == 0
  assert run(tmp_path / "straight", "go").returncode == 0
  digest = lambda w: checkpoint.tree_digest(checkpoint.load_arrays(str(w))[1])
  assert digest(tmp_path / "w") == digest(tmp_path / "straight")

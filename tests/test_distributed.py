"""Multi-process runs on 127.0.0.1: `jax.distributed` with gloo CPU collectives.

Each process simulates 2 CPU devices; 2 processes x 2 devices is the same
4-device mesh and global batch as 1 process x 4 devices.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from jaxtrain.run import checkpoint
from jaxtrain.run import distributed
from jaxtrain.errors import UserError

from conftest import ROOT

STEPS = 60
CONFIG = [
  "--config",
  "configs/digits.py",
  f"--config.num_train_steps={STEPS}",
  "--config.log_every_steps=10",
  "--config.checkpoint_every_steps=20",
  "--config.eval_every_steps=1000",
  "--config.dataset.test_split=",
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(
  workdir,
  data_dir,
  *,
  processes: int,
  devices_each: int,
  tag: str,
  extra=(),
  command=None,
  gloo: bool = True,
):
  """Starts the job's processes; explicit flags even for 1 process (gloo collectives) unless
  `gloo` is False (one plain process: XLA's own all-reduce). `command(i, port)` replaces the
  CLI's command line for process i."""
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}",
    JAX_PLATFORMS="cpu",
    TFDS_DATA_DIR=data_dir,
  )
  port = _free_port()
  procs = []
  for i in range(processes):
    log = open(f"{workdir}.{tag}.{i}.log", "w")
    join = (
      [
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num_processes",
        str(processes),
        "--process_id",
        str(i),
      ]
      if gloo
      else []
    )
    argv = (
      command(i, port)
      if command
      else [
        sys.executable,
        "-m",
        "jaxtrain.tools.cli",
        "train",
        *CONFIG,
        *extra,
        "--workdir",
        str(workdir),
        *join,
      ]
    )
    procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def _wait(procs, workdir, tag) -> list[int]:
  codes = [p.wait(timeout=600) for p in procs]
  logs = [open(f"{workdir}.{tag}.{i}.log").read() for i in range(len(procs))]
  return codes, logs


def _run(workdir, data_dir, tag="run", **kwargs):
  codes, logs = _wait(_launch(workdir, data_dir, tag=tag, **kwargs), workdir, tag)
  assert codes == [0] * len(codes), logs[0][-3000:] + logs[-1][-3000:]
  return logs


def _wait_for_checkpoint(workdir, step: int, procs, timeout: float = 300):
  deadline = time.time() + timeout
  while not os.path.isdir(os.path.join(workdir, "checkpoints", str(step))):
    assert time.time() < deadline and all(p.poll() is None for p in procs), "no checkpoint came"
    time.sleep(0.02)


def _params_digest(workdir) -> str:
  step, arrays = checkpoint.load_arrays(str(workdir))
  assert step == STEPS
  return checkpoint.tree_digest(arrays["params"])


@pytest.fixture(scope="module")
def two_by_two(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("dist") / "2x2"
  logs = _run(workdir, data_dir, processes=2, devices_each=2)
  return workdir, logs


def test_two_processes_match_one_process_with_the_same_devices(two_by_two, data_dir, tmp_path):
  workdir, logs = two_by_two
  one = tmp_path / "1x4"
  _run(one, data_dir, processes=1, devices_each=4)
  # Same 4-device mesh, same global batch, same gloo collectives: same bits.
  # (A plain 1x4 run, with XLA's in-process all-reduce, adds the 4 partial
  # gradients in another order: about 1e-7 apart; tests/test_parallel.py
  # bounds layout differences like that one.)
  assert _params_digest(workdir) == _params_digest(one)
  assert "process 0 of 2 joined" in logs[0] and "process 1 of 2 joined" in logs[1]
  assert f"step {STEPS} train " in logs[0]
  assert "step 10 train " not in logs[1]  # only process 0 logs
  data = os.listdir(os.path.join(workdir, "checkpoints", str(STEPS), "data"))
  assert sorted(n for n in data if n.endswith(".json")) == [
    "process_0-of-2.json",
    "process_1-of-2.json",
  ]


def test_killing_both_processes_twice_resumes_to_the_same_digest(two_by_two, data_dir, tmp_path):
  workdir = tmp_path / "killed"
  for after in (20, 40):  # both processes killed outright, twice, then restarted
    procs = _launch(workdir, data_dir, processes=2, devices_each=2, tag=f"kill{after}")
    _wait_for_checkpoint(workdir, after, procs)
    for p in procs:
      p.send_signal(signal.SIGKILL)
    codes, _ = _wait(procs, workdir, f"kill{after}")
    assert codes == [-signal.SIGKILL] * 2
  _run(workdir, data_dir, processes=2, devices_each=2)
  assert _params_digest(workdir) == _params_digest(two_by_two[0])
  manifest = json.load(open(workdir / "manifest.json"))
  assert [r["step"] for r in manifest["resumes"]][:1] == [20] and len(manifest["resumes"]) == 2


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_to_process_1_alone_stops_both_at_one_step_and_resumes_to_the_digest(
  two_by_two, data_dir, tmp_path, signal_name
):
  workdir = tmp_path / "signalled"
  procs = _launch(workdir, data_dir, processes=2, devices_each=2, tag="signal")
  _wait_for_checkpoint(workdir, 20, procs)
  procs[1].send_signal(getattr(signal, signal_name))  # process 0 is not told
  codes, logs = _wait(procs, workdir, "signal")
  assert codes == [75, 75], logs[0][-2000:] + logs[1][-2000:]
  stops = [
    re.search(r"jaxtrain: preempted: (\w+) received: saved a checkpoint at step (\d+)", log)
    for log in logs
  ]
  assert [m[1] for m in stops] == [signal_name] * 2
  step = int(stops[0][2])
  assert int(stops[1][2]) == step and step % 10 == 0 and 20 < step < STEPS  # stop_check_every_steps
  assert checkpoint.saved_steps(str(workdir))[-1] == step
  _run(workdir, data_dir, processes=2, devices_each=2)
  assert _params_digest(workdir) == _params_digest(two_by_two[0])


_STALLING_PROCESS = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, {tests!r})
    from conftest import load_config
    from jaxtrain import Hook, train_and_evaluate
    from jaxtrain.run import distributed

    workdir, mode, port, process_id = sys.argv[1:]
    distributed.initialize(f"127.0.0.1:{{port}}", 2, int(process_id))

    class Stall(Hook):  # a stand-in for a process that stops making progress: never returns
      def run(self, loop):
        threading.Event().wait()

    c = load_config("digits")  # CONFIG's run
    c.update(num_train_steps={steps}, log_every_steps=10, checkpoint_every_steps=20,
             eval_every_steps=1000)
    c.dataset.test_split = ""
    c.parallel.stall_timeout_s = 20  # steps after the first (start-up and compiles: 1800 s)
    stall = mode == "stall" and process_id == "1"
    train_and_evaluate(c, workdir, hooks=[Stall(30)] if stall else [])
""")


def test_a_stalled_process_ends_both_with_one_line_each_and_the_restart_is_bit_identical(
  two_by_two, data_dir, tmp_path
):
  script, workdir = tmp_path / "job.py", tmp_path / "stalled"
  script.write_text(_STALLING_PROCESS.format(tests=str(ROOT / "tests"), steps=STEPS))
  job = lambda mode: (
    lambda i, port: [sys.executable, str(script), str(workdir), mode, str(port), str(i)]
  )
  codes, logs = _wait(
    _launch(workdir, data_dir, processes=2, devices_each=2, tag="stall", command=job("stall")),
    workdir,
    "stall",
  )
  assert codes == [76, 76], logs[0][-2000:] + logs[1][-2000:]
  for i, log in enumerate(logs):
    [line] = [l for l in log.splitlines() if l.startswith("jaxtrain: stalled")]
    assert re.fullmatch(
      rf"jaxtrain: stalled: the step at step 30 of process {i} of 2 has not "
      r"finished in \d+ s \(parallel.stall_timeout_s=20\)(; process . of 2 stops "
      r"with it \(here: \w+, step \d+\))?; exiting with status 76: the newest "
      r"checkpoint is intact, run the same command to resume from it",
      line,
    ), line
  assert "Traceback" not in logs[0] + logs[1]
  assert checkpoint.saved_steps(str(workdir)) == [20]
  codes, logs = _wait(
    _launch(workdir, data_dir, processes=2, devices_each=2, tag="restart", command=job("go")),
    workdir,
    "restart",
  )
  assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
  assert _params_digest(workdir) == _params_digest(two_by_two[0])


def _train_losses(workdir) -> dict[int, float]:
  return {
    e["step"]: e["loss"]
    for e in map(json.loads, open(workdir / "metrics.jsonl"))
    if e["split"] == "train"
  }


def test_a_run_resumes_on_fewer_and_then_on_more_processes(two_by_two, data_dir, tmp_path):
  workdir, legs = tmp_path / "elastic", [(2, 2, 20), (1, 4, 40), (4, 1, STEPS)]
  for n, (processes, devices_each, stop) in enumerate(legs):
    # One process joins with the flags too: gloo's collectives, the 2x2 run's bits. (XLA's
    # in-process all-reduce sums in another order, 1e-7 apart at step 20, which 40 more
    # steps of this schedule grow to 3e-4 in the loss: the layouts test bounds that.)
    _run(
      workdir,
      data_dir,
      tag=f"leg{n}",
      processes=processes,
      devices_each=devices_each,
      extra=[f"--stop_at_step={stop}"] if stop < STEPS else [],
    )
    data = os.listdir(os.path.join(workdir, "checkpoints", str(stop), "data"))
    assert sorted(n for n in data if n.endswith(".json")) == [
      f"process_{i}-of-{processes}.json" for i in range(processes)
    ]
  # The data position is the step: every later interval trained on the uninterrupted run's
  # batches, to the bit.
  resumed, straight = _train_losses(workdir), _train_losses(two_by_two[0])
  assert sorted(resumed) == sorted(straight) == list(range(10, STEPS + 1, 10))
  assert resumed == straight
  assert _params_digest(workdir) == _params_digest(two_by_two[0])
  resumes = json.load(open(workdir / "manifest.json"))["resumes"]
  assert [r["step"] for r in resumes] == [stop for _, _, stop in legs[:-1]]


def test_explicit_flags_must_come_together(monkeypatch):
  for variable in distributed.ENVIRONMENT.values():
    monkeypatch.delenv(variable, raising=False)
  with pytest.raises(
    UserError,
    match=r"a multi-process run needs --num_processes \(or "
    r"JAX_NUM_PROCESSES\) as well",
  ):
    distributed.initialize("127.0.0.1:1234", None, 0)
  with pytest.raises(UserError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
    distributed.initialize("127.0.0.1:1234", 2, 2)


def test_launch_settings_come_from_flags_or_jaxs_own_variables():
  env = {
    "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
    "JAX_NUM_PROCESSES": "4",
    "JAX_PROCESS_ID": "3",
  }
  assert distributed.launch_settings(environ=env) == ("10.0.0.1:1234", 4, 3)
  assert distributed.launch_settings(None, None, 1, environ=env) == (
    "10.0.0.1:1234",
    4,
    1,
  )  # flag wins
  assert distributed.launch_settings(environ={}) == (
    None,
    None,
    None,
  )  # one process, nothing to join
  coordinator, n, i = distributed.launch_settings(None, 1, None, environ={})  # --num_processes 1
  assert coordinator.startswith("127.0.0.1:") and (n, i) == (1, 0)
  with pytest.raises(UserError, match="JAX_PROCESS_ID='one' must be an integer"):
    distributed.launch_settings(environ=dict(env, JAX_PROCESS_ID="one"))


def test_num_processes_1_alone_trains(tmp_path, data_dir):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxtrain.tools.cli",
      "train",
      "--config",
      "digits",
      "--workdir",
      str(tmp_path / "w"),
      "--num_processes",
      "1",
      "--quiet",
      f"--config.dataset.data_dir={data_dir}",
      "--config.model.name=mlp",
      "--config.num_train_steps=20",
      "--config.eval_every_steps=10",
      "--config.checkpoint_every_steps=10",
      "--config.log_every_steps=10",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.load(open(tmp_path / "w" / "manifest.json"))["environment"]["process_count"] == 1


def test_launchers_are_detected_from_their_environment():
  assert distributed.detected_launcher({}) is None
  slurm = {
    "SLURM_JOB_ID": "7",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_NODELIST": "n[1-2]",
  }
  assert distributed.detected_launcher(slurm) == "SLURM"
  assert distributed.detected_launcher({**slurm, "SLURM_NTASKS": "1"}) is None  # one task
  assert distributed.detected_launcher({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) is None  # salloc
  assert (
    distributed.detected_launcher(
      {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1"}
    )
    == "Open MPI"
  )
  assert (
    distributed.detected_launcher({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOBSET_NAME": "train"})
    == "Kubernetes JobSet"
  )
  assert distributed.detected_launcher({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None


def test_the_command_line_leaves_xlas_collective_timeouts_as_they_are(monkeypatch):
  """A stuck collective fails fast and loudly (XLA:CPU's 40 s), not after the stall timeout."""
  from ml_collections import ConfigDict
  from jaxtrain.config import base_config
  from jaxtrain.tools import cli

  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  cli._set_xla_flags(base_config())
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
  cli._set_xla_flags(ConfigDict(dict(base_config(), deterministic_gpu_ops=True)))
  assert os.environ["XLA_FLAGS"].split() == [
    "--xla_force_host_platform_device_count=8",
    "--xla_gpu_deterministic_ops=true",
  ]

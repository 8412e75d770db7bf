"""`jaxtrain sweep`: Optuna studies of ordinary runs, pruning, best config, many workers."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from jaxtrain.run import checkpoint
from jaxtrain.tools import sweep
from jaxtrain.errors import UserError

from conftest import ROOT, load_config

# configs/digits.py with a small MLP and short runs: a trial takes seconds.
SMALL = [
  "--config.num_train_steps=60",
  "--config.eval_every_steps=15",
  "--config.log_every_steps=30",
  "--config.checkpoint_every_steps=30",
  "--config.dataset.test_split=",
  '--config.model={"name": "mlp", "num_classes": 10, "features": [64]}',
]


def _sweep(
  sweep_dir, data_dir, *extra, space="configs/sweeps/digits_lr_wd.py", trials=12, wait=True
):
  cmd = [
    sys.executable,
    "-m",
    "jaxtrain.tools.cli",
    "sweep",
    "--config",
    "configs/digits.py",
    "--space",
    space,
    "--trials",
    str(trials),
    "--workdir",
    str(sweep_dir),
    "--quiet",
    *SMALL,
    *extra,
  ]
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
  if not wait:
    return subprocess.Popen(
      cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def twelve(data_dir, tmp_path_factory):
  sweep_dir = tmp_path_factory.mktemp("sweep") / "lr-wd"
  proc = _sweep(sweep_dir, data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return sweep_dir, proc.stdout


def test_twelve_trials_finish_and_pruning_stops_some_early(twelve):
  sweep_dir, stdout = twelve
  result = sweep.summary(str(sweep_dir))
  states = [t["state"] for t in result["trials"]]
  assert len(states) == 12 and set(states) <= {"COMPLETE", "PRUNED"}
  pruned = [t for t in result["trials"] if t["state"] == "PRUNED"]
  assert pruned and all(t["last_step"] < 60 for t in pruned)
  for t in result["trials"]:  # each trial is an ordinary workdir with its manifest
    workdir = sweep_dir / t["workdir"]
    config = json.load(open(workdir / "config.json"))
    assert config["optimizer"]["learning_rate"] == t["params"]["optimizer.learning_rate"]
    assert config["optimizer"]["weight_decay"] == t["params"]["optimizer.weight_decay"]
    assert (workdir / "manifest.json").exists()
  table = stdout[stdout.index("\ntrial ") + 1 :].splitlines()  # after the trials' log lines
  assert table[0].split() == [
    "trial",
    "state",
    "optimizer.learning_rate",
    "optimizer.weight_decay",
    "value",
    "step",
  ]
  assert len(table) == 1 + 12 + 2  # header, trials, best, best config's path
  assert f"best: trial {result['best']['number']}" in stdout


def test_best_config_reproduces_the_best_trials_bits(twelve, data_dir, tmp_path):
  sweep_dir, _ = twelve
  best = sweep.summary(str(sweep_dir))["best"]
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxtrain.tools.cli",
      "train",
      "--config",
      str(sweep_dir / "best_config.py"),
      "--workdir",
      str(tmp_path / "again"),
      "--quiet",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  trial = checkpoint.load_arrays(str(sweep_dir / best["workdir"]))
  again = checkpoint.load_arrays(str(tmp_path / "again"))
  assert trial[0] == again[0] == 60
  assert checkpoint.tree_digest(trial[1]) == checkpoint.tree_digest(again[1])


def test_a_crashed_sweep_resumes_its_trial_and_finishes(data_dir, tmp_path):
  sweep_dir = tmp_path / "crash"
  longer = "--config.num_train_steps=300"  # so the kill lands mid-trial
  proc = _sweep(sweep_dir, data_dir, longer, "--grace_seconds=4", trials=3, wait=False)
  deadline = time.time() + 300
  while not (sweep_dir / "trials" / "1" / "checkpoints" / "30").exists():
    assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.2)
  proc.kill()
  proc.communicate()
  time.sleep(4 + 1)  # the dead worker's heartbeat goes stale
  again = _sweep(sweep_dir, data_dir, longer, "--grace_seconds=4", trials=3)
  assert again.returncode == 0, again.stderr[-2000:]
  result = sweep.summary(str(sweep_dir))
  finished = [t for t in result["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
  assert len(finished) == 3
  retried = [t for t in finished if t["workdir"] == "trials/1" and t["number"] != 1]
  assert retried, result["trials"]  # trial 1 ran again in its own workdir ...
  manifest = json.load(open(sweep_dir / "trials" / "1" / "manifest.json"))
  resumed = [r["step"] for r in manifest["resumes"]]
  assert len(resumed) == 1 and resumed[0] >= 30  # ... from its checkpoint


def _start_postgres(tmp_path):
  initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
  if not (initdb and pg_ctl):
    pytest.skip("PostgreSQL is not installed (initdb/pg_ctl not on PATH)")
  pytest.importorskip("psycopg", reason="psycopg (the postgres extra) is not installed")
  as_user = []
  if os.geteuid() == 0:  # postgres refuses to run as root
    if not shutil.which("runuser"):
      pytest.skip("running as root without runuser to start PostgreSQL as another user")
    as_user = ["runuser", "-u", "postgres", "--"]
  # pytest's temporary directories are private to this user: the server's own.
  home = tempfile.mkdtemp(prefix="jaxtrain-pg-")
  os.chmod(home, 0o755)
  data = os.path.join(home, "data")
  os.mkdir(data)
  if as_user:
    shutil.chown(data, "postgres")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  subprocess.run(
    [*as_user, initdb, "-D", data, "-A", "trust", "-U", "postgres"], check=True, capture_output=True
  )
  subprocess.run(
    [
      *as_user,
      pg_ctl,
      "-D",
      data,
      "-w",
      "-l",
      os.path.join(data, "log"),
      "-o",
      f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
      "start",
    ],
    check=True,
    capture_output=True,
  )
  subprocess.run(
    [
      *as_user,
      shutil.which("createdb") or "createdb",
      "-h",
      "127.0.0.1",
      "-p",
      str(port),
      "-U",
      "postgres",
      "sweeps",
    ],
    check=True,
    capture_output=True,
  )

  def stop():
    subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)

  return f"postgresql://postgres@127.0.0.1:{port}/sweeps", stop


def test_two_workers_share_one_postgresql_study(data_dir, tmp_path):
  url, stop = _start_postgres(tmp_path)
  try:
    sweep_dir = tmp_path / "shared"
    workers = [
      _sweep(
        sweep_dir,
        data_dir,
        f"--storage={url}",
        "--sampler=random",
        "--pruner=none",
        trials=6,
        wait=False,
      )
      for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-2000:] for o in outputs]
    result = sweep.summary(str(sweep_dir), url)
    finished = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    # MaxTrialsCallback stops each worker once 6 are done; one may overshoot by the trial it ran.
    assert 6 <= len(finished) <= 7 and len(result["trials"]) == len(finished)
    numbers = [t["number"] for t in finished]
    assert len(set(numbers)) == len(numbers)
    points = {tuple(sorted(t["params"].items())) for t in finished}
    assert len(points) == len(finished)  # no point proposed twice
    for t in finished:  # each trial ran once, start to end, in its own workdir
      steps = [
        json.loads(l)["step"]
        for l in open(sweep_dir / t["workdir"] / "metrics.jsonl")
        if '"train"' in l
      ]
      assert steps == [30, 60]
      assert json.load(open(sweep_dir / t["workdir"] / "manifest.json"))["resumes"] == []
    assert all("trial" in o[0] for o in outputs)  # both workers ran trials
    from jaxtrain.tools import report  # the report finds the study through sweep.json

    assert len(report.collect([str(sweep_dir)])["runs"]) == len(finished)
  finally:
    stop()


def test_space_errors_name_what_to_fix(tmp_path):
  config = load_config("digits")
  with pytest.raises(UserError, match="--space .*nope.py does not exist"):
    sweep.load_space(str(tmp_path / "nope.py"))
  bad = tmp_path / "bad.py"
  bad.write_text("def get_space():\n  return {'optimizer.learning_rate': (1e-3, 1e-1)}\n")
  with pytest.raises(
    UserError, match="must map config fields to jaxtrain.tools.sweep distributions"
  ):
    sweep.load_space(str(bad))
  with pytest.raises(UserError, match="names config.optimizer.lr, which the config does not have"):
    sweep.check_space({"optimizer.lr": sweep.loguniform(1e-3, 1)}, config, "tpe")
  with pytest.raises(UserError, match="--sampler=grid needs choice"):
    sweep.check_space({"optimizer.learning_rate": sweep.loguniform(1e-3, 1)}, config, "grid")


def test_bad_sweep_flags_are_one_line(tmp_path, data_dir):
  proc = _sweep(tmp_path / "s", data_dir, "--sampler=bayes")
  assert proc.returncode == 2
  assert (
    proc.stderr.strip().splitlines()[-1]
    == "jaxtrain: error: --sampler=bayes must be one of tpe, random, grid"
  )
  proc = _sweep(
    tmp_path / "s", data_dir, "--storage=postgresql://nobody@127.0.0.1:1/none", trials=1
  )
  assert proc.returncode == 1
  assert (
    proc.stderr.strip()
    .splitlines()[-1]
    .startswith("jaxtrain: error: --storage postgresql://nobody@127.0.0.1:1/none cannot be opened")
  )


def test_the_pruning_hook_alone_reports_each_evaluation_and_prunes_when_told():
  import types
  import optuna

  reported = []
  trial = types.SimpleNamespace(
    report=lambda value, step: reported.append((step, value)),
    should_prune=lambda: len(reported) >= 2,
  )
  hook = sweep.Pruning(trial, "eval/accuracy")
  loop = types.SimpleNamespace(step=10, events={"train": {"accuracy": 0.1}})
  hook(loop)  # no evaluation at this step: nothing reported
  loop.events = {"eval": {"accuracy": 0.5}}
  hook(loop)
  loop.step, loop.events = 20, {"eval": {"accuracy": 0.6}}
  with pytest.raises(optuna.TrialPruned, match="pruned at step 20: eval/accuracy=0.6"):
    hook(loop)
  assert reported == [(10, 0.5), (20, 0.6)]


def test_best_config_of_a_sweep_over_user_code_names_its_files_absolutely(tmp_path):
  (tmp_path / "sweep.json").write_text(json.dumps({"config_dir": "/experiments/x"}))
  best = {
    "number": 3,
    "value": 0.5,
    "params": {"optimizer.learning_rate": 0.1},
    "workdir": "trials/3",
  }
  (tmp_path / "trials" / "3").mkdir(parents=True)
  config = load_config("digits")
  config.model.name, config.task = "model.py:Net", "/abs/loss.py:ce"
  (tmp_path / "trials" / "3" / "config.json").write_text(config.to_json_best_effort())
  path = sweep.write_best_config(str(tmp_path), best)
  spec = __import__("importlib.util").util.spec_from_file_location("best", path)
  module = __import__("importlib.util").util.module_from_spec(spec)
  spec.loader.exec_module(module)
  written = module.get_config()
  assert written.model.name == "/experiments/x/model.py:Net" and written.task == "/abs/loss.py:ce"


def test_trials_with_early_stopping_are_ranked_by_the_checkpoint_they_would_deploy():
  from ml_collections import ConfigDict
  from jaxtrain.tools.sweep import trial_value

  events = [
    {"step": s, "split": "eval", "loss": l, "accuracy": a}
    for s, l, a in [(100, 0.50, 0.80), (200, 0.30, 0.90), (300, 0.45, 0.86)]
  ]
  events.append({"step": 300, "split": "test", "loss": 0.31, "accuracy": 0.89})
  es = ConfigDict(dict(metric="loss", mode="min"))
  assert trial_value(events, "eval/loss", ConfigDict(dict(metric="", mode="min"))) == 0.45  # last
  assert trial_value(events, "eval/loss", es) == 0.30  # the best evaluation
  assert trial_value(events, "eval/accuracy", es) == 0.90  # of the same checkpoint
  assert trial_value(events, "eval/loss", es, {"best_step": 300}) == 0.45  # as best.json names
  assert trial_value(events, "test/accuracy", es) == 0.89
  assert trial_value(events, "eval/f1", es) is None

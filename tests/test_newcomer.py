"""A newcomer's first hour: each defect a new user hit, by the command that hit it.

(Defect 3, predict/export from a relative workdir and of the best checkpoint,
is checked in test_predict.py, where a run with best checkpoints is trained.)
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from jaxtrain.tools.cli import main

from conftest import ROOT


def _run(*args, cwd=ROOT, env=None):
  return subprocess.run(
    [sys.executable, "-m", "jaxtrain.tools.cli", *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, **(env or {})),
  )


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("flag", ["--help", "-h", "--helpfull"])
def test_1_train_and_sweep_help_lists_their_flags(command, flag):
  out = _run(command, flag)
  assert out.returncode == 0, out.stderr
  for name in ("--config FILE", "--workdir", "--stop_at_step", "--coordinator"):
    assert name in out.stdout
  assert ("--space" in out.stdout) == (command == "sweep")


def test_1_the_command_and_data_import_have_real_help():
  out = _run("--help")
  assert out.returncode == 0 and "commands:" in out.stdout and "Exit status:" in out.stdout
  from jaxtrain.data import importing
  from jaxtrain.tools.cli import _import_parser

  actions = _import_parser(importing)._actions
  assert len(actions) == 23 and all(a.help for a in actions)  # -h, sources and 21 options
  for argv in (["data", "--help"], ["data", "import", "--help"]):
    out = _run(*argv)
    assert out.returncode == 0 and "error" not in out.stdout + out.stderr
    for action in actions:
      assert action.help.split()[0] in out.stdout
  assert _run("--version").stdout.startswith("jaxtrain ")


def test_2_a_sweep_directory_refuses_another_question(tmp_path, capsys):
  sweep_dir = tmp_path / "sweep"
  sweep_dir.mkdir()
  record = {
    "metric": "eval/loss",
    "direction": "minimize",
    "storage": None,
    "config_dir": None,
    "space": {
      "optimizer.learning_rate": {"kind": "loguniform", "low": 1e-4, "high": 0.3, "values": []}
    },
  }
  from conftest import load_config

  record["config"] = json.loads(load_config("digits").to_json_best_effort())
  (sweep_dir / "sweep.json").write_text(json.dumps(record))
  before = (sweep_dir / "sweep.json").read_text()
  argv = [
    "sweep",
    "--config",
    "configs/digits.py",
    "--space",
    "configs/sweeps/digits_lr_wd.py",
    "--trials",
    "4",
    "--workdir",
    str(sweep_dir),
  ]
  capsys.readouterr()
  assert main(argv + ["--metric", "eval/accuracy", "--direction", "maximize"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [
    f"jaxtrain: error: {sweep_dir} holds a sweep of eval/loss (minimize) that differs "
    "from this one (--metric eval/loss -> eval/accuracy, --direction minimize -> "
    "maximize, --space changed): use a new sweep directory"
  ]
  assert main(argv + ["--config.num_train_steps=50"]) == 1
  err = capsys.readouterr().err
  assert "config num_train_steps: 1000 -> 50" in err and "--space changed" in err
  assert (sweep_dir / "sweep.json").read_text() == before  # not rewritten
  assert not (sweep_dir / "trials").exists()


def test_4_a_typo_in_a_nested_field_is_named_with_its_fix(capsys):
  assert (
    main(
      [
        "train",
        "--config",
        "configs/digits.py",
        "--workdir",
        "unused",
        "--config.optimizer.learing_rate=0.1",
      ]
    )
    == 2
  )
  assert capsys.readouterr().err.strip() == (
    "jaxtrain: error: config has no field 'optimizer.learing_rate' (from "
    "--config.optimizer.learing_rate=0.1); did you mean 'learning_rate'?"
  )


def test_5_training_before_importing_says_which_command_imports(tmp_path):
  out = _run(
    "train",
    "--config",
    "configs/spam.py",
    "--workdir",
    str(tmp_path / "w"),
    f"--config.dataset.data_dir={tmp_path / 'dd'}",
  )
  assert out.returncode == 1
  assert out.stderr.strip() == (
    f"jaxtrain: error: dataset.name='spam' is not in {tmp_path / 'dd'}: neither a `jaxtrain data "
    f"import` there nor a TFDS dataset; this config imports it: run `jaxtrain data import "
    f"--config configs/spam.py --data_dir {tmp_path / 'dd'}` first"
  )
  assert not (tmp_path / "w").exists()


def test_6_and_7_curves_line_only_for_a_run_and_never_an_uninstalled_command(tmp_path, data_dir):
  ok = _run(
    "train",
    "--config",
    "configs/digits.py",
    "--workdir",
    str(tmp_path / "w"),
    "--quiet",
    f"--config.dataset.data_dir={data_dir}",
    "--config.num_train_steps=5",
    "--config.eval_every_steps=5",
    "--config.checkpoint_every_steps=5",
    "--config.log_every_steps=5",
  )
  assert ok.returncode == 0, ok.stderr
  # Every event one line, every value at full precision: a log scraper's regex reads the value.
  import re
  from jaxtrain.run.metric_writers import read_metrics

  scraped = [
    (int(m[1]), float(m[2]))
    for m in re.finditer(r"step (\d+) eval .*\baccuracy=([-+0-9.e]+|nan|inf)", ok.stdout)
  ]
  logged = [
    (e["step"], e["accuracy"]) for e in read_metrics(str(tmp_path / "w")) if e["split"] == "eval"
  ]
  assert scraped == logged and len(logged) == 1
  curves = [line for line in ok.stdout.splitlines() if " curves: " in line]
  assert len(curves) == 1
  import importlib.util

  if importlib.util.find_spec("tensorboard") is None:  # an environment without TensorBoard
    assert (
      "tensorboard --logdir" not in curves[0] and "pip install 'jaxtrain[tensorboard]'" in curves[0]
    )
  else:
    assert f"tensorboard --logdir {tmp_path / 'w' / 'tensorboard'}" in curves[0]
  bad = _run(
    "train",
    "--config",
    "configs/digits.py",
    "--workdir",
    str(tmp_path / "new"),
    f"--config.dataset.data_dir={data_dir}",
    "--config.early_stopping.metric=f2",
  )
  assert bad.returncode == 1 and "curves" not in bad.stdout + bad.stderr
  assert bad.stderr.strip().startswith("jaxtrain: error: config.early_stopping.metric='f2' is not")
  assert not (tmp_path / "new").exists()  # no preprocess/ or anything else left behind


def test_8_the_same_bytes_from_another_path_are_the_same_version(tmp_path, capsys):
  sample = ROOT / "jaxtrain" / "sample_data" / "spam.csv"
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  shutil.copy(sample, tmp_path / "a" / "messages.csv")
  shutil.copy(sample, tmp_path / "b" / "export-2026-11.csv")
  dd = str(tmp_path / "dd")
  assert (
    main(
      ["data", "import", str(tmp_path / "a" / "messages.csv"), "--name", "spam", "--data_dir", dd]
    )
    == 0
  )
  assert (
    main(
      [
        "data",
        "import",
        str(tmp_path / "b" / "export-2026-11.csv"),
        "--name",
        "spam",
        "--data_dir",
        dd,
      ]
    )
    == 0
  )
  out = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("  ")]
  assert out[0].startswith("imported spam:1.0.0")  # (then the schema table, indented)
  assert out[1].startswith("unchanged, already imported as spam:1.0.0")


@pytest.mark.parametrize("command", ["inspect", "rerun", "report", "predict", "export"])
def test_1_every_other_command_has_help_too(command):
  from jaxtrain.tools.cli import COMMAND_SUMMARIES

  out = _run(command, "--help")
  assert out.returncode == 0 and COMMAND_SUMMARIES[command] in " ".join(out.stdout.split())
  lines = out.stdout.splitlines()
  options = [i for i, line in enumerate(lines) if line.startswith("  --")]
  assert options
  for i in options:  # argparse puts a description after the option, or on the next line
    described = bool(line_after(lines[i]).strip()) or lines[i + 1].startswith(" " * 24)
    assert described, f"{lines[i].split()[0]} has no description"


def line_after(option_line: str) -> str:
  """What follows an option's own name and metavar on its help line."""
  return option_line.strip().split("  ", 1)[1] if "  " in option_line.strip() else ""

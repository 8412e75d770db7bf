"""`jaxtrain report`: HTML, PNGs and plot data covering every run and sweep given."""

import json
import os
import subprocess
import sys

import pytest

from jaxtrain.tools import report
from jaxtrain.errors import UserError
from jaxtrain.run.loop import train_and_evaluate

from conftest import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  """Two plain runs and a 4-trial sweep, trained in this process."""
  from conftest import load_config
  from jaxtrain.tools import sweep

  root = tmp_path_factory.mktemp("report")
  base = load_config("digits")
  base.num_train_steps, base.log_every_steps, base.eval_every_steps = 40, 10, 20
  base.checkpoint_every_steps, base.dataset.test_split = 40, ""
  base.dataset.data_dir = data_dir
  base.model = dict(name="mlp", num_classes=10, features=(32,))
  workdirs = []
  for lr in (1e-3, 1e-2):
    c = base.copy_and_resolve_references()
    c.optimizer.learning_rate = lr
    workdirs.append(str(root / f"lr{lr}"))
    train_and_evaluate(c, workdirs[-1])
  space = {
    "optimizer.learning_rate": sweep.loguniform(1e-4, 1e-1),
    "optimizer.weight_decay": sweep.choice([0.0, 1e-3]),
  }
  sweep.run_sweep(base, space, str(root / "sw"), trials=4, pruner="none")
  return workdirs, str(root / "sw")


def test_report_has_every_run_in_the_plot_data_and_writes_pngs(runs, tmp_path):
  workdirs, sweep_dir = runs
  out = tmp_path / "report"
  proc = subprocess.run(
    [sys.executable, "-m", "jaxtrain.tools.cli", "report", *workdirs, sweep_dir, "--out", str(out)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  data = json.load(open(out / "plot_data.json"))
  names = ["lr0.001", "lr0.01"] + [f"sw/trial {n}" for n in range(4)]
  assert data["runs"] == names
  for curve in ("train/loss", "eval/loss", "eval/accuracy"):
    assert sorted(data["curves"][curve]) == sorted(names)
  assert [p[0] for p in data["curves"]["train/loss"]["lr0.01"]] == [10, 20, 30, 40]
  sweep_plots = data["sweeps"]["sw"]
  assert sorted(sweep_plots["params"]) == ["optimizer.learning_rate", "optimizer.weight_decay"]
  assert sorted(p[2] for p in sweep_plots["params"]["optimizer.learning_rate"]) == [0, 1, 2, 3]
  assert set(sweep_plots["importance"]) == {"optimizer.learning_rate", "optimizer.weight_decay"}
  for png in ("curves.png", "sw-params.png", "sw-importance.png"):
    assert (out / png).read_bytes()[:8] == PNG_MAGIC and (out / png).stat().st_size > 5000
  page = (out / "index.html").read_text()
  for src in ("curves.png", "sw-params.png", "sw-importance.png"):
    assert f"src='{src}'" in page
  assert "sw/trial 3" in page and "best: trial" in page
  # The terminal table: a row per run, the varied config fields as columns.
  lines = proc.stdout.splitlines()
  assert lines[0].split()[:2] == ["run", "steps"] and "optimizer.learning_rate" in lines[0]
  assert len([l for l in lines if l.startswith(("lr0.", "sw/trial"))]) == 6


def test_report_of_a_directory_that_is_not_a_run(tmp_path):
  with pytest.raises(UserError, match="is neither a workdir .* nor a sweep"):
    report.write_report([str(tmp_path)], str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")

"""experiments/input_wait.py keeps working (--quick: digits, a few steps, no timing asserted)."""

import json
import subprocess
import sys

from conftest import ROOT


def test_quick_run_reports_the_data_wait_of_each_run(tmp_path, data_dir):
  out = tmp_path / "wait.json"
  proc = subprocess.run(
    [
      sys.executable,
      "experiments/input_wait.py",
      "--quick",
      "--data_dir",
      data_dir,
      "--out",
      str(out),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  runs = json.loads(out.read_text())["runs"]
  assert [(r["model"], r["source"]) for r in runs] == [
    ("cnn", "memory"),
    ("resnet", "array_record"),
  ]
  assert all(0 <= r["data_wait"] < 1 and r["steps_per_sec"] > 0 for r in runs)
  assert "worst data wait:" in proc.stdout

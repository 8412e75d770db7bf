"""experiments/loop_overhead.py keeps working (--quick: a few steps, no timing asserted)."""

import json
import subprocess
import sys

from conftest import ROOT


def test_quick_run_prints_the_table_and_writes_json(tmp_path, data_dir):
  out = tmp_path / "loop.json"
  proc = subprocess.run(
    [
      sys.executable,
      "experiments/loop_overhead.py",
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
  result = json.loads(out.read_text())
  assert result["benchmark"] == "loop_overhead" and result["timed_steps"] == 20
  assert sorted(result["steps_per_sec"]) == ["hand jit k=1", "jaxtrain auto", "jaxtrain k=1"]
  assert all(len(v) == 1 and v[0] > 0 for v in result["steps_per_sec"].values())
  assert result["ratio_k1"] > 0 and result["ratio_auto"] > 0
  assert "ratios to the hand loop: k=1" in proc.stdout

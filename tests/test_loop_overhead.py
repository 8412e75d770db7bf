"""experiments/loop_overhead.py keeps working (--quick: a few steps, no timing asserted)."""

import json
import subprocess
import sys

from conftest import ROOT


def test_quick_run_prints_the_table_and_writes_json(tmp_path, data_dir):
  out = tmp_path / "loop.json"
  proc = subprocess.run([sys.executable, "experiments/loop_overhead.py", "--quick",
                         "--data_dir", data_dir, "--out", str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result["benchmark"] == "loop_overhead" and result["timed_steps"] == 20
  assert len(result["jaxtrain_steps_per_sec"]) == len(result["hand_loop_steps_per_sec"]) == 1
  assert result["ratio"] > 0
  assert "ratio jaxtrain / hand:" in proc.stdout

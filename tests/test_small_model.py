"""experiments/small_model.py keeps working (--quick: digits, a few steps, no timing asserted)."""

import json
import subprocess
import sys

from conftest import ROOT


def test_quick_run_compares_the_flax_example_and_jaxtrain_k1_and_k(tmp_path, data_dir):
  out = tmp_path / "small.json"
  proc = subprocess.run(
    [
      sys.executable,
      "experiments/small_model.py",
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
  assert set(result["steps_per_sec"]) == {"flax nnx example", "jaxtrain", "jaxtrain k=4"}
  assert result["ratio_to_flax_example"]["flax nnx example"] == 1.0
  assert all(v > 0 for v in result["steps_per_sec"].values())
  assert all(0 <= a <= 1 for a in result["final_train_accuracy"].values())
  assert "ratio jaxtrain k=4 / flax nnx example:" in proc.stdout

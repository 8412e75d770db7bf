"""experiments/startup.py keeps working, and `jaxtrain train` fills its default compilation
cache."""

import json
import subprocess
import sys

from conftest import ROOT


def test_quick_run_compares_cold_and_warm_starts(tmp_path, data_dir):
  out = tmp_path / "startup.json"
  proc = subprocess.run(
    [
      sys.executable,
      "experiments/startup.py",
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
  assert (
    result["rounds"] == 1 and result["cold_first_step_s"] > 0 and result["warm_first_step_s"] > 0
  )
  assert result["cache_entries"] > 0  # the default cache directory under XDG_CACHE_HOME was written
  assert "time to first step (s)" in proc.stdout

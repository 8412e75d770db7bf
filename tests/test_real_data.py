"""experiments/real_data.py keeps working (--quick: 40 steps per job, no accuracy asserted)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import real_data  # noqa: E402


def test_quick_run_trains_every_available_job_and_fits_its_baselines(tmp_path):
  available = [name for name, job in real_data.JOBS.items() if job["source"](tmp_path) is not None]
  if not available:
    pytest.skip(
      "no real data set is available (../shared/data/sms_spam, pip install --no-deps ISLP)"
    )
  out = tmp_path / "real.json"
  proc = subprocess.run(
    [
      sys.executable,
      "experiments/real_data.py",
      "--quick",
      "--jobs",
      ",".join(available),
      "--out",
      str(out),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())["results"]
  assert [r["job"] for r in results] == available
  for r in results:
    assert r["jaxtrain"]["tested_step"] > 0 and r["rows"] > 1000
    metric = "rmse" if "rmse" in r["jaxtrain"] else "f1"
    assert all(metric in m for m in r["baselines"].values())
    assert f"{r['job']:<10} {r['rows']:>7}  jaxtrain (default config)" in proc.stdout

"""experiments/chaos_resume.py in quick mode: random kills, every trial bit-identical."""

import subprocess
import sys

from conftest import ROOT


def test_random_stops_end_bit_identical(tmp_path):
  out = tmp_path / "chaos.json"
  result = subprocess.run(
    [
      sys.executable,
      "experiments/chaos_resume.py",
      "--trials",
      "2",
      "--quick",
      "--seed",
      "1",
      "--out",
      str(out),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stdout + result.stderr[-2000:]
  assert "2/2 trials ended bit-identical to an uninterrupted run" in result.stdout
  import json

  trials = json.loads(out.read_text())["trials"]
  assert all(t["kills"] for t in trials)  # every trial really was interrupted

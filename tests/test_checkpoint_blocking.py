"""experiments/checkpoint_blocking.py keeps working (--quick: a tiny model, no timing asserted)."""

import json
import subprocess
import sys

from conftest import ROOT


def test_quick_run_measures_blocking_and_restores_the_checkpoint(tmp_path, data_dir):
  out = tmp_path / "ckpt.json"
  proc = subprocess.run(
    [
      sys.executable,
      "experiments/checkpoint_blocking.py",
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
  assert result["timed_saves"] == 2 and result["save_every_steps"] == 4
  # The tiny model's state (params + AdamW moments, float32) is what was saved.
  assert 3 * 4 * 100_000 < result["checkpoint_bytes"] < 3 * 4 * 200_000
  assert 0 <= result["blocked_share"] < 1 and result["restore_seconds"] > 0
  assert "blocked share of the save interval:" in proc.stdout

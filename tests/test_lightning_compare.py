"""experiments/lightning_compare.py keeps working (--quick; no timing asserted).

PyTorch Lightning is the optional `bench` extra: where it is not installed
the script must say how to install it, in one line, and exit 2.
"""

import importlib.util
import json
import subprocess
import sys

from conftest import ROOT


def test_quick_run_or_the_install_hint(tmp_path, data_dir):
  out = tmp_path / "lightning.json"
  proc = subprocess.run(
    [
      sys.executable,
      "experiments/lightning_compare.py",
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
  if importlib.util.find_spec("lightning") is None:
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines() == [
      "lightning_compare.py: PyTorch Lightning is not installed; install the optional extra: "
      "pip install -e '.[bench]'"
    ]
    return
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result["timed_steps"] == 10 and result["ratio"] > 0
  # Both learned something from 15 steps on the digits (chance is 0.1).
  assert result["jaxtrain_test_accuracy"] > 0.3 and result["lightning_test_accuracy"] > 0.3

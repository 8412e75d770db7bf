"""Chaos test of resume: kill training at random moments, resume, compare the bits.

Each trial starts `jaxtrain train` in a fresh workdir, stops it with SIGKILL,
SIGTERM, SIGINT or SIGHUP at a random moment of any phase (start-up, restore,
training, evaluation, the final test, the final save; checkpoints are written
every few steps, so many stops land inside an asynchronous write), starts the
same command again, possibly stops it again, and finally lets it finish. A
trial passes when every exit was 0, 75 (a handled signal) or a SIGKILL, and
the final state digest (params, optimizer state, batch statistics, PRNG key,
step) and test metrics equal an uninterrupted run's.

    python experiments/chaos_resume.py --trials 20
    python experiments/chaos_resume.py --trials 3 --quick     # what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_args(workdir: Path, data_dir: str, steps: int) -> list[str]:
  return [
    sys.executable,
    "-m",
    "jaxtrain.tools.cli",
    "train",
    "--config",
    str(ROOT / "configs/digits.py"),
    "--workdir",
    str(workdir),
    f"--config.dataset.data_dir={data_dir}",
    f"--config.num_train_steps={steps}",
    "--config.checkpoint_every_steps=7",
    "--config.log_every_steps=10",
    f"--config.eval_every_steps={steps // 3}",
    "--config.model.name=mlp",
  ]


SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def state_digest(workdir: Path) -> str:
  """The final state's digest and the test split's metrics (as they were measured)."""
  out = subprocess.run(
    [sys.executable, "-m", "jaxtrain.tools.cli", "inspect", str(workdir), "--json"],
    capture_output=True,
    text=True,
    check=True,
    cwd=ROOT,
  )
  report = json.loads(out.stdout)
  test = {k: v for k, v in report["metrics"].get("test", {}).items() if k != "time"}
  return report["state_digest"] + json.dumps(test, sort_keys=True)


def trial(workdir: Path, data_dir: str, steps: int, budget: float, rng: random.Random) -> dict:
  """Interrupts one run 1-3 times at random moments, then lets it finish.

  A run that ends before its first kill tested nothing: it starts over in a
  fresh workdir, so every trial is interrupted at least once.
  """
  planned, kills = rng.randint(1, 3), []
  while True:
    proc = subprocess.Popen(
      run_args(workdir, data_dir, steps),
      cwd=ROOT,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    if len(kills) < planned:
      delay, sig = rng.uniform(0.3, 1.05 * budget), rng.choice(SIGNALS)
      try:
        proc.wait(timeout=delay)
      except subprocess.TimeoutExpired:
        proc.send_signal(sig)
        kills.append((round(delay, 2), sig.name))
    stderr = proc.communicate(timeout=600)[1]
    if proc.returncode == 0 and not kills:
      shutil.rmtree(workdir)
      continue
    if proc.returncode == 0:
      return {"kills": kills, "digest": state_digest(workdir)}
    if proc.returncode not in (-signal.SIGKILL, 75):  # a handled signal is 75 in every phase
      raise RuntimeError(f"unexpected exit {proc.returncode} after {kills[-1:]}: {stderr[-1500:]}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true", help="a short run (for the test suite)")
  parser.add_argument("--out", default="", help="write the results as JSON here")
  args = parser.parse_args(argv)
  steps = 70 if args.quick else 300
  rng = random.Random(args.seed)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    data_dir = str(tmp / "data")
    start = time.monotonic()
    subprocess.run(
      run_args(tmp / "reference", data_dir, steps), cwd=ROOT, check=True, capture_output=True
    )
    budget = time.monotonic() - start  # kills land anywhere from start-up to the end
    reference = state_digest(tmp / "reference")
    results = []
    for i in range(args.trials):
      result = trial(tmp / f"trial{i}", data_dir, steps, budget, rng)
      result["identical"] = result["digest"] == reference
      results.append(result)
      print(
        f"trial {i:2d}  kills {result['kills']!s:<45}  "
        f"{'bit-identical' if result['identical'] else 'DIFFERENT'}",
        flush=True,
      )
  identical = sum(r["identical"] for r in results)
  kills = [k for r in results for k in r["kills"]]
  counts = ", ".join(f"{sum(k[1] == s.name for k in kills)} {s.name}" for s in SIGNALS)
  print(
    f"{identical}/{len(results)} trials ended bit-identical to an uninterrupted run "
    f"({steps} steps, reference digest {reference[:16]}; {len(kills)} stops: {counts}; "
    "every exit 0, 75 or SIGKILL)"
  )
  if args.out:
    Path(args.out).write_text(
      json.dumps({"steps": steps, "reference": reference, "trials": results}, indent=2)
    )
  return 0 if identical == len(results) else 1


if __name__ == "__main__":
  sys.exit(main())

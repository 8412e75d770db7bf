"""Import scale: `jaxtrain data import` of a synthetic CSV of N rows: rows/s and peak memory.

Each N gets a CSV of mixed columns (a float, an integer, a 4-value category,
a 4-word text, an ISO date, a float label), imported by the real command in
a fresh process (its peak RSS is the process's own), next to
`pyarrow.csv.read_csv` of the same file in the same run (the floor: reading
alone). `--legacy N` also imports with the row-by-row reader of jaxtrain
0.2 (Python dicts, TFDS's own serializer) for the speed-up.
`--bad_row R` writes a malformed number at data row R (1-based) and checks
the import refuses it naming the file, line and column.

    python experiments/import_scale.py --rows 100000,1000000,10000000 --legacy 1000000
    python experiments/import_scale.py --rows 10000000 --bad_row 9000001
    python experiments/import_scale.py --quick     # what the test suite runs (no timing claims)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORDS = np.array(["red", "green", "blue", "cheap", "fast", "quiet", "new", "old", "big", "small"])
COLUMNS = "amount=float,units=int,colour=category,note=text,day=time"


def write_csv(path: Path, rows: int, seed: int = 0, bad_row: int = 0, chunk: int = 500_000) -> None:
  """The synthetic table, written a chunk at a time (so memory stays flat here too)."""
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    f.write("amount,units,colour,note,day,label\n")
    for start in range(0, rows, chunk):
      n = min(chunk, rows - start)
      amount = np.char.mod("%.4f", rng.normal(100, 30, n))
      if start < bad_row <= start + n:
        amount[bad_row - start - 1] = "12.5.1"  # a typo: not a number
      units = rng.integers(0, 1000, n).astype(str)
      colour = np.array(["red", "green", "blue", "grey"])[rng.integers(0, 4, n)]
      note = [" ".join(w) for w in WORDS[rng.integers(0, len(WORDS), (n, 4))]]
      day = (np.datetime64("2020-01-01") + rng.integers(0, 1500, n)).astype(str)
      label = np.char.mod("%.3f", rng.normal(0, 1, n))
      f.write("\n".join(",".join(r) for r in zip(amount, units, colour, note, day, label)))
      f.write("\n")


_CHILD = """
import resource, sys, time
from jaxtrain.data import columns
from jaxtrain.data.importing import rows
if sys.argv[1] == "legacy":  # every row a Python dict, inferred and checked one by one
  columns.is_table = lambda path: False
  rows._READERS[".csv"] = lambda path: rows._text_table_rows(path, "", "")
from jaxtrain.tools.cli import main
start = time.perf_counter()
status = main(sys.argv[2:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RESULT", status, time.perf_counter() - start, peak)
"""


def import_once(csv: Path, data_dir: Path, engine: str) -> dict:
  argv = [
    "data",
    "import",
    str(csv),
    "--name",
    "scale",
    "--label",
    "label",
    "--columns",
    COLUMNS,
    "--data_dir",
    str(data_dir),
  ]
  proc = subprocess.run(
    [sys.executable, "-c", _CHILD, engine, *argv],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
  )
  result = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
  if not result:
    raise RuntimeError(proc.stderr[-3000:])
  _, status, seconds, rss_kb = result[-1].split()
  return {
    "status": int(status),
    "seconds": float(seconds),
    "peak_rss_mb": int(rss_kb) / 1024,
    "stderr": proc.stderr.strip().splitlines()[-1:] if int(status) else [],
  }


def pyarrow_read_seconds(csv: Path) -> float:
  """`pyarrow.csv.read_csv` of the file, in a process of its own: a child forked from a
  parent holding the table would count the parent's memory in its peak RSS."""
  code = (
    "import sys, time, pyarrow.csv as c; t = time.perf_counter(); c.read_csv(sys.argv[1]); "
    "print(time.perf_counter() - t)"
  )
  out = subprocess.run(
    [sys.executable, "-c", code, str(csv)], capture_output=True, text=True, check=True
  )
  return float(out.stdout.split()[-1])


def write_csv_apart(path: Path, rows: int, bad_row: int = 0) -> None:
  """write_csv in a child process: this process stays small, so the import children it
  starts (whose peak RSS counts the memory they were forked from) are measured alone."""
  subprocess.run(
    [sys.executable, __file__, "--write_csv", str(path), str(rows), str(bad_row)],
    check=True,
    cwd=ROOT,
  )


def main(argv=None) -> dict:
  if argv is None and len(sys.argv) == 5 and sys.argv[1] == "--write_csv":
    write_csv(Path(sys.argv[2]), int(sys.argv[3]), bad_row=int(sys.argv[4]))
    return {}
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", default="100000,1000000", help="comma-separated row counts")
  parser.add_argument("--legacy", default="", help="row counts also imported the 0.2 way")
  parser.add_argument("--bad_row", type=int, default=0, help="a malformed value at this data row")
  parser.add_argument("--quick", action="store_true", help="2,000 rows, legacy too, and a bad row")
  parser.add_argument("--out", default="import_scale.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.rows, args.legacy, args.bad_row = "2000", "2000", 1500
  legacy = {int(n) for n in args.legacy.split(",") if n}
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for n in [int(n) for n in args.rows.split(",")]:
      csv = Path(tmp) / f"rows_{n}.csv"
      write_csv_apart(csv, n)
      row = {
        "rows": n,
        "file_mb": csv.stat().st_size / 2**20,
        "pyarrow_read_s": pyarrow_read_seconds(csv),
      }
      ours = import_once(csv, Path(tmp) / f"dd_{n}", "columnar")
      assert ours["status"] == 0, ours
      row.update(
        seconds=ours["seconds"], rows_per_s=n / ours["seconds"], peak_rss_mb=ours["peak_rss_mb"]
      )
      if n in legacy:
        old = import_once(csv, Path(tmp) / f"dd_legacy_{n}", "legacy")
        assert old["status"] == 0, old
        row.update(
          legacy_seconds=old["seconds"],
          legacy_rows_per_s=n / old["seconds"],
          legacy_peak_rss_mb=old["peak_rss_mb"],
          speedup=old["seconds"] / ours["seconds"],
        )
      results.append(row)
      csv.unlink()
    bad = None
    if args.bad_row:
      n = max(int(n) for n in args.rows.split(","))
      csv = Path(tmp) / f"bad_{n}.csv"
      write_csv_apart(csv, n, bad_row=args.bad_row)
      got = import_once(csv, Path(tmp) / "dd_bad", "columnar")
      bad = {
        "rows": n,
        "bad_row": args.bad_row,
        "status": got["status"],
        "message": got["stderr"],
        "seconds": got["seconds"],
        "peak_rss_mb": got["peak_rss_mb"],
      }
  print(
    f"{'rows':>11} {'MB':>7} {'import s':>9} {'rows/s':>10} {'peak RSS MB':>12} "
    f"{'x pyarrow read':>15} {'0.2 rows/s':>11} {'speed-up':>9}"
  )
  for r in results:
    print(
      f"{r['rows']:>11,} {r['file_mb']:>7.0f} {r['seconds']:>9.2f} {r['rows_per_s']:>10,.0f} "
      f"{r['peak_rss_mb']:>12.0f} {r['seconds'] / r['pyarrow_read_s']:>15.1f} "
      f"{r.get('legacy_rows_per_s', float('nan')):>11,.0f} {r.get('speedup', float('nan')):>9.1f}"
    )
  if bad:
    print(
      f"malformed value at data row {bad['bad_row']:,} of {bad['rows']:,}: exit {bad['status']} "
      f"after {bad['seconds']:.1f} s: {' '.join(bad['message'])}"
    )
  result = {
    "benchmark": "import_scale",
    "date": time.strftime("%Y-%m-%d"),
    "results": results,
    "bad_row": bad,
    "cpu_count": os.cpu_count(),
  }
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()

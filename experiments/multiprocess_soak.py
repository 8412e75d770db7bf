"""Soak: many multi-process jobs on loopback, under load, with random signals; none may hang.

Each job trains the digits config on one of three layouts (2 processes x 2
simulated CPU devices, 4 x 1, 1 x 8), next to the load that used to hang such
jobs: other XLA processes with many simulated devices training in a loop
(jit and pmap), plus busy loops on the cores. Once the job's first checkpoint
is on disk, one of these happens at a random moment: nothing; SIGTERM, SIGINT
or SIGUSR1 to one process; SIGTERM to all; SIGKILL to one or all. The same
command is then run again until it finishes, and its final parameters are
compared with an uninterrupted run of the same layout.

A launch that has not ended `--hang_s` after it started is a hang: the
harness kills it (SIGKILL) and counts it. Printed at the end, per layout and
in all: runs, hangs, clean exits (0; 75 after a signal, 76 after a stall,
each with its one line), resumes, digests equal to the uninterrupted run; and
the load runs' own exits (a load run that ends at its stall limit is a hang).

`--layouts` also takes 1x4c: one process on 4 devices joined through a
coordinator (`--num_processes 1`: gloo's collectives), the job that hung 5
times in 5 before the dispatch bound. `--scan` instead sends SIGTERM to a
fresh and to a resumed one-process digits run at every `--scan_step` seconds
of the first `--scan_to`: every try must exit 75 with one line (or 0 having
finished), stop within a few steps of the signal, and resume to the
uninterrupted run's bits.

    python experiments/multiprocess_soak.py --jobs 30 --load 2 --busy 2
    python experiments/multiprocess_soak.py --scan --load 0 --busy 0   # quiet machine
    python experiments/multiprocess_soak.py --scan --load 2 --busy 2   # next to a load
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = {"2x2": (2, 2), "4x1": (4, 1), "1x8": (1, 8), "1x4": (1, 4), "1x4c": (1, 4)}
PLANS = (
  "none",
  "SIGTERM one",
  "SIGINT one",
  "SIGUSR1 one",
  "SIGTERM all",
  "SIGKILL one",
  "SIGKILL all",
)
CLEAN = {0, 75, 76}
LOAD_MODES = ("jit", "pmap")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, data_dir: str) -> dict:
  return dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    TFDS_DATA_DIR=data_dir,
    JAXTRAIN_COMPILATION_CACHE="0",
  )


def _train_argv(args, workdir: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "jaxtrain.tools.cli",
    "train",
    "--config",
    "configs/digits.py",
    "--workdir",
    workdir,
    "--quiet",
    f"--config.num_train_steps={args.steps}",
    f"--config.checkpoint_every_steps={args.steps // 4}",
    f"--config.eval_every_steps={args.steps // 2}",
    "--config.log_every_steps=10",
    "--config.dataset.test_split=",
    f"--config.parallel.stall_timeout_s={args.stall_timeout_s}",
  ]


def launch(args, layout: str, workdir: str, log_path: str) -> list[subprocess.Popen]:
  """The job's processes: one plain process for 1 x D, else one per process with the flags."""
  processes, devices = LAYOUTS[layout]
  port, procs = _free_port(), []
  for i in range(processes):
    join = (
      [
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num_processes",
        str(processes),
        "--process_id",
        str(i),
      ]
      if processes > 1 or layout.endswith("c")
      else []
    )
    log = open(f"{log_path}.{i}", "w")
    procs.append(
      subprocess.Popen(
        _train_argv(args, workdir) + join,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(devices, args.data_dir),
        start_new_session=True,
      )
    )
  return procs


def wait(procs, hang_s: float) -> tuple[list[int | None], bool]:
  """Exit statuses, and whether the launch hung (then all its processes are killed)."""
  deadline = time.monotonic() + hang_s
  while any(p.poll() is None for p in procs):
    if time.monotonic() > deadline:
      for p in procs:
        if p.poll() is None:
          p.kill()
      return [p.wait() for p in procs], True
    time.sleep(0.1)
  return [p.returncode for p in procs], False


def _checkpoints(workdir: str) -> list[int]:
  root = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(root) if s.isdigit()) if os.path.isdir(root) else []


def digest(workdir: str) -> str | None:
  """The final parameters' digest (read in a child: the harness itself never starts JAX)."""
  code = (
    "import sys; from jaxtrain.run import checkpoint; s, a = checkpoint.load_arrays(sys.argv[1]); "
    "print(s, checkpoint.tree_digest(a['params']))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code, workdir], cwd=ROOT, capture_output=True, text=True, env=_env(1, "")
  )
  return out.stdout.split()[-1] if out.returncode == 0 else None


def interrupt(procs, plan: str, rng: random.Random) -> bool:
  """Sends the plan's signal; whether it reached a process still running."""
  if plan == "none":
    return False
  name, whom = plan.split()
  targets = procs if whom == "all" else [rng.choice(procs)]
  sent = False
  for p in targets:
    if p.poll() is None:
      p.send_signal(getattr(signal, name))
      sent = True
  return sent


def run_job(args, layout: str, plan: str, rng: random.Random, work: str, n: int) -> dict:
  workdir = os.path.join(work, f"job{n}-{layout}")
  record = {"job": n, "layout": layout, "plan": plan, "launches": [], "hangs": 0}
  procs = launch(args, layout, workdir, f"{workdir}.log0")
  record["signalled"] = False
  if plan != "none":  # a random moment after the first or second checkpoint
    after, deadline = rng.choice([1, 2]) * (args.steps // 4), time.monotonic() + args.hang_s
    while (
      after not in _checkpoints(workdir)
      and any(p.poll() is None for p in procs)
      and time.monotonic() < deadline
    ):
      time.sleep(0.05)
    time.sleep(rng.uniform(0, args.signal_window_s))
    record["signalled"] = interrupt(procs, plan, rng)
  codes, hung = wait(procs, args.hang_s)
  record["launches"].append(codes)
  record["hangs"] += hung
  attempt = 0
  while codes != [0] * len(codes) and attempt < args.max_resumes:
    attempt += 1
    procs = launch(args, layout, workdir, f"{workdir}.log{attempt}")
    codes, hung = wait(procs, args.hang_s)
    record["launches"].append(codes)
    record["hangs"] += hung
  record["finished"] = codes == [0] * len(codes)
  record["digest"] = digest(workdir) if record["finished"] else None
  return record


def start_load(args, work: str) -> list[subprocess.Popen]:
  """Looping one-process runs on 8 simulated devices (jit, pmap, ...) and busy loops."""
  procs = []
  for i in range(args.load):
    mode = LOAD_MODES[i % 2]
    loop = (
      f"i=0; while true; do i=$((i+1)); rm -rf {work}/load{i}; "
      f"{sys.executable} -m jaxtrain.tools.cli train --config configs/digits.py --quiet "
      f"--workdir {work}/load{i} --config.parallel.mode={mode} --config.num_train_steps=400 "
      f"--config.eval_every_steps=100 --config.checkpoint_every_steps=100 "
      f"--config.dataset.test_split= --config.parallel.stall_timeout_s={args.load_stall_timeout_s} "
      f"> {work}/load{i}.log 2>&1; echo $? >> {work}/load{i}.codes; done"
    )
    procs.append(
      subprocess.Popen(
        ["bash", "-c", loop], cwd=ROOT, env=_env(8, args.data_dir), start_new_session=True
      )
    )
  for _ in range(args.busy):
    procs.append(
      subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    )
  return procs


def load_exits(args, work: str) -> dict:
  """{"load 1x8 jit": {exit status: count}, ...}: every load run that ended."""
  codes = {}
  for i in range(args.load):
    path = os.path.join(work, f"load{i}.codes")
    counted = collections.Counter(open(path).read().split()) if os.path.exists(path) else {}
    codes[f"load{i} 1x8 {LOAD_MODES[i % 2]}"] = dict(counted)
  return codes


def stop_load(procs) -> None:
  for p in procs:
    try:
      os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


def table(records: list[dict], references: dict, load_codes: dict | None = None) -> str:
  rows = collections.OrderedDict((k, collections.Counter()) for k in [*LAYOUTS, "all"])
  for r in records:
    for key in (r["layout"], "all"):
      c = rows[key]
      c["runs"] += 1
      c["hangs"] += r["hangs"]
      c["launches"] += len(r["launches"])
      # SIGKILL (-9) is the harness's own kill; every other process must exit 0, 75 or 76.
      c["clean exits"] += sum(
        all(code in CLEAN or code == -9 for code in codes) for codes in r["launches"]
      )
      c["resumes"] += len(r["launches"]) - 1
      c["interrupted"] += r["signalled"]
      c["digest equal"] += r["digest"] is not None and r["digest"] == references[r["layout"]]
  head = [
    "layout",
    "runs",
    "interrupted",
    "launches",
    "hangs",
    "clean exits",
    "resumes",
    "digest equal",
  ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, c in rows.items():
    if c["runs"]:
      lines.append("| " + " | ".join([name] + [str(c[h]) for h in head[1:]]) + " |")
  for name, codes in (load_codes or {}).items():  # a load run must finish: any other exit is a hang
    runs = sum(codes.values())
    finished = codes.get("0", 0)
    exits = ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))
    lines.append(
      f"| {name} (exits {exits}) | {runs} | - | {runs} | {runs - finished} | {finished} | - | - |"
    )
  return "\n".join(lines)


# -- the SIGTERM scan ---------------------------------------------------------------------
SCAN_STEPS, SCAN_EVERY = 3000, 25  # longer than the scan; a checkpoint every 25 steps


def _scan_argv(args, workdir: str, stop_at: int | None = None) -> list[str]:
  return [
    sys.executable,
    "-m",
    "jaxtrain.tools.cli",
    "train",
    "--config",
    "configs/digits.py",
    "--workdir",
    workdir,
    "--quiet",
    f"--config.num_train_steps={SCAN_STEPS}",
    f"--config.checkpoint_every_steps={SCAN_EVERY}",
    "--config.keep_checkpoints=1000",
    "--config.eval_every_steps=100",
    "--config.log_every_steps=10",
    "--config.dataset.test_split=",
    *([f"--stop_at_step={stop_at}"] if stop_at else []),
  ]


def _logged_step(workdir: str) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  steps = [json.loads(line)["step"] for line in open(path)] if os.path.exists(path) else []
  return max(steps, default=0)


def _state_digests(checkpoints: list[tuple[str, int]]) -> list[str | None]:
  """The state digest of each (workdir, step) checkpoint, read in one child (no JAX here)."""
  code = (
    "import json, sys\nfrom jaxtrain.run import checkpoint\nout = []\n"
    "for workdir, step in json.loads(sys.argv[1]):\n"
    "  try: out.append(checkpoint.tree_digest(checkpoint.load_arrays(workdir, step)[1]))\n"
    "  except Exception: out.append(None)\n"
    "print(json.dumps(out))"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code, json.dumps(checkpoints)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=_env(1, ""),
  )
  return (
    json.loads(proc.stdout.splitlines()[-1]) if proc.returncode == 0 else [None] * len(checkpoints)
  )


def scan_try(args, workdir: str, delay: float, resumed_from: str | None) -> dict:
  """One run, SIGTERM `delay` s after it starts: how it ended, and where it resumes to."""
  if resumed_from:
    shutil.copytree(resumed_from, workdir)
  env = _env(1, args.data_dir)
  with open(workdir + ".err", "w") as err:
    proc = subprocess.Popen(
      _scan_argv(args, workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env
    )
    time.sleep(delay)
    logged = _logged_step(workdir)  # what it had trained (at least) when the signal went
    proc.send_signal(signal.SIGTERM)
    try:
      code = proc.wait(timeout=args.hang_s)
    except subprocess.TimeoutExpired:
      proc.kill()
      code = "hung"
  stderr = open(workdir + ".err").read()
  saved = _checkpoints(workdir)
  lines = [l for l in stderr.splitlines() if l.startswith("jaxtrain:")]
  return {
    "delay": delay,
    "resumed": bool(resumed_from),
    "exit": code,
    "lines": lines,
    "traceback": "Traceback" in stderr,
    "logged_step": logged,
    "saved_step": saved[-1] if saved else None,
  }


def scan(args, work: str) -> list[dict]:
  """SIGTERM at each delay to a fresh run and to one resumed from step 50; each then resumes."""
  base = os.path.join(work, "scan-base")
  subprocess.run(
    _scan_argv(args, base, stop_at=2 * SCAN_EVERY),
    cwd=ROOT,
    check=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    env=_env(1, args.data_dir),
  )
  n = round(args.scan_to / args.scan_step)
  delays = [round(args.scan_step * (i + 1), 3) for i in range(n)]
  tries = []
  for resumed in (False, True):
    for delay in args.scan_delays or delays:
      workdir = os.path.join(work, f"scan-{'resumed' if resumed else 'fresh'}-{delay}")
      record = scan_try(args, workdir, delay, base if resumed else None)
      # Where it resumes to: the next checkpoint of the uninterrupted run's.
      target = ((record["saved_step"] or 0) // SCAN_EVERY + 1) * SCAN_EVERY
      if record["exit"] in (0, 75):
        resume = subprocess.run(
          _scan_argv(args, workdir, stop_at=target),
          cwd=ROOT,
          capture_output=True,
          text=True,
          env=_env(1, args.data_dir),
        )
        record["resume_exit"] = resume.returncode
      record["workdir"], record["target"] = workdir, target
      tries.append(record)
      print(json.dumps(record), flush=True)
  reference = os.path.join(work, "scan-reference")
  subprocess.run(
    _scan_argv(args, reference, stop_at=max(t["target"] for t in tries)),
    cwd=ROOT,
    check=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    env=_env(1, args.data_dir),
  )
  digests = _state_digests(
    [(t["workdir"], t["target"]) for t in tries] + [(reference, t["target"]) for t in tries]
  )
  for t, mine, theirs in zip(tries, digests[: len(tries)], digests[len(tries) :]):
    t["digest_equal"] = mine is not None and mine == theirs
    t["ok"] = scan_ok(t)
  return tries


def scan_ok(t: dict) -> bool:
  """Exit 75 with one line (or 0, finished), no traceback, stopped within a few steps of the
  signal (a log interval, the dispatches in flight, the one it was in), the same bits after."""
  one_line = len(t["lines"]) == 1 and t["lines"][0].startswith("jaxtrain: preempted: SIGTERM")
  ended = (t["exit"] == 75 and one_line) or (t["exit"] == 0 and t["saved_step"] == SCAN_STEPS)
  stopped = (
    t["saved_step"] is None
    or t["saved_step"] <= t["logged_step"] + 10 + 8 + 2
    or (t["resumed"] and t["saved_step"] == 2 * SCAN_EVERY)
  )
  return ended and stopped and not t["traceback"] and t["digest_equal"]


def scan_table(tries: list[dict]) -> str:
  rows = [
    "| run | tries | exit 75, one line | exit 0 (finished) | killed before `main` (-15) | "
    "other exits | hangs | stopped within 20 steps | resumed to the same bits |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for resumed in (False, True):
    ts = [t for t in tries if t["resumed"] == resumed]
    if not ts:
      continue
    rows.append(
      "| "
      + " | ".join(
        str(x)
        for x in [
          "resumed from step 50" if resumed else "fresh",
          len(ts),
          sum(t["exit"] == 75 and len(t["lines"]) == 1 for t in ts),
          sum(t["exit"] == 0 for t in ts),
          sum(t["exit"] == -signal.SIGTERM for t in ts),
          sum(t["exit"] not in (0, 75, -signal.SIGTERM, "hung") for t in ts),
          sum(t["exit"] == "hung" for t in ts),
          sum(scan_ok(dict(t, digest_equal=True)) for t in ts),
          sum(t["digest_equal"] for t in ts),
        ]
      )
      + " |"
    )
  return "\n".join(rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--jobs", type=int, default=30)
  parser.add_argument("--layouts", default="2x2,4x1,1x8")
  parser.add_argument(
    "--load", type=int, default=2, help="looping 8-device XLA runs beside the jobs"
  )
  parser.add_argument("--busy", type=int, default=2, help="busy-loop processes beside the jobs")
  parser.add_argument(
    "--load_stall_timeout_s",
    type=int,
    default=120,
    help="the load runs' own watchdog: one stuck in XLA's rendezvous starts again",
  )
  parser.add_argument("--steps", type=int, default=80)
  parser.add_argument("--stall_timeout_s", type=int, default=300)
  parser.add_argument("--hang_s", type=float, default=900, help="a launch running this long hung")
  parser.add_argument("--signal_window_s", type=float, default=1.0)
  parser.add_argument("--max_resumes", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--json", default="", help="write the records and the table here")
  parser.add_argument("--scan", action="store_true", help="the SIGTERM scan instead of jobs")
  parser.add_argument("--scan_to", type=float, default=8.0)
  parser.add_argument("--scan_step", type=float, default=0.1)
  parser.add_argument(
    "--scan_delays",
    type=lambda t: [float(x) for x in t.split(",")],
    default=None,
    help="these delays instead of every scan_step (e.g. 0.1,1,3)",
  )
  args = parser.parse_args(argv)
  rng = random.Random(args.seed)
  work = tempfile.mkdtemp(prefix="jaxtrain-soak-")
  args.data_dir = args.data_dir or os.path.join(work, "tensorflow_datasets")
  if args.scan:
    return run_scan(args, work)
  layouts = args.layouts.split(",")
  references, load = {}, []
  try:
    for layout in layouts:  # uninterrupted, before the load: what every job must end with
      record = run_job(args, layout, "none", rng, work, -len(references) - 1)
      references[layout] = record["digest"]
      print(f"reference {layout}: {record['launches']} digest {record['digest']}", flush=True)
    load = start_load(args, work)
    records, started = [], time.monotonic()
    for n in range(args.jobs):
      layout, plan = layouts[n % len(layouts)], rng.choice(PLANS)
      record = run_job(args, layout, plan, rng, work, n)
      record["digest_equal"] = record["digest"] == references[layout]
      records.append(record)
      print(json.dumps({k: v for k, v in record.items() if k != "digest"}), flush=True)
    load_codes = load_exits(args, work)
  finally:
    stop_load(load)
  text = table(records, references, load_codes)
  print(
    f"\n{args.jobs} jobs in {time.monotonic() - started:.0f} s beside {args.load} looping 8-device "
    f"runs and {args.busy} busy loops on {os.cpu_count()} cores\n{text}"
  )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {
          "args": vars(args),
          "references": references,
          "records": records,
          "table": text,
          "load_exit_codes": load_codes,
        },
        f,
        indent=1,
      )
  shutil.rmtree(work, ignore_errors=True)
  bad = (
    sum(r["hangs"] for r in records)
    + sum(not r.get("digest_equal") for r in records)
    + sum(n for codes in load_codes.values() for code, n in codes.items() if code != "0")
  )
  return 1 if bad else 0


def run_scan(args, work: str) -> int:
  load = start_load(args, work)
  try:
    started = time.monotonic()
    tries = scan(args, work)
    load_codes = load_exits(args, work)
  finally:
    stop_load(load)
  text = scan_table(tries)
  print(
    f"\nSIGTERM scan: {len(tries)} tries in {time.monotonic() - started:.0f} s beside {args.load} "
    f"looping 8-device runs and {args.busy} busy loops on {os.cpu_count()} cores; load runs' "
    f"exits: {load_codes}\n{text}"
  )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {"args": vars(args), "tries": tries, "table": text, "load_exit_codes": load_codes},
        f,
        indent=1,
      )
  shutil.rmtree(work, ignore_errors=True)
  return 0 if all(t["ok"] for t in tries) else 1


if __name__ == "__main__":
  sys.exit(main())

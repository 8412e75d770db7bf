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
each with its one line), resumes, digests equal to the uninterrupted run.

    python experiments/multiprocess_soak.py --jobs 30 --load 2 --busy 2
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
LAYOUTS = {"2x2": (2, 2), "4x1": (4, 1), "1x8": (1, 8)}
PLANS = ("none", "SIGTERM one", "SIGINT one", "SIGUSR1 one", "SIGTERM all", "SIGKILL one",
         "SIGKILL all")
CLEAN = {0, 75, 76}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, data_dir: str) -> dict:
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu", TFDS_DATA_DIR=data_dir, JAXTRAIN_COMPILATION_CACHE="0")


def _train_argv(args, workdir: str) -> list[str]:
  return [sys.executable, "-m", "jaxtrain.tools.cli", "train", "--config", "configs/digits.py",
          "--workdir", workdir, "--quiet", f"--config.num_train_steps={args.steps}",
          f"--config.checkpoint_every_steps={args.steps // 4}", f"--config.eval_every_steps={args.steps // 2}",
          "--config.log_every_steps=10", "--config.dataset.test_split=",
          f"--config.parallel.stall_timeout_s={args.stall_timeout_s}"]


def launch(args, layout: str, workdir: str, log_path: str) -> list[subprocess.Popen]:
  """The job's processes: one plain process for 1 x D, else one per process with the flags."""
  processes, devices = LAYOUTS[layout]
  port, procs = _free_port(), []
  for i in range(processes):
    join = (["--coordinator", f"127.0.0.1:{port}", "--num_processes", str(processes),
             "--process_id", str(i)] if processes > 1 else [])
    log = open(f"{log_path}.{i}", "w")
    procs.append(subprocess.Popen(_train_argv(args, workdir) + join, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, env=_env(devices, args.data_dir),
                                  start_new_session=True))
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
  code = ("import sys; from jaxtrain.run import checkpoint; s, a = checkpoint.load_arrays(sys.argv[1]); "
          "print(s, checkpoint.tree_digest(a['params']))")
  out = subprocess.run([sys.executable, "-c", code, workdir], cwd=ROOT, capture_output=True,
                       text=True, env=_env(1, ""))
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
    while after not in _checkpoints(workdir) and any(p.poll() is None for p in procs) \
        and time.monotonic() < deadline:
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
    mode = ("jit", "pmap")[i % 2]
    loop = (f"i=0; while true; do i=$((i+1)); rm -rf {work}/load{i}; "
            f"{sys.executable} -m jaxtrain.tools.cli train --config configs/digits.py --quiet "
            f"--workdir {work}/load{i} --config.parallel.mode={mode} --config.num_train_steps=400 "
            f"--config.eval_every_steps=100 --config.checkpoint_every_steps=100 "
            f"--config.dataset.test_split= --config.parallel.stall_timeout_s={args.load_stall_timeout_s} "
            f"> {work}/load{i}.log 2>&1; echo $? >> {work}/load{i}.codes; done")
    procs.append(subprocess.Popen(["bash", "-c", loop], cwd=ROOT, env=_env(8, args.data_dir),
                                  start_new_session=True))
  for _ in range(args.busy):
    procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True))
  return procs


def stop_load(procs) -> None:
  for p in procs:
    try:
      os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


def table(records: list[dict], references: dict) -> str:
  rows = collections.OrderedDict((k, collections.Counter()) for k in [*LAYOUTS, "all"])
  for r in records:
    for key in (r["layout"], "all"):
      c = rows[key]
      c["runs"] += 1
      c["hangs"] += r["hangs"]
      c["launches"] += len(r["launches"])
      # SIGKILL (-9) is the harness's own kill; every other process must exit 0, 75 or 76.
      c["clean exits"] += sum(all(code in CLEAN or code == -9 for code in codes)
                              for codes in r["launches"])
      c["resumes"] += len(r["launches"]) - 1
      c["interrupted"] += r["signalled"]
      c["digest equal"] += r["digest"] is not None and r["digest"] == references[r["layout"]]
  head = ["layout", "runs", "interrupted", "launches", "hangs", "clean exits", "resumes", "digest equal"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, c in rows.items():
    if c["runs"]:
      lines.append("| " + " | ".join([name] + [str(c[h]) for h in head[1:]]) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--jobs", type=int, default=30)
  parser.add_argument("--layouts", default="2x2,4x1,1x8")
  parser.add_argument("--load", type=int, default=2, help="looping 8-device XLA runs beside the jobs")
  parser.add_argument("--busy", type=int, default=2, help="busy-loop processes beside the jobs")
  parser.add_argument("--load_stall_timeout_s", type=int, default=120,
                      help="the load runs' own watchdog: one stuck in XLA's rendezvous starts again")
  parser.add_argument("--steps", type=int, default=80)
  parser.add_argument("--stall_timeout_s", type=int, default=300)
  parser.add_argument("--hang_s", type=float, default=900, help="a launch running this long hung")
  parser.add_argument("--signal_window_s", type=float, default=1.0)
  parser.add_argument("--max_resumes", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--json", default="", help="write the records and the table here")
  args = parser.parse_args(argv)
  rng = random.Random(args.seed)
  work = tempfile.mkdtemp(prefix="jaxtrain-soak-")
  args.data_dir = args.data_dir or os.path.join(work, "tensorflow_datasets")
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
    load_codes = {}
    for i in range(args.load):
      path = os.path.join(work, f"load{i}.codes")
      load_codes[f"load{i}"] = collections.Counter(open(path).read().split()) if os.path.exists(path) else {}
  finally:
    stop_load(load)
  text = table(records, references)
  print(f"\n{args.jobs} jobs in {time.monotonic() - started:.0f} s beside {args.load} looping 8-device "
        f"runs and {args.busy} busy loops on {os.cpu_count()} cores; exit codes of the load runs: "
        f"{ {k: dict(v) for k, v in load_codes.items()} }\n{text}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "references": references, "records": records, "table": text,
                 "load_exit_codes": {k: dict(v) for k, v in load_codes.items()}}, f, indent=1)
  shutil.rmtree(work, ignore_errors=True)
  bad = sum(r["hangs"] for r in records) + sum(not r.get("digest_equal") for r in records)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())

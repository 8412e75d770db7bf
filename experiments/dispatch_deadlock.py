"""XLA:CPU's multi-device deadlock: a data-parallel step dispatched without waiting hangs.

One jitted step over a mesh of N simulated CPU devices (a batch sharded on
`data`, so each step all-reduces), dispatched 3,000 times, with at most
`limit` dispatches unfinished (the host waits on the output of the dispatch
`limit` back, as run/compiled.py's `InFlight` does), or none (no limit: the
host runs as far ahead as XLA lets it). Each case runs in its own process
with a timeout: a case that does not finish in time has deadlocked.

What it shows (2-core machine, jax 0.10.2): no limit hangs at every device
count; a limit of 32 or more hangs; 31 or less never does. XLA:CPU admits 32
programs per device in flight and launches each device's part of a program
on one pool of max(cores, devices) threads; the 33rd launch waits for a slot
on a pool thread, which the last device's part of the oldest program then
lacks while the others wait for it in the all-reduce (gdb on a hung run:
the pool's 8 threads = 7 parts in the rendezvous + 1 launch waiting for
device 7's slots). `PJRT_NPROC` (a larger pool) also avoids it, at the cost
of oversubscribed compute threads; jaxtrain bounds the queue instead.

    python experiments/dispatch_deadlock.py [--devices 2,4,8] [--limits 0,4,31,32]
    python experiments/dispatch_deadlock.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax

CASE = r"""
import collections, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

limit, steps = int(sys.argv[1]), int(sys.argv[2])
mesh = Mesh(np.array(jax.devices()), ("data",))
every, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
x = jax.device_put(np.random.default_rng(0).random((1024, 64), np.float32), every)

def step(w, x, i):
  batch = jax.lax.with_sharding_constraint(
      jax.lax.dynamic_slice_in_dim(x, (i * 64) % 960, 64), split)
  g = jnp.mean(jnp.tanh(batch @ w) @ w.T, axis=0)  # a mean over the sharded batch: an all-reduce
  return w - 1e-3 * jnp.outer(g, g), i + 1

step = jax.jit(step, donate_argnums=(0,), out_shardings=(every, every))
w, i = jax.device_put(np.eye(64, dtype=np.float32), every), jax.device_put(np.int32(0), every)
unfinished = collections.deque()
for _ in range(steps):
  w, i = step(w, x, i)
  unfinished.append(i)
  if limit and len(unfinished) > limit:
    unfinished.popleft().block_until_ready()
jax.block_until_ready(w)
"""


def run_case(devices: int, limit: int, steps: int, timeout_s: float) -> dict:
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    TF_CPP_MIN_LOG_LEVEL="3",
  )
  start = time.perf_counter()
  try:
    proc = subprocess.run(
      [sys.executable, "-c", CASE, str(limit), str(steps)],
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout_s,
    )
    outcome = "finished" if proc.returncode == 0 else f"failed ({proc.returncode})"
  except subprocess.TimeoutExpired:
    outcome = "hung"
  return {
    "devices": devices,
    "in_flight_limit": limit or None,
    "steps": steps,
    "outcome": outcome,
    "seconds": round(time.perf_counter() - start, 1),
  }


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="2,4,8")
  parser.add_argument("--limits", default="0,4,8,31,32,33", help="0: no limit")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--tries", type=int, default=2)
  parser.add_argument("--timeout_s", type=float, default=60)
  parser.add_argument("--quick", action="store_true", help="4 devices, limits 0 and 8, 1 try")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  if args.quick:
    args.devices, args.limits, args.tries, args.timeout_s = "4", "0,8", 1, 30
  rows = [
    run_case(d, limit, args.steps, args.timeout_s)
    for d in map(int, args.devices.split(","))
    for limit in map(int, args.limits.split(","))
    for _ in range(args.tries)
  ]
  print(f"{'devices':>7}  {'in flight':>9}  outcome")
  for r in rows:
    print(
      f"{r['devices']:>7}  {r['in_flight_limit'] or 'no limit':>9}  {r['outcome']} "
      f"({r['seconds']} s)"
    )
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"jax": jax.__version__, "cpu_count": os.cpu_count(), "rows": rows}, f, indent=1)
  return rows


if __name__ == "__main__":
  main()

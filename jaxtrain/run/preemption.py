"""SIGTERM/SIGINT/SIGHUP/SIGUSR1: finish the step in flight, save, and exit with PREEMPTED.

Spot and preemptible machines send SIGTERM with a grace period (often 30 s);
a closed terminal sends SIGHUP; SLURM sends SIGUSR1 ahead of a job's time
limit where asked (`#SBATCH --signal=USR1@120`). While the loop trains, the handler only sets
a flag; the loop looks at it after each dispatched step (a Python bool, no
device sync), saves a checkpoint, waits for it to be on disk and exits with
status PREEMPTED, which tells a scheduler "saved, start me again". The
command line installs `stop_on_signals` from the start: outside the loop a
signal stops the command where it is (nothing new to save), except in a
`PreemptionWatcher` region such as the final wait for saves, which finishes
first. With several processes, JAX's preemption sync (set up by
`jax.distributed`) makes all of them stop at the same step.
"""

from __future__ import annotations

import signal
import threading

import jax

from jaxtrain.errors import PREEMPTED, STOP_SIGNALS, Preempted  # noqa: F401  (re-exported)

SIGNALS = STOP_SIGNALS


class PreemptionWatcher:
  """Records SIGTERM/SIGINT/SIGHUP/SIGUSR1 while installed; restores the previous handlers."""

  SIGNALS = SIGNALS

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def __enter__(self):
    # With several processes JAX's own notifier owns SIGTERM (see should_stop).
    signals = self.SIGNALS if jax.process_count() == 1 else tuple(
        s for s in self.SIGNALS if s != signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._record)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def _record(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C means "now"
    self.signal_name = signal.Signals(signum).name

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
    return self.signal_name is not None

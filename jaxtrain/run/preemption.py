"""SIGTERM/SIGINT: finish the step in flight, save, and exit with PREEMPTED.

Spot and preemptible machines send SIGTERM with a grace period (often 30 s).
The handler only sets a flag; the loop looks at it after each dispatched step
(a Python bool, no device sync), saves a checkpoint, waits for it to be on
disk and exits with status PREEMPTED, which tells a scheduler "saved, start me
again". With several processes, JAX's preemption sync (set up by
`jax.distributed`) makes all of them stop at the same step.
"""

from __future__ import annotations

import signal
import threading

import jax

from jaxtrain.errors import PREEMPTED  # noqa: F401  (the exit status that goes with Preempted)


class Preempted(Exception):
  """The run stopped on a signal after saving a checkpoint at `step`."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(f"{signal_name} received: saved a checkpoint at step {step}; "
                     "run the same command to resume")
    self.step = step


class PreemptionWatcher:
  """Records SIGTERM/SIGINT while installed; restores the previous handlers on exit."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def __enter__(self):
    # With several processes JAX's own notifier owns SIGTERM (see should_stop).
    signals = self.SIGNALS if jax.process_count() == 1 else (signal.SIGINT,)
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

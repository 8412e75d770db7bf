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
first.

With several processes a signal may reach one of them only (a node's
SIGTERM, a Ctrl-C in one terminal). Every `parallel.stop_check_every_steps`
steps, and at the last step, the processes agree (`agree`: a barrier of the
coordination service, about a millisecond) on whether any has received one;
all of them then stop at that same step, with one checkpoint, and exit 75.
Their start-up and final test also only record a signal: one process leaving
a collective alone would hang the others.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

from jaxtrain.errors import PREEMPTED, STOP_SIGNALS, Preempted  # noqa: F401  (re-exported)

SIGNALS = STOP_SIGNALS


class PreemptionWatcher:
  """Records SIGTERM/SIGINT/SIGHUP/SIGUSR1 while installed; restores the previous handlers.

  `agree(name, signal_name) -> signal_name | None` (distributed.agree_on_stop)
  makes the job's processes decide together; without it the signal decides.
  """

  SIGNALS = SIGNALS

  def __init__(self, agree: Callable[[str, str | None], str | None] | None = None):
    self.signal_name: str | None = None   # received by this process
    self.agreed: str | None = None        # received by one of the job's processes (with `agree`)
    self.agree = agree
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._record)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      # None: a handler installed outside Python (JAX's own notifier), which cannot be put back.
      signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    self._previous = {}
    return False

  def _record(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C means "now"
    self.signal_name = signal.Signals(signum).name

  def should_stop(self, step: int) -> bool:
    """Called by every process at the same steps: whether the run stops after this one."""
    if self.agree is None:
      return self.signal_name is not None
    self.agreed = self.agreed or self.agree(str(step), self.signal_name)
    return self.agreed is not None

  @property
  def stop_signal(self) -> str | None:
    """The signal the run stops on: the job's agreed one, else this process's."""
    return self.agreed if self.agree is not None else self.signal_name

"""The stall watchdog: a run in which no step, evaluation or save finishes for a while exits.

A hung collective (a peer process gone, XLA's threads starved under load)
blocks the loop forever: the allocation burns and nothing is saved. The loop
marks each phase as it starts (`mark("step", step)`, "evaluation", "save",
"test"); a daemon thread looks every few seconds, and once the same mark has
stood for `parallel.stall_timeout_s` it prints one line naming the phase, the
step and the process, and ends the process with STALLED (76). It cannot
unwind a thread stuck in C++, so it exits at once (`os._exit`) and saves
nothing: the newest checkpoint was written whole before, and the same
command resumes from it. Every process runs its own, so a stall anywhere
ends them all within the timeout (the others wait for it in a collective).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

STALLED = 76


class Watchdog:
  """`mark(phase, step)` as work starts; `check()` says if the last mark has stood too long."""

  def __init__(self, timeout_s: float, *, process: str = "process 0 of 1",
               clock: Callable[[], float] = time.monotonic, exit: Callable[[int], None] = os._exit):
    self.timeout_s, self.process, self.clock, self._exit = float(timeout_s), process, clock, exit
    self.phase, self.step, self.since = "start-up", 0, clock()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def mark(self, phase: str, step: int) -> None:
    self.phase, self.step, self.since = phase, step, self.clock()

  def check(self) -> str | None:
    """The line to print if the current phase has run past the timeout, else None."""
    waited = self.clock() - self.since
    if self.timeout_s <= 0 or waited <= self.timeout_s:
      return None
    return (f"jaxtrain: stalled: the {self.phase} at step {self.step} has not finished in "
            f"{waited:.0f} s (parallel.stall_timeout_s={self.timeout_s:g}; {self.process}); "
            f"exiting with status {STALLED}: the newest checkpoint is intact, run the same command "
            "to resume from it")

  def _watch(self) -> None:
    interval = min(5.0, max(self.timeout_s / 10, 0.05))
    while not self._stop.wait(interval):
      line = self.check()
      if line is not None:
        print(line, file=sys.stderr, flush=True)
        self._exit(STALLED)
        return

  def __enter__(self):
    if self.timeout_s > 0:
      self._thread = threading.Thread(target=self._watch, name="jaxtrain-watchdog", daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    return False

"""The stall watchdog: a run in which no step, evaluation or save finishes for a while exits.

A hung collective (a peer process gone, XLA's threads starved under load)
blocks the loop forever: the allocation burns and nothing is saved. The loop
marks each phase as it starts (`mark("step", step)`, "evaluation", "save",
"test"); a daemon thread looks every few seconds, and once the same mark has
stood for `parallel.stall_timeout_s` it prints one line naming the phase, the
step and the process, and ends the process with STALLED (76). It cannot
unwind a thread stuck in C++, so it exits at once (`os._exit`) and saves
nothing: the newest checkpoint was written whole before, and the same
command resumes from it.

With several processes (`peers`: distributed.JobStalls) a stalled process
first tells the others through the coordination service; each of them then
prints its own line naming the stalled process, and every process exits 76.
Process 0, which hosts the coordination service, leaves last: when it goes,
JAX ends any process still there with a fatal error and a stack trace.
A process that stalls without knowing it, waiting in a collective for the
one that stalled, is caught by its own timeout all the same.
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
               clock: Callable[[], float] = time.monotonic, exit: Callable[[int], None] = os._exit,
               peers=None):
    self.timeout_s, self.process, self.clock, self._exit = float(timeout_s), process, clock, exit
    self.phase, self.step, self.since = "start-up", 0, clock()
    self.peers, self.peer_report = peers, None
    self.interval = min(5.0, max(self.timeout_s / 10, 0.05))
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def mark(self, phase: str, step: int) -> None:
    self.phase, self.step, self.since = phase, step, self.clock()

  def stalled(self) -> str | None:
    """What stalls here ("the evaluation at step 250 of process 1 of 2"), if the current phase
    has run past the timeout, else None."""
    waited = self.clock() - self.since
    if self.timeout_s <= 0 or waited <= self.timeout_s:
      return None
    return (f"the {self.phase} at step {self.step} of {self.process} has not finished in "
            f"{waited:.0f} s (parallel.stall_timeout_s={self.timeout_s:g})")

  def check(self) -> str | None:
    """The line to print if this process, or another of the job, has stalled; else None."""
    return self._line(self.stalled())

  def _line(self, own: str | None) -> str | None:
    what = own
    if what is None and self.peer_report is not None:
      what = f"{self.peer_report}; {self.process} stops with it (here: {self.phase}, step {self.step})"
    if what is None:
      return None
    return (f"jaxtrain: stalled: {what}; exiting with status {STALLED}: the newest checkpoint is "
            "intact, run the same command to resume from it")

  def _watch(self) -> None:
    while not self._stop.wait(self.interval):
      own = self.stalled()
      line = self._line(own)
      if line is None:
        continue
      print(line, file=sys.stderr, flush=True)
      if self.peers is not None:
        if own is not None:  # tell the others
          _bounded(lambda: self.peers.publish(own), 5.0)
        _bounded(self.peers.leave, 5.0)
        wait = 3 * self.interval + 10  # for the others to hear it, and go
        _bounded(lambda: self.peers.wait_for_the_others(wait), wait + 5)
      self._exit(STALLED)
      return

  def _listen(self) -> None:
    """Another process's stall, as the coordination service reports it (its own thread: a call
    to a frozen coordinator must not keep this process's own check from running)."""
    while not self._stop.wait(self.interval):
      try:
        report = self.peers.poll()
      except Exception:  # the coordinator gone: this process's own timeout still holds
        continue
      if report is not None:
        self.peer_report = report
        return

  def __enter__(self):
    if self.timeout_s > 0:
      self._thread = threading.Thread(target=self._watch, name="jaxtrain-watchdog", daemon=True)
      self._thread.start()
      if self.peers is not None:
        threading.Thread(target=self._listen, name="jaxtrain-watchdog-peers", daemon=True).start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    return False


def _bounded(call: Callable[[], None], seconds: float) -> None:
  """`call()` on a thread, waited for at most `seconds` (a frozen coordinator never answers)."""
  def run():
    try:
      call()
    except Exception:
      pass
  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)

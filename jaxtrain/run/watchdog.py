"""The stall watchdog: a run in which no step, evaluation or save finishes for a while exits.

A hung collective (a peer process gone, a device that never arrives) blocks
the loop forever: the allocation burns and nothing is saved. The loop marks
each phase as it starts (`mark("step", step)`, "evaluation", "save",
"test"); a daemon thread looks every few seconds, and once the same mark has
stood past its limit it prints one line naming the phase, the step and the
process, and ends the process with STALLED (76). It cannot unwind a thread
stuck in C++, so it exits at once (`os._exit`) and saves nothing: the newest
checkpoint was written whole before, and the same command resumes from it.

The limit adapts, so that a stall is found in minutes: a phase's first
occurrence compiles, and has start-up's limit (`parallel.startup_timeout_s`);
after it, a phase may take `MULTIPLE` times the slowest of its kind seen so
far, at least `FLOOR_S`, at most `parallel.stall_timeout_s` (which also
overrides the floor when lower).

With several processes (`peers`: distributed.JobStalls) a stalled process
first tells the others through the coordination service; each of them then
prints its own line naming the stalled process, and every process exits 76.
Process 0, which hosts the coordination service, leaves last: when it goes,
JAX ends any process still there with a fatal error and a stack trace.
A process that stalls without knowing it, waiting in a collective for the
one that stalled, is caught by its own timeout all the same.

A process that dies (kill -9, a lost node) is named too: every process's
watchdog counts a beat in the coordination service every `BEAT_S`, and one
not heard from for `PEER_SILENCE_S` is gone; the others stop as for a stall.
That is well before JAX's own heartbeat timeout (100 s), which would end
every survivor with a fatal error. (When process 0 itself dies, the service
goes with it and JAX ends the others at once, with its own message.)
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

STALLED = 76
BEAT_S = 2.0  # how often each process tells the job it is alive
PEER_SILENCE_S = 30.0  # ... and how long one may be silent before it is gone
FLOOR_S = 120.0  # no phase is called stalled sooner (a slow save, a loaded machine)
MULTIPLE = 10  # ... or before it took this many times the slowest of its kind


class Watchdog:
  """`mark(phase, step)` as work starts; `check()` says if the last mark has stood too long.

  `timeout_s` (parallel.stall_timeout_s; 0: no watchdog) caps every limit;
  `startup_timeout_s` (default: `timeout_s`) is start-up's and each phase's first.
  """

  def __init__(
    self,
    timeout_s: float,
    *,
    startup_timeout_s: float | None = None,
    floor_s: float = FLOOR_S,
    multiple: float = MULTIPLE,
    process: str = "process 0 of 1",
    clock: Callable[[], float] = time.monotonic,
    exit: Callable[[int], None] = os._exit,
    peers=None,
  ):
    self.timeout_s, self.process, self.clock, self._exit = float(timeout_s), process, clock, exit
    self.startup_timeout_s = (
      self.timeout_s if startup_timeout_s is None else float(startup_timeout_s)
    )
    self._startup_field = (
      "parallel.stall_timeout_s" if startup_timeout_s is None else "parallel.startup_timeout_s"
    )
    self.floor_s, self.multiple = float(floor_s), multiple
    self.phase, self.step, self.since = "start-up", 0, clock()
    self._first: dict[str, float] = {}  # phase -> how long its first occurrence took
    self._slowest: dict[str, float] = {}  # phase -> the slowest of the later ones
    self.peers, self.peer_report, self.peer_gone = peers, None, None
    self.interval = min(
      5.0, max(min(self.timeout_s, self.startup_timeout_s or self.timeout_s) / 10, 0.05)
    )
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def mark(self, phase: str, step: int) -> None:
    now = self.clock()
    took = now - self.since
    if self.phase not in self._first:
      self._first[self.phase] = took
    else:
      self._slowest[self.phase] = max(self._slowest.get(self.phase, 0.0), took)
    self.phase, self.step, self.since = phase, step, now

  def doing(self) -> str:
    """Where the run is: "start-up", "the step at step 120"."""
    return "start-up" if self.phase == "start-up" else f"the {self.phase} at step {self.step}"

  def limit(self) -> tuple[float, str] | None:
    """The current phase's limit in seconds and what it comes from; None: no limit."""
    if self.timeout_s <= 0:
      return None
    if self.phase == "start-up" or self.phase not in self._first:  # it compiles, or starts up
      if self.startup_timeout_s <= 0:
        return None
      return self.startup_timeout_s, f"{self._startup_field}={self.startup_timeout_s:g}"
    slowest = self._slowest.get(self.phase, self._first[self.phase])
    adaptive = max(self.floor_s, self.multiple * slowest)
    if adaptive >= self.timeout_s:
      return self.timeout_s, f"parallel.stall_timeout_s={self.timeout_s:g}"
    return adaptive, (
      f"{self.multiple:g} x the slowest {self.phase} so far, {slowest:.3g} s, "
      f"at least {self.floor_s:g} s"
    )

  def stalled(self) -> str | None:
    """What stalls here ("the evaluation at step 250 of process 1 of 2"), if the current phase
    has run past its limit (or a process of the job is gone), else None."""
    if self.peer_gone is not None:
      return f"{self.peer_gone} (here: {self.doing()} of {self.process})"
    waited, limit = self.clock() - self.since, self.limit()
    if limit is None or waited <= limit[0]:
      return None
    return (
      f"the {self.phase} at step {self.step} of {self.process} has not finished in "
      f"{waited:.0f} s ({limit[1]})"
    )

  def check(self) -> str | None:
    """The line to print if this process, or another of the job, has stalled; else None."""
    return self._line(self.stalled())

  def _line(self, own: str | None) -> str | None:
    what = own
    if what is None and self.peer_report is not None:
      what = (
        f"{self.peer_report}; {self.process} stops with it (here: {self.phase}, step {self.step})"
      )
    if what is None:
      return None
    return (
      f"jaxtrain: stalled: {what}; exiting with status {STALLED}: the newest checkpoint is "
      "intact, run the same command to resume from it"
    )

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
        wait = 3 * max(self.interval, BEAT_S) + 10  # for the others to hear it, and go
        _bounded(lambda: self.peers.wait_for_the_others(wait, PEER_SILENCE_S), wait + 5)
      self._exit(STALLED)
      return

  def _listen(self) -> None:
    """Beats, and hears the others: their stalls as the coordination service reports them,
    and their silence (its own thread: a call to a frozen coordinator must not keep this
    process's own check from running)."""
    while not self._stop.wait(BEAT_S):
      try:
        self.peers.beat()
        report = self.peers.poll()
        gone = self.peers.gone(PEER_SILENCE_S)
      except Exception:  # the coordinator gone: this process's own timeout still holds
        continue
      if gone is not None:
        self.peer_gone = gone
      if report is not None:
        self.peer_report = report
      if gone is not None or report is not None:
        return

  def peer_gone_soon(self, seconds: float = PEER_SILENCE_S + 3 * BEAT_S) -> bool:
    """After a failed collective (the main thread): waits until every other process has been
    heard from since (False: the failure is not theirs) or one is found gone (True; this
    watchdog's thread then ends the process)."""
    if self.peers is None or self._thread is None:
      return False
    deadline, before = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
      if self.peer_gone is not None or self.peer_report is not None:
        self._stop.wait(seconds)  # the watchdog's thread is ending the process
        return True
      try:
        counts = self.peers.counts()
        before = counts if before is None else before
        if all(counts.get(p, 0) != c for p, c in before.items()):
          return False  # every process has beaten since: all alive
      except Exception:  # the coordination service of a dying job fails in many ways: ask again
        pass
      time.sleep(BEAT_S / 2)
    return False

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
    except Exception:  # best effort on the way out: the caller does not wait for an answer
      pass

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)

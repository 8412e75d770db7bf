"""SIGTERM/SIGINT/SIGHUP/SIGUSR1: finish the step in flight, save, and exit with PREEMPTED.

Spot and preemptible machines send SIGTERM with a grace period (often 30 s);
a closed terminal sends SIGHUP; SLURM sends SIGUSR1 ahead of a job's time
limit where asked (`#SBATCH --signal=USR1@120`).

The contract:
- **A handler only records.** Python runs a handler between two bytecodes of
  whatever the main thread executes: an import, a gc callback, a C
  extension's set-up, where an exception is dropped or turned into another
  error. So the handler appends the signal's name to one record per process
  and returns. The code looks at the record at its own boundaries: the
  command line between start-up phases (`check`), the loop after each
  dispatched step (`PreemptionWatcher.should_stop`), before the final test
  and after the final saves. The run then saves a checkpoint, waits for it
  to be on disk and exits with PREEMPTED (75): "saved, start me again".
- **One record from the first line of `main`.** The command opens the
  outermost `watching()` scope; the loop's own scopes nest in it and read
  the same record, so a signal received while anything was importing or
  starting is never lost. A scope opened outside any other (a caller of
  `train_and_evaluate` of its own) installs the handlers and gives back the
  previous ones when it closes.
- **A signal always ends the process** (`GraceThread`, started by the
  command): the signal also wakes a thread through `signal.set_wakeup_fd`,
  which the C-level handler writes even while the main thread is inside XLA
  (a hung collective, a long compile), where no Python handler can run. If
  the main thread reaches no boundary within `parallel.stop_grace_s` (30 s),
  or on a second Ctrl-C, the thread ends the process with one line naming
  the phase it was stuck in and the last checkpoint: status 75 if that
  checkpoint is complete, 76 (STALLED) if a save was being written.

With several processes a signal may reach one of them only (a node's
SIGTERM, a Ctrl-C in one terminal). Every `parallel.stop_check_every_steps`
steps, and at the last step, the processes agree (`agree`: a barrier of the
coordination service, about a millisecond) on whether any has received one;
all of them then stop at that same step, with one checkpoint, and exit 75.
Their start-up and final test only record a signal (`acting_jointly`): one
process leaving a collective alone would hang the others.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from typing import Callable

from jaxtrain.errors import PREEMPTED, STOP_SIGNALS, Preempted  # noqa: F401  (re-exported)

SIGNALS = STOP_SIGNALS
STALLED = 76  # as watchdog.STALLED: a stop that could not save what was in flight
DEFAULT_GRACE_S = 30.0


class _Record:
  """The stop signals this process received, and who reads them."""

  def __init__(self):
    self.names: list[str] = []  # in the order they came; appended by the handler only
    self.depth = 0  # open `watching()` scopes
    self.previous: dict = {}  # the handlers the outermost scope replaced
    self.observed = threading.Event()  # the main thread saw the signal at a boundary
    self.jointly = False  # several processes: start-up does not stop alone
    self.grace_s = DEFAULT_GRACE_S
    # What the grace thread reports if it has to end the process: () -> where the main thread
    # is ("start-up", "the step at step 120"), and () -> (the newest complete checkpoint's
    # step or None, whether a save is being written).
    self.where: Callable[[], str] = lambda: "start-up"
    self.checkpoints: Callable[[], tuple[int | None, bool]] = lambda: (None, False)


_RECORD = _Record()


def _record(signum, frame) -> None:
  """The handler: records the signal, nothing else (see the module docstring)."""
  del frame
  _RECORD.names.append(signal.Signals(signum).name)


def received() -> str | None:
  """The first stop signal received in this command (since the outermost scope opened)."""
  names = _RECORD.names
  return names[0] if names else None


def observe() -> str | None:
  """`received()`, at a boundary of the main thread: the grace thread then knows the
  signal is being acted on and does not end the process."""
  name = received()
  if name is not None:
    _RECORD.observed.set()
  return name


def check(doing: str = "", step: int | None = None) -> None:
  """A boundary where stopping loses nothing: raises `Preempted` if a stop signal was received
  (`step`: the checkpoint already saved, if any), unless several processes must stop
  together (`acting_jointly`)."""
  name = observe()
  if name is not None and not _RECORD.jointly:
    raise Preempted(step, name, doing)


def acting_jointly(jointly: bool = True) -> None:
  """Several processes: a signal is acted on where they agree, never alone at start-up
  (distributed.initialize says so once the processes have joined)."""
  _RECORD.jointly = jointly


@contextlib.contextmanager
def running(
  *,
  where: Callable[[], str],
  checkpoints: Callable[[], tuple[int | None, bool]],
  grace_s: float = DEFAULT_GRACE_S,
  jointly: bool = False,
):
  """A run's part of the record while it trains: what the grace thread names if it ends the
  process (`where`: "the step at step 120"; `checkpoints`: the newest complete checkpoint's
  step, and whether a save is being written), `parallel.stop_grace_s`, and whether several
  processes stop together. The values before are back when it closes."""
  saved = (_RECORD.where, _RECORD.checkpoints, _RECORD.grace_s, _RECORD.jointly)
  _RECORD.where, _RECORD.checkpoints, _RECORD.grace_s = where, checkpoints, float(grace_s)
  _RECORD.jointly = jointly or _RECORD.jointly
  try:
    yield
  finally:
    _RECORD.where, _RECORD.checkpoints, _RECORD.grace_s, _RECORD.jointly = saved


@contextlib.contextmanager
def watching():
  """Records stop signals while open. The outermost scope (on the main thread) starts a new
  record, installs the handlers, and puts the previous ones back when it closes."""
  outermost = _RECORD.depth == 0
  installed = outermost and threading.current_thread() is threading.main_thread()
  if outermost:
    _RECORD.names.clear()
    _RECORD.observed.clear()
  if installed:
    _RECORD.previous = {sig: signal.signal(sig, _record) for sig in SIGNALS}
  _RECORD.depth += 1
  try:
    yield _RECORD
  finally:
    _RECORD.depth -= 1
    if installed:
      for sig, handler in _RECORD.previous.items():
        # None: a handler installed outside Python, which cannot be put back.
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)
      _RECORD.previous = {}
    if outermost:
      _RECORD.jointly = False


class PreemptionWatcher:
  """The loop's view of the record: `should_stop(step)` at each of its boundaries.

  `agree(name, signal_name) -> signal_name | None` (distributed.agree_on_stop)
  makes the job's processes decide together; without it the signal decides.
  """

  SIGNALS = SIGNALS

  def __init__(self, agree: Callable[[str, str | None], str | None] | None = None):
    self.agreed: str | None = None  # received by one of the job's processes (with `agree`)
    self.agree = agree
    self._scope = None

  def __enter__(self):
    self._scope = watching()
    self._scope.__enter__()
    return self

  def __exit__(self, *exc):
    scope, self._scope = self._scope, None
    return scope.__exit__(*exc) if scope is not None else False

  @property
  def signal_name(self) -> str | None:
    """The stop signal this process received."""
    return received()

  def observe(self) -> str | None:
    """At a step boundary where the processes do not agree: the main thread has seen it."""
    return observe()

  def should_stop(self, step: int) -> bool:
    """Called by every process at the same steps: whether the run stops after this one."""
    name = observe()
    if self.agree is None:
      return name is not None
    self.agreed = self.agreed or self.agree(str(step), name)
    return self.agreed is not None

  @property
  def stop_signal(self) -> str | None:
    """The signal the run stops on: the job's agreed one, else this process's."""
    return self.agreed if self.agree is not None else received()


class GraceThread:
  """Ends the process when the main thread does not act on a stop signal in time.

  Woken by `signal.set_wakeup_fd`: the C-level handler writes the signal's
  number to a pipe at once, whatever the main thread is doing. After the
  first stop signal the main thread has `grace_s` to reach a boundary
  (`observe`); a second SIGINT ends the process at once. Start it on the
  main thread, from a `watching()` scope.
  """

  def __init__(
    self, exit: Callable[[int], None] = os._exit, clock: Callable[[], float] = time.monotonic
  ):
    self._exit, self.clock = exit, clock
    self._pipe: tuple[int, int] | None = None
    self._previous_fd = -1
    self._thread: threading.Thread | None = None

  def __enter__(self):
    read, write = os.pipe()
    os.set_blocking(write, False)  # the C handler must never block on a full pipe
    self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    self._pipe = (read, write)
    self._thread = threading.Thread(
      target=self._watch, args=(read,), name="jaxtrain-stop", daemon=True
    )
    self._thread.start()
    return self

  def __exit__(self, *exc):
    signal.set_wakeup_fd(self._previous_fd)
    read, write = self._pipe
    os.close(write)  # the thread reads the end of the pipe and returns
    self._thread.join(5)
    if not self._thread.is_alive():
      os.close(read)
    return False

  def _watch(self, read: int) -> None:
    numbers = {int(s) for s in SIGNALS}
    first, deadline, interrupts = None, None, 0
    while True:
      timeout = None if deadline is None else min(0.1, max(0.0, deadline - self.clock()))
      if select.select([read], [], [], timeout)[0]:
        data = os.read(read, 64)
        if not data:
          return  # the command is done
        for number in data:
          if number not in numbers:
            continue
          interrupts += number == signal.SIGINT
          if first is None:
            first, deadline = signal.Signals(number).name, self.clock() + _RECORD.grace_s
          if interrupts >= 2:
            return self._end(first, "a second Ctrl-C")
      if deadline is not None and _RECORD.observed.is_set():
        deadline = None  # the main thread acts on it: saving and stopping are its to do
      elif deadline is not None and self.clock() >= deadline:
        return self._end(first, f"not done within parallel.stop_grace_s={_RECORD.grace_s:g}")

  def _end(self, signal_name: str, why: str) -> None:
    line, status = stuck_line(signal_name, why)
    print(line, file=sys.stderr, flush=True)
    self._exit(status)


def stuck_line(signal_name: str, why: str) -> tuple[str, int]:
  """The one line, and the status, of a process ended while stuck (GraceThread)."""
  try:
    where, (last, saving) = _RECORD.where(), _RECORD.checkpoints()
  except Exception:  # what is known cannot be read: keep the rule for the status
    where, last, saving = "start-up", None, True
  kept = f"the last checkpoint is step {last}" if last is not None else "there is no checkpoint"
  if saving:
    kept += " (a save in flight is lost)"
  return (
    f"jaxtrain: preempted: {signal_name} received: stopped while stuck in {where} "
    f"({why}); {kept}; run the same command to resume"
  ), (STALLED if saving else PREEMPTED)

"""The one exception type for mistakes a user can fix, and the exit statuses that report them."""

import importlib
import signal

USAGE_ERROR = 2  # a bad command line
RUN_ERROR = 1  # a mistake found while running (config value, data, checkpoint, non-finite loss)
PREEMPTED = (
  75  # EX_TEMPFAIL: stopped on a signal with a checkpoint saved; run the same command again
)


class UserError(Exception):
  """Raised with a one-line message naming what to fix; the CLI prints it and exits 1."""


def require(module: str, extra: str, what: str):
  """`module`, imported; if it is not installed, a UserError naming the extra that installs it."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise UserError(
      f"{what} needs {module.split('.')[0]}, which is not installed: "
      f"pip install 'jaxtrain[{extra}]'"
    ) from None


# The signals that stop a command with a checkpoint and PREEMPTED: a spot machine's SIGTERM,
# Ctrl-C, a closed terminal, SLURM's warning ahead of the time limit (--signal=USR1@120).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


class Preempted(BaseException):
  """A command stopped on a signal: with a checkpoint at `step`, or before it had trained anything.

  A BaseException, as KeyboardInterrupt is: code that turns errors into messages
  (`except Exception`) must not turn a stop into one.
  """

  def __init__(self, step: int | None, signal_name: str, doing: str = ""):
    done = (
      f"saved a checkpoint at step {step}"
      if step is not None
      else f"stopped {doing or 'before anything new was trained'}; nothing saved was touched"
    )
    super().__init__(f"{signal_name} received: {done}; run the same command to resume")
    self.step, self.signal_name = step, signal_name

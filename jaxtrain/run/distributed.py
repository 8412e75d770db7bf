"""Joining the processes of a multi-host job with `jax.distributed` (JAX's own runtime).

Called once, before anything touches a device. A job is multi-process when
- the command line says so: `--coordinator HOST:PORT --num_processes N
  --process_id I`, or JAX's own variables do (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID; a flag wins over its variable), or
- it runs inside a launcher JAX recognises by itself: SLURM (`srun`), Open
  MPI (`mpirun`), or a Kubernetes JobSet (with the `kubernetes` package);
  `jax.distributed.initialize()` then reads everything from the environment.
Otherwise it is a single process and nothing is initialised. (An explicit
`--num_processes 1` does initialise, with a coordinator on a free local port
unless one is given: on CPU the run then uses gloo's collectives, and
reproduces the bits of a multi-process run with the same devices in all.)

On CPU, cross-process collectives need an implementation: gloo is chosen
unless the user set one.

Never a hang from jaxtrain's side: every device collective is issued from the
loop's thread, in the same order on every process. Orbax's barriers (its
asynchronous saves finish on a thread of their own) therefore go through
JAX's coordination service, not through a device all-reduce that would
interleave with the steps' differently on each process; that interleaving hung
two-process jobs under load. Agreements between the processes (stop on a
signal, a stall seen by one) also use the coordination service: `agree_on_stop`
and `JobStalls`. JAX's own preemption notifier is off: jaxtrain's handlers see
every signal (run/preemption.py).
"""

from __future__ import annotations

import logging
import os

from jaxtrain.errors import UserError

log = logging.getLogger("jaxtrain")


def detected_launcher(environ=os.environ) -> str | None:
  """The multi-process launcher this process runs under, if JAX can read it."""
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
  if all(v in environ for v in slurm) and int(environ["SLURM_NTASKS"]) > 1:  # inside srun
    return "SLURM"
  if int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 and "OMPI_MCA_orte_hnp_uri" in environ:
    return "Open MPI"
  if "KUBERNETES_SERVICE_HOST" in environ and "JOBSET_NAME" in environ:
    return "Kubernetes JobSet"
  return None


ENVIRONMENT = {
  "coordinator": "JAX_COORDINATOR_ADDRESS",
  "num_processes": "JAX_NUM_PROCESSES",
  "process_id": "JAX_PROCESS_ID",
}


def launch_settings(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  environ=os.environ,
):
  """(coordinator, num_processes, process_id): the flags, else JAX's own variables
  (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), which a launcher or a
  Kubernetes manifest may set instead. `--num_processes 1` alone is a one-process job with
  a local coordinator."""
  values = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
  for key, variable in ENVIRONMENT.items():
    if values[key] is None and environ.get(variable, "") != "":
      text = environ[variable]
      try:
        values[key] = text if key == "coordinator" else int(text)
      except ValueError:
        raise UserError(f"{variable}={text!r} must be an integer") from None
  if values["num_processes"] == 1 and values["coordinator"] is None:
    values["coordinator"] = f"127.0.0.1:{_free_port()}"
    values["process_id"] = 0 if values["process_id"] is None else values["process_id"]
  return values["coordinator"], values["num_processes"], values["process_id"]


def _free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def initialize(
  coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
  """Joins the job's processes; returns False (and does nothing) for a single process."""
  coordinator, num_processes, process_id = launch_settings(coordinator, num_processes, process_id)
  explicit = (coordinator, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      missing = [
        f"--{k} (or {v})" for (k, v), value in zip(ENVIRONMENT.items(), explicit) if value is None
      ]
      raise UserError(
        f"a multi-process run needs {', '.join(missing)} as well (it has "
        "--coordinator, --num_processes and --process_id, or JAX's variables)"
      )
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise UserError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
  launcher = None if coordinator else detected_launcher()
  if coordinator is None and launcher is None:
    return False

  import jax

  if os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION") is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_enable_preemption_service", False)  # jaxtrain agrees on stops itself
  orbax_barriers_through_coordination_service()
  if coordinator is not None:
    jax.distributed.initialize(
      coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
  else:
    jax.distributed.initialize()
  log.info(
    "process %d of %d joined (%s); %d devices in all",
    jax.process_index(),
    jax.process_count(),
    launcher or coordinator,
    jax.device_count(),
  )
  if jax.process_count() > 1:  # from here on they stop together (preemption.py)
    from jaxtrain.run import preemption

    preemption.acting_jointly()
  return True


def orbax_barriers_through_coordination_service() -> None:
  """Orbax's default barrier is a device collective, issued also from its save thread; the
  coordination service's barrier touches no device (and has a timeout)."""
  from absl import flags
  from orbax.checkpoint._src.multihost import multihost

  flag = flags.FLAGS[multihost.EXPERIMENTAL_ORBAX_USE_DISTRIBUTED_BARRIER.name]
  flag.value, flag.present = True, 1  # readable before absl parses a command line


NEVER_S = 7 * 24 * 3600


def past_stall_timeout(stall_timeout_s: float) -> int:
  """Seconds a wait between processes may take before it fails by itself: past the watchdog's."""
  return int(stall_timeout_s) + 300 if stall_timeout_s > 0 else NEVER_S


def _client():
  from jax._src import distributed as jax_distributed

  return jax_distributed.global_state.client


def agree_on_stop(name: str, signal_name: str | None, timeout_s: float = 0) -> str | None:
  """The stop signal any process of the job has received, else None; the same answer on all.

  Every process calls it at the same point (`name`: the step), in the loop's
  thread. A coordination-service barrier, not a device collective: about a
  millisecond, and nothing waits for the devices. It waits past the stall
  timeout `timeout_s` for a process that does not come: the watchdog ends the job first.
  """
  import jax

  client, prefix = _client(), f"jaxtrain/stop/{name}/"
  if signal_name:
    client.key_value_set(prefix + str(jax.process_index()), signal_name)
  timeout_ms = min(past_stall_timeout(timeout_s), 2**31 // 1000 - 1) * 1000
  client.wait_at_barrier("jaxtrain/stop", timeout_ms)  # everyone's key is set before anyone reads
  received = sorted(value for _, value in client.key_value_dir_get(prefix))
  return received[0] if received else None


def everyones(name: str, value: str, timeout_s: float = 0) -> list[str]:
  """Every process's `value` for `name`, in process order; the same list on all of them.

  Each process calls it once at the same point (a decision all must share: whether each
  holds its workdir lock, whether each was asked to start over). Through the coordination
  service: no device is involved. Waits past `timeout_s` (the stall timeout) at most.
  """
  import jax

  client, prefix = _client(), f"jaxtrain/{name}/"
  client.key_value_set(prefix + str(jax.process_index()), value)
  timeout_ms = min(past_stall_timeout(timeout_s), 2**31 // 1000 - 1) * 1000
  client.wait_at_barrier(f"jaxtrain/{name}", timeout_ms)
  values = dict(client.key_value_dir_get(prefix))
  return [values[prefix + str(i)] for i in range(jax.process_count())]


class JobStalls:
  """How a stalled process tells the job's others, how they hear of it, how a dead one is
  noticed (each beats; one silent too long is gone), and how they leave in order: process 0,
  which hosts the coordination service, last (watchdog.py)."""

  PREFIX, LEFT, ALIVE = "jaxtrain/stalled/", "jaxtrain/leaving/", "jaxtrain/alive/"

  def __init__(self, clock=None):
    import time

    self.clock = clock or time.monotonic
    self._heard: dict[int, tuple[int, float]] = {}  # process -> (its beat count, when it changed)
    self._started = self.clock()

  def publish(self, what: str) -> None:
    import jax

    _client().key_value_set(self.PREFIX + str(jax.process_index()), what)

  def poll(self) -> str | None:
    reported = _client().key_value_dir_get(self.PREFIX)
    return sorted(value for _, value in reported)[0] if reported else None

  def beat(self) -> None:
    import jax

    _client().key_value_increment(self.ALIVE + str(jax.process_index()), 1)

  def counts(self) -> dict[int, int]:
    """Each process's beats so far."""
    return {
      int(key.rsplit("/", 1)[-1]): int(count)
      for key, count in _client().key_value_dir_get(self.ALIVE)
    }

  def _listen(self) -> None:
    now = self.clock()
    for process, count in self.counts().items():
      if self._heard.get(process, (None,))[0] != count:
        self._heard[process] = (count, now)

  def gone(self, silence_s: float) -> str | None:
    """ "process 1 of 2 is gone: ...", for the first process not heard from in `silence_s`."""
    import jax

    self._listen()
    now = self.clock()
    for process in range(jax.process_count()):
      if process == jax.process_index():
        continue
      last = self._heard.get(process, (None, self._started))[1]
      if now - last > silence_s:
        return (
          f"process {process} of {jax.process_count()} is gone: not heard from in "
          f"{now - last:.0f} s"
        )
    return None

  def leave(self) -> None:
    import jax

    _client().key_value_set(self.LEFT + str(jax.process_index()), "1")

  def wait_for_the_others(self, seconds: float, silence_s: float = 30.0) -> None:
    """Process 0: returns once every process not gone (heard from within `silence_s`) has
    said it leaves, or after `seconds`."""
    import time
    import jax

    deadline = time.monotonic() + seconds
    while jax.process_index() == 0 and time.monotonic() < deadline:
      self._listen()
      alive = sum(
        self.clock() - self._heard.get(p, (None, self._started))[1] <= silence_s
        for p in range(jax.process_count())
      )
      if len(_client().key_value_dir_get(self.LEFT)) >= max(alive, 1):
        time.sleep(0.5)  # their exits, after their last word
        return
      time.sleep(0.1)

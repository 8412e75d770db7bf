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


ENVIRONMENT = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
               "process_id": "JAX_PROCESS_ID"}


def launch_settings(coordinator: str | None = None, num_processes: int | None = None,
                    process_id: int | None = None, environ=os.environ):
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


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins the job's processes; returns False (and does nothing) for a single process."""
  coordinator, num_processes, process_id = launch_settings(coordinator, num_processes, process_id)
  explicit = (coordinator, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      missing = [f"--{k} (or {v})" for (k, v), value in zip(ENVIRONMENT.items(), explicit)
                 if value is None]
      raise UserError(f"a multi-process run needs {', '.join(missing)} as well (it has "
                      "--coordinator, --num_processes and --process_id, or JAX's variables)")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise UserError(f"--process_id={process_id} must be in [0, --num_processes="
                      f"{num_processes})")
  launcher = None if coordinator else detected_launcher()
  if coordinator is None and launcher is None:
    return False

  import jax
  if os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION") is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator is not None:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
  log.info("process %d of %d joined (%s); %d devices in all",
           jax.process_index(), jax.process_count(), launcher or coordinator, jax.device_count())
  return True

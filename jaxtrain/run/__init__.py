"""The run loop around the pure steps: setup, hooks, checkpoints, devices, processes.

loop.py            train_and_evaluate = setup -> train (steps + hooks) -> finish
hooks.py           periodic work between steps: Loop (what hooks see), Hook, and the
                   built-in ones (progress, train metrics, evaluation with early
                   stopping and best-k, preemption, checkpoints)
inputs.py          a run's data, preprocessing, model and task, found through registry.py
compiled.py        the steps compiled per layout; evaluation over a split; at most
                   8 dispatches unfinished (XLA:CPU deadlocks past 32)
workdir.py         every name in a workdir and its owner; the lock and claim, config.json,
                   the events log (read, event_at, keep_up_to), --start_over's set-aside
checkpoint.py      the only Orbax reader and writer: the newest N (state + data position)
                   and the best k, checksums saved and verified on every read; digests
parallel.py        Layout: jit over a device mesh (optionally fsdp) or pmap
distributed.py     multi-host: jax.distributed from flags, JAX's variables, SLURM, Open
                   MPI, JobSet; agreements through the coordination service
preemption.py      SIGTERM/SIGINT/SIGHUP/SIGUSR1: recorded, acted on at boundaries (save,
                   exit 75; all processes at one step); a stuck process ends after the grace
watchdog.py        a stall (or a dead process) ends every process with one line and exit
                   76; limits adapt to the slowest step, evaluation and save seen
nan_guard.py       non-finite steps: never applied or saved; halt or skip
early_stopping.py  patience on an eval metric; which k checkpoints are the best
finetune.py        init_from another run or any Orbax checkpoint
manifest.py        manifest.json: versions, devices, data, user code; config checks
metric_writers.py  console, metrics.jsonl, TensorBoard (kept to one history), live bar
workdir_lock.py    deprecated: the lock is in workdir.py
"""

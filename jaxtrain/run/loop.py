"""`train_and_evaluate(config, workdir)`: the pure steps in a loop, and periodic hooks around them.

A run is a pure function of (config, data, seed): the workdir holds what it
needs to resume (checkpoints of state + data position) and to be read back
(config.json, manifest.json, metrics.jsonl, TensorBoard events). Running the
same command in the same workdir resumes from the latest checkpoint and ends
with the bits an uninterrupted run would have.

Three parts: `setup` checks the config, the workdir and the user's code,
builds the data, model, task and state, and restores the newest checkpoint;
`train` dispatches steps without waiting for them (metrics are summed on
device) and runs the hooks (hooks.py) after each; `finish` tests the model
one would deploy. Everything periodic (logging, evaluation, early stopping,
checkpoints, preemption, progress, a sweep's pruning, your own) is a hook.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import json
import logging
import os
import time

import jax
import numpy as np

from jaxtrain import optim, tasks
from jaxtrain.config import PER_EPOCH, validate
from jaxtrain.data import input_pipeline
from jaxtrain.errors import UserError
from jaxtrain.run import (
  checkpoint,
  compiled,
  distributed,
  early_stopping,
  feeds,
  finetune,
  inputs as run_inputs,
  manifest,
  nan_guard,
  parallel,
  preemption,
)
from jaxtrain.run.hooks import Checkpoint, Evaluate, LogTrainMetrics, Loop, Preemption, Progress
from jaxtrain.run import metric_writers, workdir as wd
from jaxtrain.run.metric_writers import MetricWriter, ProgressBar
from jaxtrain.run.preemption import Preempted, PreemptionWatcher
from jaxtrain.run.watchdog import Watchdog
from jaxtrain.state import TrainState
from jaxtrain.steps import eval_step

log = logging.getLogger("jaxtrain")


def train_and_evaluate(
  config,
  workdir: str,
  *,
  config_dir: str | None = None,
  stop_at_step: int | None = None,
  allow_config_change: bool = False,
  progress: bool = False,
  hooks: tuple | list = (),
  tensorboard_dir: str | None = None,
  start_over: bool = False,
) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest readable checkpoint.

  `config_dir` anchors the config's relative file paths (`model.py:Net`; the
  CLI passes the config file's directory). `stop_at_step` ends this process
  after that global step (with a checkpoint) without changing the run:
  starting again continues to `num_train_steps`. SIGTERM, SIGINT, SIGHUP and
  SIGUSR1 stop it at the next step boundary with a checkpoint and raise
  `Preempted` (preemption.py). `hooks` (hooks.Hook) run after the
  built-in evaluation and before checkpointing; an exception from one (a
  sweep's pruner) ends the run. `progress` shows a live bar (on a terminal).
  TensorBoard events go to `tensorboard_dir` (default: <workdir>/tensorboard).
  `start_over`: a workdir none of whose checkpoints is usable has them, and
  its metrics, set aside (<workdir>/abandoned/) and trains from step 0.
  """
  t_entry = time.perf_counter()
  many = jax.process_count() > 1
  if many:  # also where the caller joined the processes itself (jax.distributed.initialize)
    distributed.orbax_barriers_through_coordination_service()
  parallel_config = config.parallel
  watchdog = Watchdog(
    parallel_config.stall_timeout_s,
    startup_timeout_s=parallel_config.startup_timeout_s,
    process=f"process {jax.process_index()} of {jax.process_count()}",
    peers=distributed.JobStalls() if many else None,
  )
  # Many processes stop together or not at all: a signal during start-up or the final test is
  # recorded, not acted on alone (one process leaving a collective would hang the others).
  watcher = PreemptionWatcher(
    agree=functools.partial(distributed.agree_on_stop, timeout_s=parallel_config.stall_timeout_s)
    if many
    else None
  )
  signals = preemption.running(
    where=watchdog.doing,
    checkpoints=lambda: checkpoint.on_disk(workdir),
    grace_s=parallel_config.stop_grace_s,
    jointly=many,
  )
  with watchdog, watcher, signals, _dead_peer_named(watchdog, many):
    loop = setup(
      config,
      workdir,
      config_dir=config_dir,
      stop_at_step=stop_at_step,
      allow_config_change=allow_config_change,
      tensorboard_dir=tensorboard_dir,
      start_over=start_over,
    )
    loop.watchdog = watchdog
    bar = ProgressBar(
      loop.num_train_steps,
      loop.step,
      loop.steps_per_epoch,
      enabled=progress and jax.process_index() == 0,
    )
    loop.listeners += [loop.writer.write, bar.set_metrics]
    evaluation = make_evaluation(loop)
    every = [
      Progress(bar),
      LogTrainMetrics(
        config.log_every_steps,
        loop.schedule,
        nan_policy=config.nan_policy,
        nan_max_consecutive_skips=config.nan_max_consecutive_skips,
      ),
      *([evaluation] if evaluation is not None else []),
      *hooks,
      Preemption(watcher, parallel_config.stop_check_every_steps if many else 1),
      Checkpoint(cadence(config.checkpoint_every_steps, loop.steps_per_epoch), save),
    ]
    try:
      preemption.check()  # nothing trained yet: a signal during start-up stops here
      train(loop, every, t_entry)
      if watcher.stop_signal:  # after the last step's hooks: its checkpoint is saved
        raise Preempted(loop.step, watcher.stop_signal)
      preemption.check(step=loop.step)  # before the test, which then runs on resume
      finish(loop, evaluation)
    except BaseException as e:
      abort(loop, every, e)
      raise
    close(loop, every)  # a signal now waits for the saves to reach the disk
    if preemption.observe() and not many:  # many: all finished; a signal to one changes nothing
      raise Preempted(loop.step, preemption.received())
  return loop.host_state()


@contextlib.contextmanager
def _dead_peer_named(watchdog: Watchdog, many: bool):
  """Several processes: a collective that fails because another process died ends this one
  with the watchdog's one line naming it (76), not a traceback and, 100 s later, JAX's fatal
  error; a failure that is not a dead process's is raised as it is."""
  try:
    yield
  except jax.errors.JaxRuntimeError:
    if many:
      watchdog.peer_gone_soon()
    raise


def train(loop: Loop, every: list, t_entry: float | None = None) -> None:
  """Steps until this process's last step or a hook's stop; raises `Preempted` on a signal."""
  pace = feeds.pace_for(
    loop.config.steps_per_dispatch,
    loop.train_iter,
    [h.every_steps for h in every] + [loop.num_train_steps, loop.last_step],
  )
  t_entry = time.perf_counter() if t_entry is None else t_entry
  while loop.step < loop.last_step and loop.stop is None:
    if loop.totals is None:
      loop.totals = loop.zero_totals()
    k = pace(loop)
    loop.mark("step", loop.step + k)
    loop.train_iter.dispatch(loop, k)
    loop.previous_step, loop.step = loop.step, loop.step + k
    if loop.previous_step == loop.first_step:  # start-up cost (compiling, mostly): one wait, once
      jax.block_until_ready(loop.totals)
      log.info(
        "first step done %.3f s after the run started (compiling included)",
        time.perf_counter() - t_entry,
      )
    loop.events = {}
    for hook in every:
      hook(loop)
    if loop.stop == "preempted":
      raise Preempted(loop.step, loop.stop_signal or "SIGTERM")


def setup(
  config,
  workdir: str,
  *,
  config_dir: str | None = None,
  stop_at_step: int | None = None,
  allow_config_change: bool = False,
  tensorboard_dir: str | None = None,
  start_over: bool = False,
) -> Loop:
  """Checks, data, model, task and state of a run, restored from its newest checkpoint."""
  validate(config)
  with wd.claimed(workdir, config.parallel.stall_timeout_s) as lock:
    if jax.process_count() > 1:  # all of them, or none
      asked = distributed.everyones(
        "start_over", "1" if start_over else "", config.parallel.stall_timeout_s
      )
      if len(set(asked)) > 1:
        raise UserError(
          f"--start_over was given to processes {[i for i, a in enumerate(asked) if a]} "
          f"of {len(asked)} only: give it to every process of the job, or to none"
        )
    if start_over:
      _start_over(workdir, config.parallel.stall_timeout_s)
    config_dict = json.loads(config.to_json_best_effort())
    resuming = bool(checkpoint.saved_steps(workdir))
    _check_config_unchanged(workdir, config_dict, allow_config_change)
    layout = parallel.Layout.from_config(config.parallel)
    layout.check_batch_size(config.batch_size)

    inputs = run_inputs.load(config, workdir, fit=not resuming, base_dir=config_dir)
    preemption.check()  # start-up's boundaries: a signal stops it here, nothing lost
    if resuming:
      _check_code_unchanged(workdir, inputs.code, allow_config_change)
    train_source = inputs.sources["train_split"]
    num_train_steps = resolve_num_train_steps(config, len(train_source))
    steps_per_epoch = input_pipeline.steps_per_epoch(len(train_source), config.batch_size)
    _check_dispatch_cadence(config, num_train_steps, steps_per_epoch, stop_at_step)
    train_data, train_iter = _train_data(config, inputs, layout)
    tx, schedule = optim.make_optimizer(config.optimizer, num_train_steps)
    state, pretrained = _initial_state(config, workdir, inputs, layout, tx, train_data[0], resuming)
    preemption.check()
    if not resuming:
      inputs.save_preprocessing(workdir)
      finetune.write_record(workdir, pretrained)

    manager, state = checkpoint.restore_latest_valid(
      workdir,
      state,
      train_iter,
      max_to_keep=config.keep_checkpoints,
      async_save=config.async_checkpointing,
    )
    step = int(parallel.host_value(state.step))
    if jax.process_index() == 0:
      wd.write_config(workdir, config)
      manifest.record_start(
        workdir,
        config_dict,
        manifest.dataset_record(inputs.builder, config.dataset),
        step,
        code=inputs.code,
        config_dir=os.path.abspath(config_dir) if config_dir else None,
      )
    if step:
      log.info("resumed from %s at step %d", checkpoint.checkpoint_dir(workdir), step)
    tensorboard_dir = tensorboard_dir or wd.tensorboard(workdir)
    if jax.process_index() == 0:  # the steps after `step` are trained again: one history
      wd.keep_up_to(workdir, step)
      metric_writers.keep_tensorboard_up_to(tensorboard_dir, step)
    writer = MetricWriter(
      workdir, enabled=jax.process_index() == 0, tensorboard_dir=tensorboard_dir
    )
    if step == 0:
      writer.write_text("config", "```\n" + str(config) + "\n```")

    loop = Loop(
      config=config,
      workdir=workdir,
      layout=layout,
      inputs=inputs,
      state=layout.to_step(state),
      step=step,
      num_train_steps=num_train_steps,
      last_step=min(stop_at_step or num_train_steps, num_train_steps),
      first_step=step,
      previous_step=step,
      schedule=schedule,
      train_iter=train_iter,
      manager=manager,
      writer=writer,
      config_dict=config_dict,
      lock=lock,
      steps_per_epoch=steps_per_epoch,
    )
    loop.health = layout.put_replicated(nan_guard.as_vector(nan_guard.new_health()))
    # Metric totals' shapes, from one trace of the step (not per log interval).
    loop.total_shapes = jax.eval_shape(
      compiled.train_fn(layout, state),
      loop.state,
      None,
      loop.health,
      layout.put_batch(train_data[0]),
    )[1]
    loop.metric_names = tuple(sorted(loop.total_shapes))
    if wd.stopped_early(workdir, step):
      loop.stop = "early_stop"  # stopped early before: nothing more to train
    log.info("curves: %s", _curves_hint(workdir, tensorboard_dir))
    return loop


def _start_over(workdir: str, timeout_s: float = 0) -> None:
  """Sets aside a workdir's history if, and only if, none of its checkpoints is usable (process
  0 moves it; the others wait for it, so none reads what is being moved)."""
  steps = checkpoint.saved_steps(workdir)
  if not steps:
    return
  bad = checkpoint.verify(workdir)
  usable = [s for s in steps if s not in bad]
  if usable:
    raise UserError(
      f"--start_over sets aside a run none of whose checkpoints is usable, but step "
      f"{usable[-1]} of {workdir} is: resume it (drop --start_over), or use a new workdir"
    )
  if jax.process_count() > 1:  # every process has looked before anything moves
    distributed.everyones("start_over_verified", "", timeout_s)
  if jax.process_index() == 0:
    log.warning(
      "none of the checkpoints of %s is usable; set them and their metrics aside in %s "
      "and starting again at step 0",
      workdir,
      wd.set_aside(workdir),
    )
  if jax.process_count() > 1:
    distributed.everyones("start_over_done", "", timeout_s)


def _curves_hint(workdir: str, tensorboard_dir: str) -> str:
  if importlib.util.find_spec("tensorboard") is not None:
    return f"tensorboard --logdir {tensorboard_dir}"
  return (
    f"{wd.metrics(workdir)}; TensorBoard event files in {tensorboard_dir} "
    "(to view them: pip install 'jaxtrain[tensorboard]')"
  )


def _train_data(config, inputs: run_inputs.RunInputs, layout: parallel.Layout):
  """The training batches (element g = global step g) and their checkpointable iterator."""
  source = inputs.sources["train_split"]
  train_data = input_pipeline.train_dataset(
    source,
    global_batch_size=config.batch_size,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    transform=inputs.transform(train=True),
  )
  k, keep_finite = (
    config.steps_per_dispatch or 1,
    config.nan_policy == "skip",
  )  # auto: fed one by one
  on_device = feeds.fits_on_device(
    source, inputs.transform(train=True), config.dataset.device_cache_max_mb << 20, layout
  )
  if on_device is not None:
    return train_data, feeds.DeviceFeed(
      on_device,
      layout,
      batch_size=config.batch_size,
      seed=config.seed,
      position_unit=k,
      keep_finite=keep_finite,
    )
  train_iter = input_pipeline.DevicePrefetch(
    input_pipeline.iterate(
      train_data if k == 1 else input_pipeline.grouped(train_data, k),
      _host_prefetch(source, config),
    ),
    layout.put_batch if k == 1 else layout.put_batches,
    config.parallel.prefetch_to_device,
  )
  return train_data, feeds.HostFeed(train_iter, layout, k, keep_finite=keep_finite)


def _initial_state(
  config,
  workdir: str,
  inputs: run_inputs.RunInputs,
  layout: parallel.Layout,
  tx,
  example_batch,
  resuming: bool,
) -> tuple[TrainState, dict | None]:
  """The step-0 state (or a fine-tuning start), checked against the data, placed on the devices,
  and the report of the pretrained weights it holds (None if none)."""
  model = inputs.model(config, example_batch)
  _check_data_fits_model(config, inputs.builder, model, example_batch)
  axis_name = parallel.DATA_AXIS if layout.mode == "pmap" else None
  if model.pretrained and (config.init_from.workdir or config.init_from.checkpoint):
    raise UserError(
      "model.pretrained and init_from both name weights to start from: set one of them"
    )
  variables, apply_fn, state_rng, report = finetune.model_variables(
    config, model, example_batch, model.apply_fn(axis_name)
  )
  state = TrainState.create(
    apply_fn=apply_fn,
    variables=variables,
    tx=tx,
    loss_fn=tasks.over_members(inputs.task.loss_fn),
    rng=state_rng,
  )
  optim.check_patterns(state.params, config.optimizer.freeze, config.optimizer.lr_multipliers)
  if config.early_stopping.metric:
    _check_eval_metric(config, inputs, state)
  if (config.init_from.workdir or config.init_from.checkpoint) and not resuming:
    state = finetune.init_from(state, config, workdir)
  return layout.place_state(state), report


def make_evaluation(loop: Loop) -> Evaluate | None:
  """The evaluation hook: eval split metrics, early stopping and the best checkpoints."""
  config, source = loop.config, loop.inputs.sources["eval_split"]
  if source is None:
    return None
  es = config.early_stopping
  tracker = (
    early_stopping.Tracker.from_events(wd.read_events(loop.workdir), config, up_to_step=loop.step)
    if es.metric
    else None
  )
  best_manager = (
    checkpoint.make_best_manager(loop.workdir)
    if es.metric and config.keep_best_checkpoints
    else None
  )
  return Evaluate(
    cadence(config.eval_every_steps, loop.steps_per_epoch),
    source,
    batch_size=config.batch_size,
    early_stop_config=es,
    tracker=tracker,
    best_manager=best_manager,
    keep_best=config.keep_best_checkpoints,
  )


def save(loop: Loop) -> None:
  """Saves unless the state is non-finite; a failed write names the intact checkpoint."""
  loop.mark("save")
  config = loop.config
  nan_guard.check(
    loop.fetch_health(),
    loop.metric_names,
    policy=config.nan_policy,
    max_consecutive=config.nan_max_consecutive_skips,
  )
  state = loop.host_state()
  if not bool(nan_guard.all_finite(checkpoint.state_arrays(state))):
    raise nan_guard.NonFiniteError(
      f"the state at step {loop.step} holds non-finite values; "
      "not saved (the latest checkpoint is the last finite state)"
    )
  try:
    checkpoint.save(loop.manager, loop.step, state, loop.train_iter)
  except Exception as e:  # this save, or an earlier asynchronous one, failed to write
    failure = checkpoint.write_failure(e, loop.manager, loop.workdir, loop.step)
    if failure is None:
      raise
    raise failure from None


def finish(loop: Loop, evaluation: Evaluate | None) -> None:
  """After the last step (or an early stop): the test split, measured on the best checkpoint."""
  source = loop.inputs.sources["test_split"]
  done = loop.step == loop.num_train_steps or loop.stop == "early_stop"
  if not done or source is None or wd.has_event(loop.workdir, "test"):
    return
  loop.mark("test")
  state, best_step = evaluation.best_state(loop) if evaluation is not None else (None, None)
  if state is not None:  # the test measures the model one would deploy: the best
    log.info("testing the best checkpoint (step %d)", best_step)
  tested_step = best_step if state is not None else loop.step
  loop.emit(
    "test",
    compiled.without_count(
      compiled.evaluate(
        state if state is not None else loop.state,
        source,
        batch_size=loop.config.batch_size,
        layout=loop.layout,
        transform=loop.inputs.transform(train=False),
        finalize=_with_validation(loop.inputs.task.finalize, loop.workdir, tested_step),
        between_batches=functools.partial(preemption.check, step=loop.step),
      )
    ),  # resumed: runs again
    step=best_step,
  )  # logged under the step it measured


def _with_validation(finalize, workdir: str, step: int):
  """`finalize` given the validation metrics of `step`'s checkpoint, if it takes them."""
  try:
    if "validation" not in inspect.signature(finalize).parameters:
      return finalize
  except (TypeError, ValueError):  # a callable without a signature Python can read
    return finalize
  return functools.partial(finalize, validation=wd.event_at(workdir, "eval", step))


def close(loop: Loop, every: list) -> None:
  """Waits for the saves, closes the hooks and writers; a finished run records its hparams."""
  try:
    loop.mark("save")
    checkpoint.finish_saves(loop.manager, loop.workdir, loop.step)
    for hook in every:
      hook.close(loop)
    if (
      loop.step == loop.num_train_steps or loop.stop == "early_stop"
    ) and loop.step > loop.first_step:
      loop.writer.write_hparams(loop.config_dict, _final_metrics(loop.workdir))
    loop.writer.close()
  finally:  # a failed final write still frees the workdir
    if loop.lock is not None:
      loop.lock.release()


def abort(loop: Loop, every: list, error: BaseException) -> None:
  """Best effort, never masking `error`: lets a save in flight (a preemption's) reach the
  disk, closes what can be closed, and turns a failed write into one line."""
  for cleanup in [loop.manager.wait_until_finished, loop.writer.close] + [
    lambda h=h: h.close(loop) for h in every
  ]:
    with contextlib.suppress(Exception):
      cleanup()
  failure = (
    checkpoint.write_failure(error, loop.manager, loop.workdir, loop.step)
    if isinstance(error, Exception)
    else None
  )
  with contextlib.suppress(Exception):
    loop.manager.close()
  if loop.lock is not None:
    loop.lock.release()
  if failure is not None and not isinstance(error, UserError):
    raise failure from None


def create_train_state(
  config, model: run_inputs.Model, tx, example_batch, apply_fn, loss_fn
) -> TrainState:
  """The step-0 state: parameters initialised from `fold_in`s of the config's seed, then
  (finetune.model_variables) a pretrained folder's weights and LoRA adapters.

  `apply_fn` applies the model (under pmap: the same model built for the
  device axis, whose parameters are the same); `loss_fn` is the task's.
  """
  variables, apply_fn, state_rng, _ = finetune.model_variables(
    config, model, example_batch, apply_fn
  )
  return TrainState.create(
    apply_fn=apply_fn, variables=variables, tx=tx, loss_fn=loss_fn, rng=state_rng
  )


def _host_prefetch(source, config) -> int:
  """Reader threads only where reading costs: a split in memory is read in the loop's thread."""
  return 0 if isinstance(source, input_pipeline.InMemorySource) else config.dataset.prefetch


def cadence(every_steps: int, steps_per_epoch: int) -> int:
  """A configured cadence in steps: -1 (config.PER_EPOCH) is once per epoch, so a config
  evaluates and early-stops alike on 300 rows and on 30,000."""
  return steps_per_epoch if every_steps == PER_EPOCH else every_steps


def resolve_num_train_steps(config, num_train_examples: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * input_pipeline.steps_per_epoch(num_train_examples, config.batch_size)


def _check_data_fits_model(config, builder, model: run_inputs.Model, example_batch) -> None:
  """Catches data the model cannot take before anything compiles."""
  label = builder.info.features["label"] if "label" in builder.info.features else None
  num_classes = getattr(label, "num_classes", None)
  configured = config.model.get("num_classes")
  if num_classes and isinstance(configured, int) and num_classes > configured:
    raise UserError(
      f"dataset {builder.name} has labels 0..{num_classes - 1} but "
      f"config.model.num_classes={configured}"
    )
  try:
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), example_batch)
    _check_model_fits_memory(config, variables)
    jax.eval_shape(
      lambda v, b: model.apply_fn()(v, b, train=False, rng=jax.random.PRNGKey(0)),
      variables,
      jax.tree.map(lambda x: np.zeros((1,) + x.shape[1:], x.dtype), example_batch),
    )
  except UserError:  # the model's own check of its config
    raise
  except Exception as e:  # a model's code raises whatever its authors chose
    shapes = jax.tree.map(lambda x: f"{x.shape[1:]} {x.dtype}", model.inputs(example_batch))
    raise UserError(
      f"config.model ({config.model.name}) cannot take this dataset's inputs "
      f"{shapes}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    ) from None


def _memory_bytes() -> int | None:
  """The memory the model's arrays can use: the local accelerators', or the host's RAM."""
  devices = jax.local_devices()
  stats = [d.memory_stats() for d in devices] if devices[0].platform != "cpu" else []
  if stats and all(s and s.get("bytes_limit") for s in stats):
    return sum(s["bytes_limit"] for s in stats)
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError):
    return None


def _check_model_fits_memory(config, variables) -> None:
  """A model whose parameters alone (with their gradients and an optimizer's state, about three
  copies) exceed the machine's memory is a config mistake, named before anything allocates."""
  params = variables.get("params", variables) if isinstance(variables, dict) else variables
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  size = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(params))
  memory = _memory_bytes()
  if memory and 3 * size > memory:
    raise UserError(
      f"config.model ({config.model.name}) has {count:,} parameters ({size / 2**30:.1f} "
      f"GiB), more than fit in this machine's {memory / 2**30:.1f} GiB of memory with "
      "their gradients and optimizer state: check config.model's sizes"
    )


def _check_dispatch_cadence(
  config, num_train_steps: int, steps_per_epoch: int, stop_at_step: int | None
) -> None:
  """With k steps per dispatch, everything the loop does between steps falls on multiples of k."""
  if config.optimizer.accumulate_steps > num_train_steps:
    raise UserError(
      f"config.optimizer.accumulate_steps={config.optimizer.accumulate_steps} is more "
      f"than the run's {num_train_steps} steps: the params would never change"
    )
  k = config.steps_per_dispatch
  if k <= 1:  # one, or auto (which keeps to the cadences itself)
    return
  for name, value in (
    ("num_train_steps", num_train_steps),
    ("log_every_steps", config.log_every_steps),
    ("eval_every_steps", cadence(config.eval_every_steps, steps_per_epoch)),
    ("checkpoint_every_steps", cadence(config.checkpoint_every_steps, steps_per_epoch)),
    ("--stop_at_step", stop_at_step),
  ):
    if value is not None and value % k:
      raise UserError(f"{name}={value} must be a multiple of steps_per_dispatch={k}")


def _check_eval_metric(config, inputs, state) -> None:
  """An early-stopping metric the evaluation does not report fails before training, not after."""
  batch = input_pipeline.eval_dataset(
    inputs.sources["eval_split"],
    global_batch_size=config.batch_size,
    transform=inputs.transform(train=False),
  )[0]
  shapes = jax.eval_shape(eval_step, state, batch)
  means = {k: np.zeros(v.shape, np.float64) if v.ndim else 0.0 for k, v in shapes.items()}
  early_stopping.metric_value(
    compiled.without_count(inputs.task.finalize(means)), config.early_stopping.metric
  )


def _saved_config(workdir: str) -> dict | None:
  """The config a run started with: config.json, else the manifest's (None if neither exists)."""
  saved = wd.read_config(workdir)
  if saved is None and os.path.exists(wd.manifest(workdir)):
    return manifest.read(workdir)["config"]
  return saved


def _check_config_unchanged(workdir: str, config_dict: dict, allow: bool) -> None:
  """Refuses to resume a run under a config that would change the steps it took."""
  if not checkpoint.saved_steps(workdir):
    return
  saved = _saved_config(workdir)
  if saved is None:
    return
  changes = manifest.blocking_config_changes(saved, config_dict)
  if changes and not allow:
    listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    raise UserError(
      f"{workdir} holds a run of a different config ({listed}); use a new "
      "workdir, or pass --allow_config_change to resume under the new config"
    )


def _check_code_unchanged(workdir: str, code: dict, allow: bool) -> None:
  """Refuses to resume a run whose model, task or dataset code (a user's file) has changed."""
  if allow or not os.path.exists(wd.manifest(workdir)):
    return
  changes = manifest.code_changes(manifest.read(workdir).get("code", {}), code)
  if changes:
    raise UserError(
      f"{workdir} was trained with other code: {'; '.join(changes)}; use a new "
      "workdir, or pass --allow_config_change to resume with the code as it is now"
    )


def _final_metrics(workdir: str) -> dict[str, float]:
  """{"split/name": last value} over the whole run (resumed segments included)."""
  final = {}
  for event in wd.read_events(workdir):
    for k, v in event.items():
      if k not in ("step", "split", "time") and isinstance(v, (int, float)):
        final[f"{event['split']}/{k}"] = v
  return final

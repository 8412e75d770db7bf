"""The config schema: defaults every config starts from, and checks run before compiling.

A config file's `get_config()` starts from `base_config()` and sets what its
experiment needs; `jaxtrain train` locks it, so an override of a field that
does not exist, or of the wrong type, fails while parsing the command line.
`validate` then checks values (ranges, choices) with one message per field.
"""

from __future__ import annotations

import math
import os

import ml_collections

from jaxtrain.errors import UserError

SAMPLE_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_data")


def sample_file(name: str) -> str:
  """A file shipped in jaxtrain/sample_data/ (the embedded digits; the sample tables configs
  import)."""
  return os.path.join(SAMPLE_DATA, name)


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "warmup_cosine", "warmup_linear", "piecewise")
EARLY_STOPPING_MODES = ("min", "max")
NAN_POLICIES = ("halt", "skip")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
PARALLEL_MODES = ("jit", "pmap")
AUTO = 0  # steps_per_dispatch: measured at start-up (feeds.AutoPace)
PER_EPOCH = -1  # eval_every_steps, checkpoint_every_steps: a cadence that grows with the data


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "classification"  # a registry.TASKS name or an import path ("losses.py:smoothed_ce")
  c.batch_size = 128  # global, over all devices and processes
  c.num_train_steps = -1  # -1: num_epochs * (train examples // batch_size)
  c.num_epochs = 10
  c.log_every_steps = 50
  c.eval_every_steps = 500  # and always after the last step; -1: once per epoch
  c.checkpoint_every_steps = 500  # and always after the last step; -1: once per epoch
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.nan_policy = "halt"  # halt | skip: what a non-finite loss or gradient does
  c.nan_max_consecutive_skips = 10  # with "skip": halt after this many bad steps in a row
  c.steps_per_dispatch = AUTO  # k steps per call (one lax.scan), or AUTO (0; "auto" on the command
  # line): k measured at start-up, > 1 where a step is tiny
  c.compute_dtype = (
    "float32"  # bfloat16: mixed precision (params, optimizer state, losses stay float32)
  )
  c.deterministic_gpu_ops = False  # sets --xla_gpu_deterministic_ops=true (slower, exact reruns)

  c.optimizer = ml_collections.ConfigDict(
    dict(
      name="sgd",
      learning_rate=0.1,
      momentum=0.9,
      nesterov=False,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.0,  # not applied to biases and norm scales
      grad_clip_norm=0.0,  # 0: no clipping
      schedule="constant",
      warmup_steps=0,
      end_lr_factor=0.0,  # warmup_cosine/warmup_linear end at lr * this
      piecewise_boundaries=(0,),
      piecewise_scales=(1.0,),
      accumulate_steps=1,  # gradient accumulation: update every k steps (optax.MultiSteps)
      freeze="",  # regex over param paths (e.g. "Conv_|BatchNorm_"): never updated
      lr_multipliers=(),
    )
  )  # ((regex, factor), ...): the first match scales that param's lr

  # The task's options (tasks.py): a field is passed to a task that declares it; fields a
  # config adds here must be options of its task.
  c.loss = ml_collections.ConfigDict(
    dict(
      name="mse",  # regression: mse | huber | quantile
      huber_delta=1.0,
      quantile=0.5,  # on the standardised label
      temperature=0.1,
    )
  )  # retrieval: softmax temperature of the in-batch scores
  c.eval_top_k = 10  # retrieval: recall@k, NDCG@k

  c.early_stopping = ml_collections.ConfigDict(
    dict(
      metric="",  # an eval metric (e.g. "loss", "f1"); "" = never stop early
      mode="min",  # min | max: which way is better
      patience=0,  # stop after this many evaluations without improvement (0 = never)
      min_delta=0.0,
    )
  )  # the least change that counts as an improvement
  c.keep_best_checkpoints = 0  # also keep the k best checkpoints by early_stopping.metric

  c.init_from = ml_collections.ConfigDict(
    dict(
      workdir="",  # fine-tune: start from this run's (newest) checkpoint ...
      step=-1,  # ... at this step (-1: newest); params matching by path and shape
      best=False,  # ... or from its best checkpoint (keep_best_checkpoints)
      checkpoint="",
    )
  )  # or any Orbax checkpoint of {"params": ...} or of the params tree

  # LoRA (lora.py): adapters of this rank on the kernels `targets` searches, the rest held
  # fixed but for `train` (default: the model's head). rank 0: every param trains.
  c.lora = ml_collections.ConfigDict(
    dict(
      rank=0,
      alpha=16.0,  # the adapters' scale is alpha / rank
      targets="",  # regex over kernel paths; "" = the model's default (bert: query, value)
      train="",  # regex of params trained in full; "" = the model's head
    )
  )

  c.preprocess = ml_collections.ConfigDict(
    dict(
      features="",  # columns the model sees ("" = all but the label); retrieval: user,item
      tokenizer="vocab",  # vocab (built from the train split) | hashing (of words) | ngrams
      # (hashed word 1..word_ngrams-grams and character n-grams,
      # symbols kept: what a linear text classifier sees)
      vocab_size=20000,
      num_buckets=1 << 15,
      max_length=64,
      min_count=1,
      word_ngrams=2,
      char_ngrams="2,5",  # for tokenizer=ngrams ("" = no character n-grams)
      max_categories=100000,  # a category's most frequent values kept; the rest share index 0
      numeric_scaling="standard",  # standard (mean, std) | robust (RealMLP's: median, IQR / 1.349,
      # smooth clip at 3; for long tails. Not better on real_data's tables)
      calendar="dayofweek,month",  # fields of each time column fed as categories: dayofweek, month,
      # hour, dayofmonth, dayofyear, halfhour (of the day), minuteofday
      time_trend="auto",  # a time column also as a number: on | off | auto (off where the
      # split is by time: a trend extrapolates past the training times)
      class_weights="none",  # none | balanced | "w0,w1,...": per-class loss weights
      label_transform="none",
    )
  )  # regression: none | log1p (learn log(1 + y); counts, demand) |
  # auto (log1p for a never-negative, right-skewed label)

  c.data_import = ml_collections.ConfigDict(
    dict(  # `jaxtrain data import --config`
      sources=(),
      name="",
      label="label",
      label_kind="",
      columns="",
      ignore="",
      split="fraction",
      fractions="0.8,0.1,0.1",
      cutoffs="",
      seed=0,
      lags="",
      series="",
      image_size="",
      delimiter="",
      names="",
      beam="",
      max_memory_mb=512,
      frequency="",
      gaps="refuse",
    )
  )

  c.dataset = ml_collections.ConfigDict(
    dict(
      name="digits",  # "digits" (embedded), a builder's import path, an import, a TFDS name
      path="",  # a directory of source files (e.g. IDX) instead of a name
      data_dir="",  # where TFDS datasets live; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
      train_split="train",
      eval_split="test",  # evaluated every eval_every_steps ("" = never)
      test_split="",  # evaluated once after training ("" = none)
      prefetch=2,  # batches read ahead on threads
      cache_max_mb=1024,  # splits decoding to at most this many MB are held in memory
      device_cache_max_mb=256,  # a train split whose model inputs take at most this many MB
      # lives on the devices: each step gathers its batch there
      # (one process, jit layout; 0 = always fed from the host)
      builder_kwargs={},
    )
  )  # the builder's constructor arguments (synthetic_tokens: vocab_size...)

  c.parallel = ml_collections.ConfigDict(
    dict(
      mode="jit",  # jit: one program over a device mesh | pmap: one copy per device
      fsdp=False,  # jit only: shard large params and optimizer state over devices
      fsdp_min_size=1 << 14,  # arrays with fewer elements stay replicated
      prefetch_to_device=2,  # batches copied to the devices ahead of the step
      stall_timeout_s=1800,  # a step, evaluation or save unfinished past its limit ends every
      # process with status 76, the last checkpoint intact: 10 x the
      # slowest of its kind, at least 120 s, at most this (0 = never)
      startup_timeout_s=1800,  # ... start-up's limit, and each phase's first (it compiles)
      stop_grace_s=30,  # SIGTERM/SIGINT/...: the time to reach a step boundary, after
      # which the process ends (75, or 76 if a save was in flight)
      stop_check_every_steps=10,
    )
  )  # many processes: how often they agree whether one received
  # SIGTERM/SIGINT/SIGUSR1 (a ~1 ms barrier; lower it where 10
  # steps outlast a preemption's grace period)

  # name: a registry.MODELS name or an import path of a Flax Linen or NNX module ("model.py:Net",
  # relative to the config file); every other field is a constructor argument.
  c.model = ml_collections.ConfigDict(dict(name="mlp", num_classes=10))
  c.model_input = ""  # the batch feature the model is called on; "" = the model's
  # `input_key` attribute, else "image" if the data has one, else all
  return c


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def _checks(c):
  o = c.optimizer
  yield "seed", 0 <= c.seed < 2**32, "must be in [0, 2**32)"
  yield "task", isinstance(c.task, str) and bool(c.task), "must name a task"
  yield "batch_size", c.batch_size > 0, "must be > 0"
  yield "steps_per_dispatch", c.steps_per_dispatch >= 0, "must be >= 1, or 0 (auto)"
  yield "compute_dtype", c.compute_dtype in COMPUTE_DTYPES, f"must be one of {COMPUTE_DTYPES}"
  yield (
    "num_train_steps",
    c.num_train_steps == -1 or c.num_train_steps > 0,
    "must be > 0, or -1 to use num_epochs",
  )
  yield (
    "num_epochs",
    c.num_train_steps > 0 or c.num_epochs > 0,
    "must be > 0 when num_train_steps is -1",
  )
  for field in ("log_every_steps", "keep_checkpoints"):
    yield field, c[field] > 0, "must be > 0"
  for field in ("eval_every_steps", "checkpoint_every_steps"):
    yield field, c[field] > 0 or c[field] == PER_EPOCH, "must be > 0, or -1 for once per epoch"
  yield "nan_policy", c.nan_policy in NAN_POLICIES, f"must be one of {NAN_POLICIES}"
  yield "nan_max_consecutive_skips", c.nan_max_consecutive_skips > 0, "must be > 0"
  yield "optimizer.name", o.name in OPTIMIZERS, f"must be one of {OPTIMIZERS}"
  yield (
    "optimizer.learning_rate",
    _finite(o.learning_rate) and o.learning_rate >= 0,
    "must be finite and >= 0",
  )
  yield "optimizer.momentum", 0 <= o.momentum < 1, "must be in [0, 1)"
  yield "optimizer.b1", 0 <= o.b1 < 1, "must be in [0, 1)"
  yield "optimizer.b2", 0 <= o.b2 < 1, "must be in [0, 1)"
  yield "optimizer.eps", _finite(o.eps) and o.eps > 0, "must be finite and > 0"
  yield (
    "optimizer.weight_decay",
    _finite(o.weight_decay) and o.weight_decay >= 0,
    "must be finite and >= 0",
  )
  yield (
    "optimizer.grad_clip_norm",
    _finite(o.grad_clip_norm) and o.grad_clip_norm >= 0,
    "must be finite and >= 0 (0 = no clipping)",
  )
  yield (
    "optimizer.end_lr_factor",
    _finite(o.end_lr_factor) and o.end_lr_factor >= 0,
    "must be finite and >= 0",
  )
  boundaries = list(o.piecewise_boundaries)
  yield (
    "optimizer.piecewise_boundaries",
    boundaries == sorted(boundaries) and all(isinstance(b, int) and b >= 0 for b in boundaries),
    "must be steps >= 0 in increasing order",
  )
  yield (
    "optimizer.piecewise_scales",
    all(_finite(s) and s >= 0 for s in o.piecewise_scales),
    "must be finite and >= 0",
  )
  yield "optimizer.schedule", o.schedule in SCHEDULES, f"must be one of {SCHEDULES}"
  yield "optimizer.warmup_steps", o.warmup_steps >= 0, "must be >= 0"
  yield "optimizer.accumulate_steps", o.accumulate_steps >= 1, "must be >= 1"
  yield (
    "optimizer.piecewise_scales",
    len(o.piecewise_boundaries) == len(o.piecewise_scales),
    "must have as many entries as optimizer.piecewise_boundaries",
  )
  yield "dataset.train_split", bool(c.dataset.train_split), "must name a split"
  yield "dataset.prefetch", c.dataset.prefetch >= 0, "must be >= 0"
  yield "dataset.cache_max_mb", c.dataset.cache_max_mb >= 0, "must be >= 0 (0 = never)"
  yield (
    "dataset.device_cache_max_mb",
    c.dataset.device_cache_max_mb >= 0,
    "must be >= 0 (0 = never)",
  )
  yield "parallel.mode", c.parallel.mode in PARALLEL_MODES, f"must be one of {PARALLEL_MODES}"
  yield (
    "parallel.fsdp",
    not (c.parallel.fsdp and c.parallel.mode != "jit"),
    "needs parallel.mode='jit' (pmap keeps a whole copy of the state on every device)",
  )
  yield "parallel.fsdp_min_size", c.parallel.fsdp_min_size >= 0, "must be >= 0"
  yield "parallel.prefetch_to_device", c.parallel.prefetch_to_device >= 0, "must be >= 0"
  yield "parallel.stall_timeout_s", c.parallel.stall_timeout_s >= 0, "must be >= 0 (0 = never)"
  yield "parallel.startup_timeout_s", c.parallel.startup_timeout_s >= 0, "must be >= 0 (0 = never)"
  yield "parallel.stop_grace_s", c.parallel.stop_grace_s > 0, "must be > 0"
  yield "parallel.stop_check_every_steps", c.parallel.stop_check_every_steps >= 1, "must be >= 1"
  yield (
    "model.name",
    isinstance(c.model.get("name"), str) and bool(c.model.get("name")),
    "must name a model",
  )
  e = c.early_stopping
  yield (
    "early_stopping.mode",
    e.mode in EARLY_STOPPING_MODES,
    f"must be one of {EARLY_STOPPING_MODES}",
  )
  yield "early_stopping.patience", e.patience >= 0, "must be >= 0 (0 = never stop early)"
  yield "early_stopping.min_delta", e.min_delta >= 0, "must be >= 0"
  yield (
    "early_stopping.metric",
    bool(e.metric) or (e.patience == 0 and c.keep_best_checkpoints == 0),
    "must name an eval metric when early_stopping.patience or keep_best_checkpoints is set",
  )
  yield (
    "early_stopping.metric",
    not e.metric or bool(c.dataset.eval_split),
    "needs dataset.eval_split (the metric is measured on it)",
  )
  yield "keep_best_checkpoints", c.keep_best_checkpoints >= 0, "must be >= 0"
  yield "eval_top_k", c.eval_top_k > 0, "must be > 0"
  yield "loss.temperature", c.loss.get("temperature", 1.0) > 0, "must be > 0"
  yield "loss.quantile", 0 < c.loss.get("quantile", 0.5) < 1, "must be in (0, 1)"
  classes = c.model.get("num_classes")
  yield "model.num_classes", not isinstance(classes, int) or classes > 0, "must be > 0"
  rate = c.model.get("dropout_rate", 0.0)
  yield (
    "model.dropout_rate",
    not isinstance(rate, (int, float)) or 0 <= rate < 1,
    "must be in [0, 1)",
  )
  yield "early_stopping.min_delta", _finite(c.early_stopping.min_delta), "must be finite"


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first field whose value is out of range."""
  for field, ok, requirement in _checks(config):
    if not ok:
      value = config
      for part in field.split("."):
        value = value[part]
      raise UserError(f"config.{field}={value!r} {requirement}")

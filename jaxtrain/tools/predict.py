"""Inference from a finished run: `jaxtrain predict` (files) and `jaxtrain export` (jax.export).

Both apply the run's saved preprocessing (preprocess/ in its workdir) and the
pure `predict_step`, then the task's `predict` (class probabilities, a value,
or the top-k items). `export` serializes that function, weights included, with
`jax.export` and a symbolic batch size: `load_exported(dir)` serves it with no
model code, and its outputs equal `predict`'s.
"""

from __future__ import annotations

import csv
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxtrain import files
from jaxtrain.data import datasets, importing, preprocess
from jaxtrain.errors import UserError
from jaxtrain.run import checkpoint, early_stopping, finetune, manifest, parallel, workdir as wd
from jaxtrain.run import inputs as run_inputs
from jaxtrain.run.compiled import evaluate, without_count
from jaxtrain.state import FROZEN, Functions, TrainState
from jaxtrain.steps import predict_step

EXPORT_FILE, SIGNATURE_FILE = "model.jaxexport", "signature.json"


def uses_best(workdir: str, best: bool | None) -> bool:
  """`best`, or by default: the checkpoint the run's test metrics came from (its best, if it
  kept its best checkpoints; else its newest)."""
  if best is not None:
    return best
  return bool(early_stopping.read_best(workdir).get("kept_steps"))


def trusted_code_dir(workdir: str, record: dict, code_dir: str | None) -> str | None:
  """Where to load a run's own code from: only a folder the user names (`--code`).

  A workdir is data: the paths in its manifest never decide what code runs.
  """
  if record.get("code") and code_dir is None:
    named = ", ".join(f"{c['name']} ({field})" for field, c in record["code"].items())
    raise UserError(
      f"{workdir} was trained with code of its own ({named}, from "
      f"{record.get('config_dir')}): a workdir is data, not code; pass --code DIR, "
      "the folder its config named the files from, to load them"
    )
  return code_dir


def load_run(workdir: str, *, best: bool | None = None, code_dir: str | None = None):
  """(config, inputs, state, step) of a run: its best or newest checkpoint's weights (`uses_best`).

  `code_dir`: the folder of the run's own model/task files, if it has any.
  """
  saved = wd.read_config(workdir)
  if saved is None:
    raise UserError(f"{workdir} has no config.json (not a jaxtrain workdir?)")
  config = ml_collections.ConfigDict(saved)
  record = manifest.read(workdir) if os.path.exists(wd.manifest(workdir)) else {}
  inputs = run_inputs.load_for_inference(
    config, workdir, trusted_code_dir(workdir, record, code_dir)
  )
  changed = manifest.code_changes(record.get("code", {}), inputs.code)
  if changed:
    raise UserError(f"{workdir} was trained with other code: {'; '.join(changed)}")
  arrays, step = checkpoint.read_arrays(workdir, -1, uses_best(workdir, best))
  model, example = run_model(config, inputs), _example(inputs, config)
  apply_fn, model_state = model.apply_fn(), arrays.get("model_state", {})
  if config.get("lora") and config.lora.rank:  # the fixed base: rebuilt, as the run built it
    variables, apply_fn, *_ = finetune.model_variables(config, model, example, apply_fn)
    model_state = {**model_state, FROZEN: variables[FROZEN]}
  state = TrainState(
    step=arrays["step"],
    params=arrays["params"],
    opt_state=None,
    model_state=model_state,
    rng=arrays["rng"],
    functions=Functions(apply_fn, None, inputs.task.loss_fn),
  )
  if FROZEN in model_state:
    checkpoint.check_frozen_at(workdir, step, uses_best(workdir, best), state)
  return config, inputs, state, step


def _example(inputs, config) -> dict:
  return jax.tree.map(
    lambda s: np.zeros((1, *s.shape[1:]), s.dtype), input_signature(inputs, config, batch=1)
  )


def run_model(config, inputs):
  """The run's model (run/inputs.py's Model), built for one example of its inputs."""
  return inputs.model(config, _example(inputs, config))


def make_predict_fn(inputs, state):
  """batch -> the task's named outputs, jitted, for the weights in `state`."""
  return jax.jit(lambda s, batch: inputs.task.predict(predict_step(s, batch), batch))


def predict_arrays(
  inputs, state, raw: dict[str, np.ndarray], batch_size: int
) -> dict[str, np.ndarray]:
  """Outputs for every row of `raw` (feature arrays), in batches of a fixed size (one compile)."""
  n = len(next(iter(raw.values())))
  transform, fn = inputs.transform(train=False), make_predict_fn(inputs, state)
  outputs = []
  for start in range(0, n, batch_size):
    rows = np.minimum(np.arange(start, start + batch_size), n - 1)  # pad by repeating the last row
    batch = transform({k: v[rows] for k, v in raw.items()})
    batch.pop("label", None)
    out = jax.device_get(fn(state, batch))
    outputs.append({k: v[: min(batch_size, n - start)] for k, v in out.items()})
  return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def _read_input(path: str, inputs) -> tuple[dict, np.ndarray | None]:
  if inputs.schema is not None:
    prep = inputs.prep
    needed = {s["feature"] for s in prep["numeric"] + prep["categorical"]}
    needed |= {prep[k]["feature"] for k in ("text", "image") if prep[k]}
    if inputs.seen is not None:  # retrieval: recommending needs only the user
      needed.discard(prep["categorical"][1]["feature"])
    return importing.read_prediction_rows(path, inputs.schema, needed)
  if not path.endswith(".npz"):
    raise UserError(f"{path}: an image run predicts from a .npz with an 'image' array")
  with np.load(path, allow_pickle=False) as f:
    if "image" not in f.files:
      raise UserError(f"{path} has no 'image' array (it has: {', '.join(f.files)})")
    return {"image": f["image"]}, (f["label"] if "label" in f.files else None)


def validation_threshold(workdir: str, step: int) -> float | None:
  """The F1-best probability threshold the validation of `step`'s checkpoint chose (binary)."""
  return (wd.event_at(workdir, "eval", step) or {}).get("best_f1_threshold")


def output_columns(inputs, outputs: dict, threshold: float | None = None) -> dict[str, list]:
  """Named CSV columns: class and probabilities, a value, or recommended items. Two classes
  and a `threshold` (`validation_threshold`) add the class at it: what the test's
  f1_at_validation_threshold measured."""
  prep = inputs.prep
  if "probabilities" in outputs:
    probs = outputs["probabilities"]
    names = (
      prep["label"]["class_names"]
      if prep["kind"] == "table"
      else [str(i) for i in range(probs.shape[1])]
    )
    cols = {"predicted": [names[i] for i in probs.argmax(1)]}
    if threshold is not None and probs.shape[1] == 2:
      cols["predicted_at_threshold"] = [names[int(p >= threshold)] for p in probs[:, 1]]
    for i, name in enumerate(names):
      cols[f"prob_{name}"] = probs[:, i].tolist()
    return cols
  if "prediction" in outputs:
    return {"prediction": outputs["prediction"].tolist()}
  vocab = prep["categorical"][1]["vocab"]
  return {
    "items": [" ".join(vocab[i - 1] for i in row) for row in outputs["top_items"]],
    "scores": [" ".join(repr(float(s)) for s in row) for row in outputs["top_scores"]],
  }


def predict_file(
  workdir: str,
  input_path: str,
  output_path: str,
  *,
  batch_size: int = 256,
  best: bool | None = None,
  code_dir: str | None = None,
) -> tuple[int, int]:
  """Writes `output_path` (CSV: row, label if given, predictions); returns (rows, the step used)."""
  if not os.path.exists(input_path):
    raise UserError(f"--input {input_path} does not exist")
  if os.path.abspath(output_path) == os.path.abspath(input_path) or (
    os.path.exists(output_path) and os.path.samefile(output_path, input_path)
  ):
    raise UserError(f"--output {output_path} is the input file: write the predictions elsewhere")
  if not os.path.isdir(os.path.dirname(os.path.abspath(output_path))):
    raise UserError(
      f"--output {output_path}: the folder {os.path.dirname(output_path)} does not exist"
    )
  config, inputs, state, step = load_run(workdir, best=best, code_dir=code_dir)
  raw, labels = _read_input(input_path, inputs)
  columns = output_columns(
    inputs, predict_arrays(inputs, state, raw, batch_size), validation_threshold(workdir, step)
  )
  n = len(next(iter(columns.values())))
  # Written whole or not at all, even when a signal stops the command.
  with files.replacing(output_path, "w", newline="") as f:
    writer = csv.writer(f)
    head = ["row"] + (["label"] if labels is not None else []) + list(columns)
    writer.writerow(head)
    for i in range(n):
      label = [_label_name(inputs, labels[i])] if labels is not None else []
      writer.writerow(
        [i + 1]
        + label
        + [repr(c[i]) if isinstance(c[i], float) else c[i] for c in columns.values()]
      )
  return n, step


def _label_name(inputs, label):
  if inputs.prep["kind"] == "table" and inputs.prep["label"]["kind"] == "class":
    return inputs.prep["label"]["class_names"][int(label)]
  return label.item() if hasattr(label, "item") else label


def input_signature(inputs, config, batch: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
  """The model inputs' shapes after preprocessing, with a symbolic batch size `b` (or `batch`)."""
  prep = inputs.prep
  b = batch if batch is not None else jax.export.symbolic_shape("b")[0]
  if prep["kind"] == "image":  # a dataset without an import schema: its features as they are
    return {
      name: jax.ShapeDtypeStruct(
        (b, *feature.shape), jnp.float32 if name == "image" else feature.np_dtype
      )
      for name, feature in inputs.builder.info.features.items()
      if name != "label"
    }
  sig = {}
  if prep["numeric"]:
    sig["numeric"] = jax.ShapeDtypeStruct((b, len(prep["numeric"])), jnp.float32)
  if prep["categorical"]:
    sig["categorical"] = jax.ShapeDtypeStruct((b, len(prep["categorical"])), jnp.int32)
  if prep["text"]:
    sig["tokens"] = jax.ShapeDtypeStruct((b, prep["text"]["max_length"]), jnp.int32)
    if prep["text"]["tokenizer"] == "pretrained":
      sig["attention_mask"] = sig["tokens"]
  if prep["image"]:
    shape = inputs.builder.info.features[prep["image"]["feature"]].shape
    if prep["image"].get("integers"):
      sig["tokens"] = jax.ShapeDtypeStruct((b, *shape), jnp.int32)
    else:
      sig["image"] = jax.ShapeDtypeStruct((b, *shape), jnp.float32)
  if inputs.seen is not None:
    width = max(int(np.diff(inputs.seen["offsets"]).max()), 1)
    sig["seen"] = jax.ShapeDtypeStruct((b, width), jnp.int32)
  return sig


def export(
  workdir: str, out_dir: str, *, best: bool | None = None, code_dir: str | None = None
) -> dict:
  """Serializes the run's inference function (weights inside) to `out_dir`."""
  config, inputs, state, step = load_run(workdir, best=best, code_dir=code_dir)
  signature = input_signature(inputs, config)
  fn = jax.jit(lambda batch: inputs.task.predict(predict_step(state, batch), batch))
  serialized = jax.export.export(fn)(signature).serialize()
  os.makedirs(out_dir, exist_ok=True)
  files.write_bytes(os.path.join(out_dir, EXPORT_FILE), serialized)
  record = {
    "workdir": os.path.abspath(workdir),
    "step": step,
    "task": config.task,
    "inputs": {
      k: {
        "shape": [None if not isinstance(d, int) else d for d in v.shape],
        "dtype": str(np.dtype(v.dtype)),
      }
      for k, v in signature.items()
    },
    "outputs": sorted(
      jax.eval_shape(
        fn, {k: jax.ShapeDtypeStruct((1,) + v.shape[1:], v.dtype) for k, v in signature.items()}
      )
    ),
  }
  files.write_json(os.path.join(out_dir, SIGNATURE_FILE), record)
  preprocess.copy_saved(wd.preprocess(workdir), out_dir)
  return record


def load_exported(out_dir: str):
  """The exported inference function: a dict of preprocessed inputs -> named outputs."""
  with open(os.path.join(out_dir, EXPORT_FILE), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return exported.call


def evaluate_run(
  workdir: str, dataset_name: str, split: str = "test", *, best: bool | None = None
) -> dict:
  """A finished run's metrics on `split` of `dataset_name`, through its own preprocessing.

  How retraining compares a candidate with the production model: the same
  rows, each model with the vocabulary and scaling it was trained with.
  """
  config, inputs, state, _ = load_run(workdir, best=best)
  dataset = config.dataset.copy_and_resolve_references()
  dataset.name = dataset_name
  source = datasets.get_source(datasets.get_builder(dataset), split, "split")
  layout = parallel.Layout.from_config(config.parallel)
  placed = layout.to_step(layout.place_state(state.replace(opt_state={})))
  return without_count(
    evaluate(
      placed,
      source,
      batch_size=config.batch_size,
      layout=layout,
      transform=inputs.transform(train=False),
      finalize=inputs.task.finalize,
    )
  )

"""The way back out: a fine-tuned run as a Hugging Face folder (`jaxtrain export --format
safetensors`).

The folder is what the run started from, trained: the source's config.json
(with this task's labels and architecture), its tensors under the source's
names, layouts (`[out, in]` Linear weights) and dtypes (models/hf.py), the
tokenizer the run trained with, and the new head. A LoRA run's adapters are
merged into the kernels (`lora="merged"`), or written apart as a PEFT adapter
(`lora="separate"`: adapter_model.safetensors and adapter_config.json), its base
tensors then the source's own bits. The names come from the run's init_from.json
(what each param was loaded from); params the source did not have (the head)
are named by the layout's rule.
"""

from __future__ import annotations

import json
import os

import numpy as np
from flax import traverse_util

from jaxtrain import files, lora
from jaxtrain.errors import UserError
from jaxtrain.models import hf
from jaxtrain.run import checkpoint, workdir as wd
from jaxtrain.state import FROZEN

LORA_MODES = ("merged", "separate")
ADAPTER_FILE, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"


def _source_record(workdir: str) -> dict:
  try:
    with open(wd.init_from_record(workdir)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    record = {}
  if "mapping" not in record:
    raise UserError(
      f"{workdir} did not start from a pretrained folder (model.pretrained): there is no "
      "layout to export it in; `jaxtrain export` without --format writes jax.export"
    )
  return record


def _tensors(flat: dict, mapping: dict, dtypes: dict) -> dict[str, np.ndarray]:
  """{source name: array in the source's layout and dtype} of flat Flax params."""
  out = {}
  for path, array in sorted(flat.items()):
    name = mapping.get(path) or hf.source_name(path)
    array = hf.from_flax(path.rsplit("/", 1)[-1], np.asarray(array))
    out[name] = array.astype(dtypes.get(name, array.dtype))
  return out


def _hf_config(source: str, layout, prep: dict) -> dict:
  with open(os.path.join(source, checkpoint.HF_CONFIG)) as f:
    config = json.load(f)
  if layout.architecture:
    config["architectures"] = [layout.architecture]
  label = prep.get("label") or {}
  if label.get("kind") == "class":
    names = [str(n) for n in label["class_names"]]
    config.update(
      id2label={str(i): n for i, n in enumerate(names)},
      label2id={n: i for i, n in enumerate(names)},
    )
  elif label.get("kind") == "value":
    config.update(
      num_labels=1, problem_type="regression", id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0}
    )
  return config


def export(
  workdir: str,
  out_dir: str,
  *,
  best: bool | None = None,
  code_dir: str | None = None,
  lora_mode: str = "merged",
) -> dict:
  """Writes the run's weights to `out_dir` as a Hugging Face folder; returns what it wrote."""
  from jaxtrain.tools import predict  # the run as predict reads it (verified, LoRA rebuilt)

  if lora_mode not in LORA_MODES:
    raise UserError(f"--lora={lora_mode!r} is one of {', '.join(LORA_MODES)}")
  record = _source_record(workdir)
  config, inputs, state, step = predict.load_run(workdir, best=best, code_dir=code_dir)
  layout = predict.run_model(config, inputs).loaded.obj.hf_layout
  mapping, dtypes = record["mapping"], {k: np.dtype(v) for k, v in record.get("dtypes", {}).items()}
  if record.get("layout") == "flax":  # a msgpack source: the export takes the torch names
    mapping, dtypes = {}, {}
  params, adapters = state.params, {}
  if FROZEN in state.model_state:
    base, adapters = lora.base_and_adapters(state.params, state.model_state)
    scale = config.lora.alpha / config.lora.rank
    params = (
      base
      if lora_mode == "separate"
      else lora.merged(state.model_state[FROZEN]["params"], state.params, scale)
    )
  flat = traverse_util.flatten_dict(params, sep="/")
  os.makedirs(out_dir, exist_ok=True)
  written = checkpoint.write_pretrained(
    out_dir, _hf_config(record["source"], layout, inputs.prep), _tensors(flat, mapping, dtypes)
  )
  text = inputs.prep.get("text") or {}
  if text.get("tokenizer") == "pretrained":
    files.write_text(os.path.join(out_dir, "tokenizer.json"), text["tokenizer_json"])
  for name in ("tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"):
    if os.path.exists(os.path.join(record["source"], name)):
      files.copy(os.path.join(record["source"], name), os.path.join(out_dir, name))
  if adapters and lora_mode == "separate":
    written.append(_write_adapter(out_dir, adapters, mapping, config, record["source"]))
  return {
    "step": step,
    "files": written,
    "tensors": len(flat),
    "lora": bool(adapters) and lora_mode,
  }


def _write_adapter(out_dir: str, adapters: dict, mapping: dict, config, source: str) -> str:
  """PEFT's layout: `base_model.model.<module>.lora_A.weight` [r, in], `lora_B` [out, r]."""
  tensors, modules = {}, set()
  for key, ab in traverse_util.flatten_dict(
    adapters, sep="/", is_leaf=lambda _, v: "a" in v
  ).items():
    module = (mapping.get(key) or hf.source_name(key)).removesuffix(".weight")
    modules.add(module.rsplit(".", 1)[-1])
    tensors[f"base_model.model.{module}.lora_A.weight"] = np.asarray(ab["a"]).T
    tensors[f"base_model.model.{module}.lora_B.weight"] = np.asarray(ab["b"]).T
  checkpoint.write_safetensors(os.path.join(out_dir, ADAPTER_FILE), tensors, {"format": "pt"})
  files.write_json(
    os.path.join(out_dir, ADAPTER_CONFIG),
    {
      "peft_type": "LORA",
      "r": int(config.lora.rank),
      "lora_alpha": float(config.lora.alpha),
      "target_modules": sorted(modules),
      "base_model_name_or_path": source,
      "bias": "none",
    },
  )
  return ADAPTER_FILE

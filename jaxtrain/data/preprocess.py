"""Preprocessing fitted on the training split only, saved with the run.

For an imported table (importing.py) `fit` learns, from the train split
alone: numeric means and standard deviations, each category's vocabulary,
the text tokenizer's vocabulary (or a hashing tokenizer), the label's
classes and weights or its mean and scale, and for recommendation the items
each user was seen with. The result is JSON (plus one .npz of arrays, never a
pickle) in `<workdir>/preprocess/`, so `jaxtrain predict` and an exported model
apply exactly the training-time preprocessing.

`make_transform(prep, train)` maps a batch of raw examples to model inputs:
    numeric      float32 [B, n]  standardised numbers, times and lags (a missing number: 0,
                                 then a 0/1 missing flag where the train split had any)
    categorical  int32 [B, m]    vocabulary indices (0: unseen), calendar fields
    tokens       int32 [B, L]    token ids (0: padding, 1: unknown word)
    image        float32 [B, H, W, C] in [0, 1] (8-bit pixels)
    tokens       int32 [B, ...]  an array column of other integers (token ids from an .npz)
    attention_mask int32 [B, L]  1 for real tokens (tokenizer "pretrained")
    seen         int32 [B, S]    (evaluation, retrieval) items to exclude, -1 padded
    label        int32 class or float32 value
Image datasets without a schema (digits, IDX, TFDS) get `to_model_inputs`.
"""

from __future__ import annotations

import collections
import json
import os
import re
import warnings
import zlib
from typing import Callable

import numpy as np

from jaxtrain import files
from jaxtrain.errors import UserError
from jaxtrain.data.input_pipeline import Batch, to_model_inputs

CALENDAR = {
  "dayofweek": 7,
  "month": 12,
  "hour": 24,
  "dayofmonth": 31,
  "dayofyear": 366,
  "halfhour": 48,
  "minuteofday": 1440,
}  # halfhour: the slot of the day
_TOKEN = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
  return _TOKEN.findall(text.lower())


def _strings(values) -> list[str]:
  return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _columns(schema, selected: str) -> dict[str, str]:
  """{column: kind} of the features the model sees (`preprocess.features`, or all)."""
  columns = schema["columns"]
  if not selected:
    return dict(columns)
  names = [c.strip() for c in selected.split(",") if c.strip()]
  unknown = [c for c in names if c not in columns]
  if unknown:
    raise UserError(
      f"preprocess.features names {', '.join(unknown)}, not columns of the "
      f"dataset ({', '.join(columns)})"
    )
  return {c: columns[c] for c in names}


def _vocabulary(counts: collections.Counter, size: int, min_count: int) -> list[str]:
  ranked = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
  return ranked[:size]


def fit(schema: dict | None, train: dict[str, np.ndarray], config) -> dict:
  """The preprocessing record for a run, from the train split's feature arrays."""
  if schema is None:
    return {"kind": "image"}
  p = config.preprocess
  prep = {
    "kind": "table",
    "numeric": [],
    "categorical": [],
    "text": None,
    "image": None,
    "task": config.task,
  }
  for col, kind in _columns(schema, p.features).items():
    name = schema["features"][col]
    values = train[name]
    if kind == "time" and not _time_trend(p.time_trend, schema):
      _add_calendar(prep, name, p.calendar)
      continue
    if kind in ("int", "float", "time"):
      x = values.astype(np.float64)
      missing = bool(np.isnan(x).any())
      spec = {"feature": name, **_scaling(x, p.numeric_scaling)}
      if missing:  # imputed with the train mean, and a 0/1 input saying it was missing
        spec["missing"] = True
      prep["numeric"].append(spec)
      if kind == "time":
        _add_calendar(prep, name, p.calendar)
    elif kind == "category":
      vocab = _vocabulary(collections.Counter(_strings(values)), p.max_categories, p.min_count)
      prep["categorical"].append({"feature": name, "vocab": vocab, "size": len(vocab) + 1})
    elif kind == "text":
      if prep["text"] is not None:
        raise UserError(
          f"two text columns ({prep['text']['feature']}, {name}); choose one with "
          "preprocess.features"
        )
      prep["text"] = _fit_tokenizer(name, _strings(values), p, config)
    elif kind == "tensor":  # 8-bit pixels, or integers that are ids (tokens from an .npz)
      ids = np.issubdtype(values.dtype, np.integer) and values.dtype != np.uint8
      prep["image"] = {"feature": name, **({"integers": True} if ids else {})}
  label = train["label"]
  if schema["label_kind"] == "class":
    num_classes = len(schema["class_names"])
    counts = np.bincount(label.astype(np.int64), minlength=num_classes).astype(np.float64)
    prep["label"] = {
      "kind": "class",
      "class_names": schema["class_names"],
      "num_classes": num_classes,
      "class_weights": _class_weights(counts, p.class_weights),
    }
  else:
    y = label.astype(np.float64)
    transform = _label_transform(p.label_transform, y)
    if transform == "log1p":
      y = np.log1p(y)
    prep["label"] = {
      "kind": "value",
      "mean": float(y.mean()),
      "std": float(y.std()) or 1.0,
      "transform": transform,
    }
  return prep


def _label_transform(setting: str, y: np.ndarray) -> str:
  """none | log1p. "auto": log1p for a count-like label (never negative, right-skewed: the
  mean over the median above 1.25), whose errors grow with its size (demand, rentals)."""
  if setting not in ("auto", "none", "log1p"):
    raise UserError(f"preprocess.label_transform={setting!r} must be auto, none or log1p")
  if setting == "log1p" and (y < 0).any():
    raise UserError("preprocess.label_transform=log1p needs a label that is never negative")
  if setting != "auto":
    return setting
  median = float(np.median(y))
  skewed = median > 0 and float(y.mean()) / median > 1.25
  return "log1p" if (y >= 0).all() and skewed else "none"


def _time_trend(setting: str, schema: dict) -> bool:
  """Whether a time column is also a number (a trend). "auto": not where the split is by
  time, where the validation and test times lie past every training time (extrapolation)."""
  if setting not in ("auto", "on", "off"):
    raise UserError(f"preprocess.time_trend={setting!r} must be auto, on or off")
  if setting == "auto":
    return not str(schema.get("options", {}).get("split", "")).startswith("time:")
  return setting == "on"


def _add_calendar(prep: dict, name: str, fields: str) -> None:
  for field in filter(None, fields.split(",")):
    if field not in CALENDAR:
      raise UserError(f"preprocess.calendar: {field!r} is not one of {', '.join(CALENDAR)}")
    prep["categorical"].append({"feature": name, "calendar": field, "size": CALENDAR[field] + 1})


def _fit_tokenizer(name, texts, p, config) -> dict:
  if p.tokenizer not in ("vocab", "hashing", "ngrams"):
    return _pretrained_tokenizer(name, p, config)
  if p.tokenizer == "vocab":
    counts = collections.Counter(t for text in texts for t in tokenize(text))
    vocab = _vocabulary(counts, p.vocab_size - 2, p.min_count)
    return {
      "feature": name,
      "tokenizer": "vocab",
      "vocab": vocab,
      "size": len(vocab) + 2,
      "max_length": p.max_length,
    }
  if p.tokenizer == "hashing":
    return {
      "feature": name,
      "tokenizer": "hashing",
      "size": p.num_buckets,
      "max_length": p.max_length,
    }
  if p.tokenizer == "ngrams":
    low, _, high = p.char_ngrams.partition(",")
    return {
      "feature": name,
      "tokenizer": "ngrams",
      "size": p.num_buckets,
      "max_length": p.max_length,
      "word_ngrams": int(p.word_ngrams),
      "char_ngrams": [int(low), int(high or low)] if low else [],
    }
  raise AssertionError(p.tokenizer)


TOKENIZER_FILE = "tokenizer.json"


def _pretrained_tokenizer(name: str, p, config) -> dict:
  """A pretrained model's own tokenizer (its folder's tokenizer.json, run by the `tokenizers`
  library): its special tokens ([CLS] ... [SEP], <s>), truncation at max_length, padding
  with the model's pad token. The JSON is kept in the record, so a run predicts with the
  tokenizer it trained with, whatever becomes of the folder."""
  where = config.model.get("pretrained", "") if p.tokenizer == "pretrained" else p.tokenizer
  if not where:
    raise UserError(
      "preprocess.tokenizer='pretrained' takes the tokenizer of model.pretrained, which is "
      "not set: set model.pretrained, or preprocess.tokenizer to a folder or tokenizer.json"
    )
  folder = where if os.path.isdir(where) else os.path.dirname(where)
  path = os.path.join(where, TOKENIZER_FILE) if os.path.isdir(where) else where
  if not os.path.isfile(path):
    raise UserError(
      f"preprocess.tokenizer={p.tokenizer!r}: {path} does not exist (preprocess.tokenizer is "
      "vocab, hashing, ngrams, pretrained, or a tokenizer.json or a folder holding one)"
    )
  with open(path, encoding="utf-8") as f:
    text = f.read()
  tokenizer = load_tokenizer(text, path)
  pad_id = special_id(tokenizer, folder, "pad")
  return {
    "feature": name,
    "tokenizer": "pretrained",
    "tokenizer_json": text,
    "source": os.path.abspath(path),
    "size": tokenizer.get_vocab_size(with_added_tokens=True),
    "max_length": p.max_length,
    "pad_id": pad_id,
  }


def load_tokenizer(text: str, where: str):
  """A `tokenizers.Tokenizer` from tokenizer.json's text (`where` names it in errors)."""
  from tokenizers import Tokenizer  # loaded only by runs that use a pretrained tokenizer

  try:
    return Tokenizer.from_str(text)
  except Exception as e:  # the Rust library's own exception type
    raise UserError(f"{where} is not a tokenizer the tokenizers library reads: {e}") from None


def special_id(tokenizer, folder: str, which: str = "pad") -> int | None:
  """The id of the folder's `which` token (pad, eos, bos): tokenizer_config.json's
  `<which>_token`, config.json's `<which>_token_id`; for pad, then the tokenizer's own
  padding, or 0."""
  for name, key in (
    ("tokenizer_config.json", f"{which}_token"),
    ("config.json", f"{which}_token_id"),
  ):
    try:
      with open(os.path.join(folder, name)) as f:
        value = json.load(f).get(key)
    except (OSError, ValueError):
      continue
    if isinstance(value, dict):  # {"content": "[PAD]", ...}
      value = value.get("content")
    if isinstance(value, str) and tokenizer.token_to_id(value) is not None:
      return int(tokenizer.token_to_id(value))
    if isinstance(value, int):
      return value
  if which != "pad":
    return None
  padding = tokenizer.padding
  return int(padding["pad_id"]) if padding else 0


_WORDS_AND_SYMBOLS = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def ngrams(text: str, word_ngrams: int, char_ngrams) -> list[str]:
  """Word 1..n-grams (symbols such as £ and ! are words of their own), then the character
  n-grams of the whole text (spaces collapsed, lower case): the features of a linear text
  classifier, hashed by the tokenizer "ngrams"."""
  text = text.lower()
  words = _WORDS_AND_SYMBOLS.findall(text)
  out = ["w " + w for w in words]
  for n in range(2, word_ngrams + 1):
    out += ["w " + " ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
  if char_ngrams:
    padded = " " + " ".join(text.split()) + " "
    for n in range(char_ngrams[0], char_ngrams[1] + 1):
      out += ["c" + padded[i : i + n] for i in range(len(padded) - n + 1)]
  return out


def _class_weights(counts: np.ndarray, how: str) -> list[float]:
  if how == "none":
    return [1.0] * len(counts)
  if how == "balanced":  # scikit-learn's: n / (classes * count)
    return [float(counts.sum() / (len(counts) * c)) if c else 0.0 for c in counts]
  try:
    weights = [float(w) for w in how.split(",")]
  except ValueError:
    weights = []
  if len(weights) != len(counts):
    raise UserError(
      f"preprocess.class_weights={how!r} must be none, balanced, or "
      f"{len(counts)} numbers (one per class)"
    )
  return weights


def inherit(prep: dict, source_folder: str) -> dict:
  """`prep` with the feature preprocessing of the run it fine-tunes (`init_from`), saved in
  `source_folder` (that run's preprocess folder).

  Embeddings learned over one vocabulary are wrong under another, so a run
  warm-started from another keeps that run's tokenizer, vocabularies and
  scaling; only the label (classes, weights, scale) is fitted to the new data.
  """
  if prep["kind"] != "table" or not saved(source_folder):
    return prep
  source, _ = load(source_folder)
  if source.get("kind") != "table":
    return prep
  inherited = dict(prep)
  for key in ("numeric", "categorical", "text", "image"):
    inherited[key] = source[key]
  return inherited


def fit_seen(train: dict[str, np.ndarray], prep: dict) -> dict[str, np.ndarray]:
  """Retrieval: each user's training items, as CSR arrays (offsets, items)."""
  users = _lookup(prep["categorical"][0], train[prep["categorical"][0]["feature"]])
  items = _lookup(prep["categorical"][1], train[prep["categorical"][1]["feature"]])
  num_users = prep["categorical"][0]["size"]
  pairs = sorted(set(zip(users.tolist(), items.tolist())))
  offsets = np.zeros(num_users + 1, np.int64)
  for u, _ in pairs:
    offsets[u + 1] += 1
  return {
    "offsets": np.cumsum(offsets),
    "items": np.asarray([i for _, i in pairs], np.int32),
    "popularity": np.bincount(items, minlength=prep["categorical"][1]["size"]),
  }


def _index(vocab, first: int) -> dict[str, int]:
  return {v: i + first for i, v in enumerate(vocab)}


def _lookup(spec: dict, values, index: dict | None = None) -> np.ndarray:
  index = _index(spec["vocab"], 1) if index is None else index
  return np.asarray([index.get(v, 0) for v in _strings(values)], np.int32)


def _calendar(seconds: np.ndarray, field: str) -> np.ndarray:
  """1-based calendar fields of UTC times (0 stays free for "unknown")."""
  t = np.asarray(seconds, np.int64).astype("datetime64[s]")
  if field == "dayofweek":  # Monday = 1; 1970-01-01 was a Thursday
    return ((t.astype("datetime64[D]").astype(np.int64) + 3) % 7 + 1).astype(np.int32)
  if field == "month":
    return (t.astype("datetime64[M]").astype(np.int64) % 12 + 1).astype(np.int32)
  if field == "hour":
    return ((t.astype("datetime64[h]").astype(np.int64)) % 24 + 1).astype(np.int32)
  minute = t.astype("datetime64[m]").astype(np.int64) % 1440
  if field == "minuteofday":
    return (minute + 1).astype(np.int32)
  if field == "halfhour":
    return (minute // 30 + 1).astype(np.int32)
  if field == "dayofyear":
    days = t.astype("datetime64[D]") - t.astype("datetime64[Y]").astype("datetime64[D]")
    return (days.astype(np.int64) + 1).astype(np.int32)
  days = t.astype("datetime64[D]") - t.astype("datetime64[M]").astype("datetime64[D]")
  return (days.astype(np.int64) + 1).astype(np.int32)


def _pretrained_tokens(spec: dict, tokenizer, texts) -> tuple[np.ndarray, np.ndarray]:
  """(token ids, attention mask) [B, max_length] from a pretrained tokenizer."""
  length = spec["max_length"]
  ids = np.full((len(texts), length), spec["pad_id"], np.int32)
  mask = np.zeros((len(texts), length), np.int32)
  for row, encoding in enumerate(tokenizer.encode_batch(_strings(texts))):
    n = min(len(encoding.ids), length)
    ids[row, :n], mask[row, :n] = encoding.ids[:n], 1
  return ids, mask


def _tokens(spec: dict, texts, index: dict | None = None) -> np.ndarray:
  out = np.zeros((len(texts), spec["max_length"]), np.int32)
  index = _index(spec.get("vocab", ()), 2) if index is None else index
  for row, text in enumerate(_strings(texts)):
    if spec["tokenizer"] == "ngrams":
      grams = ngrams(text, spec["word_ngrams"], spec["char_ngrams"])[: spec["max_length"]]
      ids = [zlib.crc32(g.encode()) % (spec["size"] - 2) + 2 for g in grams]
      out[row, : len(ids)] = ids
      continue
    words = tokenize(text)[: spec["max_length"]]
    if spec["tokenizer"] == "vocab":
      ids = [index.get(w, 1) for w in words]
    else:
      ids = [zlib.crc32(w.encode()) % (spec["size"] - 2) + 2 for w in words]
    out[row, : len(ids)] = ids
  return out


def _scaling(x: np.ndarray, how: str) -> dict:
  """A number column's centre ("mean") and scale ("std") from the train split.

  standard: mean and standard deviation. robust (RealMLP's, Holzmüller et al.
  2024): the median and the interquartile range (/1.349, a normal's standard
  deviation), then a smooth clip z / sqrt(1 + (z/3)^2): an income or a balance
  with a long tail neither squeezes its typical values together nor feeds the
  network outliers dozens of deviations out.
  """
  if np.isnan(x).all():
    return {"mean": 0.0, "std": 1.0}
  if how == "standard":
    return {"mean": float(np.nanmean(x)), "std": float(np.nanstd(x)) or 1.0}
  if how != "robust":
    raise UserError(f"preprocess.numeric_scaling={how!r} should be standard or robust")
  q25, median, q75 = np.nanquantile(x, [0.25, 0.5, 0.75])
  scale = (q75 - q25) / 1.349 or float(np.nanstd(x)) or 1.0  # a mostly constant column: its std
  return {"mean": float(median), "std": float(scale), "smooth_clip": 3.0}


def _numeric_inputs(raw: Batch, specs: list[dict]) -> list[np.ndarray]:
  """Scaled numbers (`_scaling`); a missing one (NaN) is the train centre (0), with a
  missing flag after it for the columns whose train split had missing values."""
  inputs = []
  for s in specs:
    z = (raw[s["feature"]].astype(np.float64) - s["mean"]) / s["std"]
    if "smooth_clip" in s:
      z = z / np.sqrt(1 + (z / s["smooth_clip"]) ** 2)
    missing = np.isnan(z)
    inputs.append(np.where(missing, 0.0, z))
    if s.get("missing"):
      inputs.append(missing.astype(np.float64))
  return inputs


def make_transform(
  prep: dict, *, train: bool, seen: dict | None = None
) -> Callable[[Batch], Batch]:
  """Raw examples to model inputs; evaluation batches of a retrieval run also get `seen`."""
  if prep["kind"] == "image":
    return to_model_inputs
  max_seen = int(np.diff(seen["offsets"]).max()) if seen is not None else 0
  # Vocabulary indices, built once (not per batch).
  indices = [None if "calendar" in s else _index(s["vocab"], 1) for s in prep["categorical"]]
  token_index = _index(prep["text"].get("vocab", ()), 2) if prep["text"] else None
  pretrained = prep["text"] and prep["text"]["tokenizer"] == "pretrained"
  tokenizer = (
    load_tokenizer(prep["text"]["tokenizer_json"], prep["text"]["source"]) if pretrained else None
  )
  if tokenizer is not None:  # truncated at max_length with its end token kept ([SEP])
    tokenizer.no_padding()
    tokenizer.enable_truncation(prep["text"]["max_length"])

  def transform(raw: Batch) -> Batch:
    batch = {}
    if prep["numeric"]:
      batch["numeric"] = np.stack(_numeric_inputs(raw, prep["numeric"]), axis=1).astype(np.float32)
    if prep["categorical"]:
      n = len(next(iter(raw.values())))
      batch["categorical"] = (
        np.stack(  # a feature not given (a retrieval query's item) is unknown: 0
          [
            np.zeros(n, np.int32)
            if s["feature"] not in raw
            else _calendar(raw[s["feature"]], s["calendar"])
            if "calendar" in s
            else _lookup(s, raw[s["feature"]], i)
            for s, i in zip(prep["categorical"], indices)
          ],
          axis=1,
        )
      )
    if tokenizer is not None:
      batch["tokens"], batch["attention_mask"] = _pretrained_tokens(
        prep["text"], tokenizer, raw[prep["text"]["feature"]]
      )
    elif prep["text"]:
      batch["tokens"] = _tokens(prep["text"], raw[prep["text"]["feature"]], token_index)
    if prep["image"] and prep["image"].get("integers"):  # ids stay ids: the model's tokens
      batch["tokens"] = raw[prep["image"]["feature"]].astype(np.int32)
    elif prep["image"]:
      batch["image"] = raw[prep["image"]["feature"]].astype(np.float32) * np.float32(1 / 255)
    if "label" in raw:
      batch["label"] = raw["label"].astype(
        np.int32 if prep["label"]["kind"] == "class" else np.float32
      )
    if seen is not None and not train:
      users = batch["categorical"][:, 0]
      batch["seen"] = np.full((len(users), max(max_seen, 1)), -1, np.int32)
      for row, u in enumerate(users):
        items = seen["items"][seen["offsets"][u] : seen["offsets"][u + 1]]
        batch["seen"][row, : len(items)] = items
    return batch

  return transform


def model_kwargs(prep: dict) -> dict:
  """What a table model needs to know about its inputs (vocabulary sizes, classes)."""
  if prep["kind"] == "image":
    return {}
  kwargs = {"categorical_sizes": tuple(s["size"] for s in prep["categorical"])}
  if prep["text"]:
    kwargs.update(vocab_size=prep["text"]["size"], max_length=prep["text"]["max_length"])
  kwargs["num_outputs"] = prep["label"].get("num_classes", 1)
  return kwargs


def task_kwargs(prep: dict) -> dict:
  """What a task may need to know about the data: the label's kind, class weights, scale.

  Given to a task only for the fields it declares (tasks.py), unless
  `config.loss` sets them.
  """
  label = prep.get("label") or {}
  kwargs = {}
  if label:
    kwargs["label_kind"] = label["kind"]
  weights = label.get("class_weights")
  if weights is not None and any(w != 1.0 for w in weights):
    kwargs["class_weights"] = tuple(weights)
  if label.get("kind") == "value":
    kwargs.update(label_mean=label["mean"], label_std=label["std"])
    if label.get("transform", "none") != "none":
      kwargs["label_transform"] = label["transform"]
  if prep["kind"] == "table":
    kwargs["num_categorical"] = len(prep["categorical"])
  return kwargs


# The files of a saved preprocessing, in the folder the caller names (a workdir's
# preprocess/, an export's folder).
PREP_FILE, SEEN_FILE = "preprocess.json", "seen.npz"


def save(folder: str, prep: dict, seen: dict | None) -> None:
  """Writes the fitted preprocessing into `folder`; preprocess.json, written last, marks it
  whole."""
  os.makedirs(folder, exist_ok=True)
  if seen is not None:
    with files.replacing(os.path.join(folder, SEEN_FILE), "wb") as f:
      np.savez(f, **seen)
  files.write_text(os.path.join(folder, PREP_FILE), json.dumps(prep, indent=1, sort_keys=True))


def saved(folder: str) -> bool:
  return os.path.exists(os.path.join(folder, PREP_FILE))


def load(folder: str) -> tuple[dict, dict | None]:
  """(prep, seen) saved in `folder` (a workdir's: `jaxtrain.run.workdir.preprocess(workdir)`)."""
  old_style = os.path.join(folder, "preprocess")  # a workdir, as this took before 0.x
  if not saved(folder) and saved(old_style):
    warnings.warn(
      "preprocess.load(workdir) is deprecated: pass the folder, "
      "jaxtrain.run.workdir.preprocess(workdir)",
      DeprecationWarning,
      stacklevel=2,
    )
    folder = old_style
  try:
    with open(os.path.join(folder, PREP_FILE)) as f:
      prep = json.load(f)
  except FileNotFoundError:
    raise UserError(
      f"{folder} has no {PREP_FILE} (not a jaxtrain run's, or one that never started)"
    ) from None
  seen = None
  if os.path.exists(os.path.join(folder, SEEN_FILE)):
    with np.load(os.path.join(folder, SEEN_FILE), allow_pickle=False) as f:
      seen = {k: f[k] for k in f.files}
  return prep, seen


def copy_saved(folder: str, target: str) -> None:
  """The preprocessing saved in `folder`, copied into `target` (an export serves with it)."""
  for name in (PREP_FILE, SEEN_FILE):
    if os.path.exists(os.path.join(folder, name)):
      files.copy(os.path.join(folder, name), os.path.join(target, name))

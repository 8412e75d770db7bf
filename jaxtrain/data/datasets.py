"""Datasets as TFDS builders written to array_record, read with random access.

Ways to name data in `config.dataset`:
- `name=` a builder class, by import path (`"my_data.py:Reviews"`, any
  `tfds.core.GeneratorBasedBuilder` subclass; registry.py) or by a short name
  mapped to one: `"digits"` (scikit-learn's bundled handwritten digits,
  embedded, no download), `"synthetic_tokens"` (seeded token sequences for
  language models). `dataset.builder_kwargs` are its constructor's arguments.
  It is prepared once, as array_record, into `data_dir`.
- `path=DIR`: source files in a directory, prepared once into `data_dir` under a
  name that includes a fingerprint of the files (so changed files are a new
  dataset, never a stale one). Today: MNIST-style IDX files.
- `name="<name>"` of a `jaxtrain data import` (see importing.py): its newest
  version, or `"<name>:1.0.2"` for a given one.
- any other `name`: a TFDS dataset already prepared in `data_dir`.

Every image example is a dict `{"image": uint8 [H, W, C], "label": int64}`;
images are stored as 0..255 so one preprocessing serves every image dataset. Our
builders keep the source order (TFDS would hash-shuffle it), so a slice such
as `test[8000:]` means the file's last 2,000 rows.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxtrain import registry
from jaxtrain.config import sample_file
from jaxtrain.data import store
from jaxtrain.errors import UserError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# MNIST's file names: train-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz), ...
_IDX_FILE = re.compile(
  r"^(?P<prefix>[a-z0-9]+)-(?P<kind>images|labels)-idx(?P<ndim>\d)-ubyte(\.gz)?$"
)
_IDX_SPLITS = {"train": "train", "t10k": "test", "test": "test"}


def read_idx(path: Path) -> np.ndarray:
  """An IDX file (optionally gzipped) as an array; a malformed file is a UserError."""
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise UserError(f"cannot read IDX file {path}: {e}") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise UserError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  expected = header + int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected:
    raise UserError(
      f"{path} is truncated or padded: header says shape {shape} "
      f"({expected} bytes) but the file has {len(data)} bytes"
    )
  return np.frombuffer(data, dtype, offset=header).reshape(shape)


def fingerprint(files) -> str:
  """SHA-256 over the files' names and bytes, in name order."""
  h = hashlib.sha256()
  for f in sorted(files, key=lambda p: p.name):
    h.update(f.name.encode() + b"\0")
    with open(f, "rb") as fh:
      for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
  return h.hexdigest()


def idx_split_files(source_dir: Path) -> dict[str, dict[str, Path]]:
  """{split: {"images": path, "labels": path}} for the IDX files in a directory."""
  splits: dict[str, dict[str, Path]] = {}
  for f in sorted(source_dir.iterdir()):
    m = _IDX_FILE.match(f.name)
    if m and m["prefix"] in _IDX_SPLITS:
      splits.setdefault(_IDX_SPLITS[m["prefix"]], {})[m["kind"]] = f
  for split, files in splits.items():
    if set(files) != {"images", "labels"}:
      missing = ({"images", "labels"} - set(files)).pop()
      raise UserError(
        f"{source_dir}: split {split!r} has no {missing} file "
        f"(expected e.g. t10k-{missing}-idx{3 if missing == 'images' else 1}-ubyte.gz)"
      )
  return splits


def _image_features(shape, num_classes):
  return tfds.features.FeaturesDict(
    {
      "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
      "label": tfds.features.ClassLabel(num_classes=num_classes),
    }
  )


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 1,797 handwritten 8x8 digits, as uint8 0..255 images.

  The original pixel values 0..16 are scaled by 255/16 and rounded (a
  one-to-one map). Splits: "train" (1,437) and "test" (360), from a fixed
  permutation with seed 0, so every user gets the same split.
  """

  VERSION = tfds.core.Version("1.1.0")  # 1.1: source order kept

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=_image_features((8, 8, 1), 10),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    # scikit-learn's load_digits() arrays (pixel values 0..16), shipped in the package.
    with np.load(sample_file("digits.npz"), allow_pickle=False) as digits:
      raw, target = digits["images"].astype(np.float64), digits["target"].astype(np.int64)
    images = np.round(raw * (255 / 16)).astype(np.uint8)[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    n_test = 360
    return {
      "train": self._generate_examples(images, target, order[n_test:]),
      "test": self._generate_examples(images, target, order[:n_test]),
    }

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}


class SyntheticTokens(tfds.core.GeneratorBasedBuilder):
  """Token sequences `{"tokens": int32 [seq_len + 1]}` from a seeded noisy Markov chain.

  Each next token is a fixed permutation of the current one with probability
  0.75, else uniform: a language model can learn it (the best loss is about
  0.25 * ln(vocab_size) + 0.56 nats), so benchmarks train on something real
  and tests can see the loss fall. Splits "train" and "test" (an eighth as many).
  """

  VERSION = tfds.core.Version("1.0.0")
  FOLLOW = 0.75

  def __init__(
    self, *, vocab_size: int = 50304, seq_len: int = 1024, num_examples: int = 4096, **kwargs
  ):
    if min(vocab_size, seq_len, num_examples) < 2 or vocab_size > 2**31 - 1:
      raise UserError(
        f"dataset.builder_kwargs: vocab_size={vocab_size}, seq_len={seq_len} and "
        f"num_examples={num_examples} must each be >= 2 (vocab_size < 2**31: int32 tokens)"
      )
    self._shape = (vocab_size, seq_len, num_examples)
    config = tfds.core.BuilderConfig(name=f"v{vocab_size}_l{seq_len}_n{num_examples}")
    super().__init__(config=config, **kwargs)

  def _info(self):
    features = tfds.features.FeaturesDict(
      {"tokens": tfds.features.Tensor(shape=(self._shape[1] + 1,), dtype=np.int32)}
    )
    return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

  def _split_generators(self, dl_manager):
    vocab_size, seq_len, n = self._shape
    rng = np.random.default_rng(0)
    follow = rng.permutation(vocab_size).astype(np.int32)
    tokens = np.empty((n + max(n // 8, 1), seq_len + 1), np.int32)
    tokens[:, 0] = rng.integers(vocab_size, size=len(tokens))
    for t in range(1, seq_len + 1):  # vectorised over sequences
      noise = rng.integers(vocab_size, size=len(tokens), dtype=np.int32)
      tokens[:, t] = np.where(
        rng.random(len(tokens)) < self.FOLLOW, follow[tokens[:, t - 1]], noise
      )
    return {
      "train": self._generate_examples(tokens[:n]),
      "test": self._generate_examples(tokens[n:]),
    }

  def _generate_examples(self, tokens):
    for i, row in enumerate(tokens):
      yield i, {"tokens": row}


class PromptResponse(tfds.core.GeneratorBasedBuilder):
  """Prompt/response pairs from a JSONL file, tokenized for causal-LM fine-tuning.

  Each line is `{"prompt": ..., "response": ...}`. An example is `tokens` (the
  prompt as the tokenizer encodes it, special tokens included, then the
  response and the end token), `attention_mask` (1 for those) and
  `loss_mask` (1 on the response's tokens and the end token: the loss is
  taken there only, tasks.CausalLM), each int32 [max_length], padded on the
  right with the pad token; a pair longer than max_length keeps its prompt's
  start and is cut at the end. `tokenizer` is a pretrained folder (or its
  tokenizer.json). Splits "train" and "validation" (`validation_fraction` of
  the lines, by a seeded permutation). The builder's version name hashes the
  file, the tokenizer and the arguments: a changed file is a new dataset.
  """

  VERSION = tfds.core.Version("1.0.0")

  def __init__(
    self,
    *,
    path: str,
    tokenizer: str,
    max_length: int = 128,
    validation_fraction: float = 0.1,
    seed: int = 0,
    **kwargs,
  ):
    from jaxtrain.data import preprocess  # the tokenizer's loading and special tokens

    if not Path(path).is_file():
      raise UserError(f"dataset.builder_kwargs.path={path} is not a file")
    where = Path(tokenizer) / "tokenizer.json" if Path(tokenizer).is_dir() else Path(tokenizer)
    if not where.is_file():
      raise UserError(
        f"dataset.builder_kwargs.tokenizer={tokenizer!r}: {where} does not exist (set it, or "
        "model.pretrained, to a pretrained folder)"
      )
    text = where.read_text(encoding="utf-8")
    self._tokenizer = preprocess.load_tokenizer(text, str(where))
    folder = str(where.parent)
    self._pad = preprocess.special_id(self._tokenizer, folder, "pad")
    self._eos = preprocess.special_id(self._tokenizer, folder, "eos")
    self._path, self._length = path, int(max_length)
    self._fraction, self._seed = float(validation_fraction), int(seed)
    h = hashlib.sha256(Path(path).read_bytes())
    h.update(text.encode())
    h.update(f"{max_length} {validation_fraction} {seed}".encode())
    config = tfds.core.BuilderConfig(name=f"l{max_length}_{h.hexdigest()[:16]}")
    super().__init__(config=config, **kwargs)

  def _info(self):
    feature = lambda: tfds.features.Tensor(shape=(self._length,), dtype=np.int32)  # noqa: E731
    features = tfds.features.FeaturesDict(
      {"tokens": feature(), "attention_mask": feature(), "loss_mask": feature()}
    )
    return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

  def _pairs(self) -> list[tuple[str, str]]:
    import json

    pairs = []
    with open(self._path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
          pairs.append((str(row["prompt"]), str(row["response"])))
        except (ValueError, KeyError, TypeError):
          raise UserError(
            f"{self._path} line {number}: not a JSON object with 'prompt' and 'response'"
          ) from None
    if len(pairs) < 2:
      raise UserError(f"{self._path} holds {len(pairs)} prompt/response pairs: at least 2")
    return pairs

  def _encode(self, prompt: str, response: str) -> dict[str, np.ndarray]:
    head = self._tokenizer.encode(prompt).ids
    tail = self._tokenizer.encode(response, add_special_tokens=False).ids
    tail = tail + ([self._eos] if self._eos is not None else [])
    ids = (head + tail)[: self._length]
    out = {
      "tokens": np.full(self._length, self._pad, np.int32),
      "attention_mask": np.zeros(self._length, np.int32),
      "loss_mask": np.zeros(self._length, np.int32),
    }
    out["tokens"][: len(ids)] = ids
    out["attention_mask"][: len(ids)] = 1
    out["loss_mask"][len(head) : len(ids)] = 1
    return out

  def _split_generators(self, dl_manager):
    pairs = self._pairs()
    order = np.random.default_rng(self._seed).permutation(len(pairs))
    n_val = max(1, int(round(self._fraction * len(pairs))))
    return {
      "train": self._generate_examples([pairs[i] for i in sorted(order[n_val:])]),
      "validation": self._generate_examples([pairs[i] for i in sorted(order[:n_val])]),
    }

  def _generate_examples(self, pairs):
    for i, (prompt, response) in enumerate(pairs):
      yield i, self._encode(prompt, response)


class IdxImages(tfds.core.GeneratorBasedBuilder):
  """MNIST-style IDX image/label file pairs from a directory (`train-*`, `t10k-*`)."""

  VERSION = tfds.core.Version("1.1.0")  # 1.1: source order kept

  def __init__(self, *, source_dir: str, **kwargs):
    self._source_dir = Path(source_dir)
    self._splits = idx_split_files(self._source_dir)
    if not self._splits:
      raise UserError(
        f"dataset.path={source_dir} holds no IDX files "
        "(expected e.g. t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz)"
      )
    files = [f for s in self._splits.values() for f in s.values()]
    labels = [read_idx(s["labels"]) for s in self._splits.values()]
    self._num_classes = int(max(l.max() for l in labels)) + 1
    self._shape = self._image_shape(next(iter(self._splits.values()))["images"])
    config = tfds.core.BuilderConfig(name=fingerprint(files)[:16])
    super().__init__(config=config, **kwargs)

  @staticmethod
  def _image_shape(path):
    opener = gzip.open if path.suffix == ".gz" else open
    try:
      with opener(path, "rb") as f:
        head = f.read(16)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile among them
      raise UserError(f"cannot read IDX file {path}: {e}") from None
    if len(head) < 16 or head[2] != 0x08 or head[3] != 3:
      raise UserError(f"{path} is not a uint8 IDX image file (magic {head[:4].hex()})")
    rows, cols = int.from_bytes(head[8:12], "big"), int.from_bytes(head[12:16], "big")
    return (rows, cols, 1)

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      supervised_keys=("image", "label"),
      features=_image_features(self._shape, self._num_classes),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(files) for split, files in self._splits.items()}

  def _generate_examples(self, files):
    images, labels = read_idx(files["images"]), read_idx(files["labels"])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise UserError(
        f"{files['images']} holds {images.shape} images but "
        f"{files['labels']} holds {labels.shape} labels"
      )
    for i in range(len(images)):
      yield i, {"image": images[i][..., None], "label": int(labels[i])}


def _prepared(make_builder, prepare: bool = True):
  """A builder made after its data is on disk (`prepare=False`: refused if it is not).

  A builder reads its split info when made: one made while another process
  (a multi-host job's peer) was still preparing the same data would see no
  splits, so the builder used is made once the lock is held.
  """
  builder = make_builder()
  if not prepare:
    if not builder.is_prepared():
      raise UserError(
        f"dataset {builder.name} is not prepared in {builder._data_dir_root}; this "
        "command only reads datasets (train prepares them)"
      )
    return builder
  with store.lock(builder._data_dir_root, builder.name):
    builder = make_builder()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
  return builder


class DatasetNotFound(UserError):
  """`dataset.name` names nothing in the data_dir (not yet imported, or another data_dir)."""

  def __init__(self, message: str, name: str, data_dir: str):
    super().__init__(message)
    self.name, self.data_dir = name, data_dir


def builder_class(dataset_config, base_dir: str | None = None) -> registry.Loaded | None:
  """The builder class `dataset.name` names by import path or short name (None: another kind)."""
  name = dataset_config.name
  if dataset_config.path or not (name in registry.DATASETS or registry.is_import_path(name)):
    return None
  loaded = registry.resolve(name, registry.DATASETS, "config.dataset.name", base_dir)
  if not (isinstance(loaded.obj, type) and issubclass(loaded.obj, tfds.core.DatasetBuilder)):
    raise UserError(
      f"config.dataset.name={name!r} is not a TFDS dataset builder class "
      "(a tfds.core.GeneratorBasedBuilder subclass)"
    )
  return loaded


def _check_builder_kwargs(loaded: registry.Loaded, kwargs: dict) -> None:
  """`dataset.builder_kwargs` against the arguments the builder's own `__init__` names."""
  own = loaded.obj.__dict__.get("__init__")
  params = (
    {}
    if own is None
    else {
      n: p
      for n, p in inspect.signature(own).parameters.items()
      if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
  )
  unknown = sorted(set(kwargs) - set(params))
  missing = sorted(n for n, p in params.items() if p.default is p.empty and n not in kwargs)
  if unknown or missing:
    takes = ", ".join(params) or "no arguments"
    problem = (
      f"has no argument(s) {', '.join(unknown)}" if unknown else f"needs {', '.join(missing)}"
    )
    raise UserError(f"config.dataset.builder_kwargs: {loaded.target} {problem} (it takes: {takes})")


def get_builder(
  dataset_config, base_dir: str | None = None, *, prepare: bool = True
) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder `config.dataset` names (preparing builders' data once).

  `base_dir` anchors a builder's relative file path (the config file's
  directory). `prepare=False` never writes: for commands that read a run's
  files, whose paths are data, not instructions.
  """
  data_dir = dataset_config.data_dir or store.default_data_dir()
  if dataset_config.path:
    path = Path(dataset_config.path).expanduser()
    if not path.is_dir():
      raise UserError(f"dataset.path={dataset_config.path} is not a directory")
    return _prepared(
      lambda: IdxImages(source_dir=str(path), data_dir=data_dir, file_format="array_record"),
      prepare,
    )
  loaded = builder_class(dataset_config, base_dir)
  if loaded is not None:
    kwargs = dict(dataset_config.get("builder_kwargs") or {})
    _check_builder_kwargs(loaded, kwargs)
    return _prepared(
      lambda: loaded.obj(**kwargs, data_dir=data_dir, file_format="array_record"), prepare
    )
  imported = store.imported_dir(data_dir, dataset_config.name)
  if imported is not None:
    return tfds.builder_from_directory(imported)
  try:
    builder = tfds.builder(dataset_config.name, data_dir=data_dir)
  except Exception as e:  # unknown name, or a builder whose code needs TensorFlow
    if type(e).__name__ == "DatasetNotFoundError":
      raise DatasetNotFound(
        f"dataset.name={dataset_config.name!r} is not in {data_dir}: neither a "
        "`jaxtrain data import` there nor a TFDS dataset",
        dataset_config.name,
        data_dir,
      ) from None
    raise UserError(
      f"dataset.name={dataset_config.name!r} cannot be loaded: {e}".split("\n")[0]
    ) from None
  if not builder.is_prepared():
    raise UserError(
      f"dataset {dataset_config.name!r} is not prepared in {data_dir}: prepare it there with "
      f"`tfds build {dataset_config.name} --data_dir {data_dir} --file_format array_record`, "
      "or set dataset.path to a directory of its source files"
    )
  return builder


def get_source(builder, split: str, field: str = "dataset.train_split"):
  """A random-access source for a TFDS split string (slicing such as `train[:80%]` works).

  `field` names the config field the split came from, for error messages.
  """
  try:
    empty = builder.info.splits[split].num_examples == 0  # a slice that selects nothing
  except Exception:  # an unknown split or bad slice: as_data_source says which, below
    empty = False
  if empty:
    raise UserError(f"{field}={split!r} is empty")
  try:
    source = builder.as_data_source(split=split)
  except Exception as e:  # TFDS raises several types for a split it cannot read
    splits = ", ".join(sorted(builder.info.splits.keys()))
    raise UserError(
      f"{field}={split!r} cannot be read from {builder.name} "
      f"(its splits: {splits}): {str(e).splitlines()[0]}"
    ) from None
  if len(source) == 0:
    raise UserError(f"{field}={split!r} is empty")
  return source

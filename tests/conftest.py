"""Shared fixtures: one TFDS data_dir per session, and small fast configs."""

import os
import tempfile
from pathlib import Path

import pytest

# Every run and CLI process in the suite compiles the same few programs: let
# JAX's persistent compilation cache serve them (children inherit the env), one
# cache for all of a session's xdist workers.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(tempfile.gettempdir(), f"jaxtrain-xla-cache-{_RUN}")
  if _RUN
  else tempfile.mkdtemp(prefix="jaxtrain-xla-cache-"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

ROOT = Path(__file__).resolve().parent.parent
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist_t10k"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A data_dir shared by the session, so each dataset is prepared once."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def load_config(name: str):
  """`configs/<name>.py`'s get_config(), as `jaxtrain train --config` would load it."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(f"configs_{name}", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture
def small_config(data_dir):
  """configs/digits.py with a small MLP and short run: seconds, still real data and loop."""
  c = load_config("digits")
  c.batch_size = 50  # 1,293 train examples: 25 steps an epoch, 43 left over
  c.num_train_steps = 60
  c.log_every_steps = 20
  c.eval_every_steps = 30
  c.checkpoint_every_steps = 30
  c.optimizer.update(learning_rate=3e-3, warmup_steps=10)
  c.dataset.data_dir = data_dir
  c.model = dict(name="mlp", num_classes=10, features=(64,), dropout_rate=0.1)
  return c


def require_mnist():
  if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
    pytest.skip(f"the real MNIST files are not at {MNIST_DIR} (see shared/data/SOURCES.md)")
  return MNIST_DIR

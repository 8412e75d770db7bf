"""The package as a user installs it: a wheel (not the checkout) works from any directory."""

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """The wheel built from this checkout, installed alone into a folder of its own."""
  wheels, site = tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("site")
  built = subprocess.run(
    [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
    capture_output=True,
    text=True,
    timeout=600,
  )
  if built.returncode != 0 and "No matching distribution found for setuptools" in built.stderr:
    pytest.skip(
      "building a wheel needs setuptools>=77 from the package index, which is unreachable"
    )
  assert built.returncode == 0, built.stderr[-2000:]
  [wheel] = wheels.glob("jaxtrain-*.whl")
  subprocess.run(
    [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
    check=True,
    timeout=600,
  )
  return wheel, site


def _python(site, cwd, *args):
  env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
  )


def test_the_wheel_holds_configs_data_license_and_types(installed):
  wheel, _ = installed
  names = set(zipfile.ZipFile(wheel).namelist())
  for name in (
    "jaxtrain/configs/digits.py",
    "jaxtrain/configs/sweeps/digits_lr_wd.py",
    "jaxtrain/sample_data/digits.npz",
    "jaxtrain/sample_data/spam.csv",
    "jaxtrain/py.typed",
  ):
    assert name in names, name
  assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
  metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
  assert "License-Expression: Apache-2.0" in metadata
  assert "Requires-Dist: scikit-learn" not in metadata.split("Provides-Extra")[0]  # tests only
  assert "Provides-Extra: sweep" in metadata and "Provides-Extra: all" in metadata


def test_an_installed_wheel_trains_a_builtin_config_from_an_empty_directory(
  installed, tmp_path, data_dir
):
  _, site = installed
  empty = tmp_path / "anywhere"
  empty.mkdir()
  where = _python(site, empty, "-c", "import jaxtrain; print(jaxtrain.__file__)")
  assert where.stdout.startswith(str(site)), where  # the installed copy, not the checkout
  helped = _python(site, empty, "-m", "jaxtrain.tools.cli", "train", "--help")
  assert helped.returncode == 0 and "--workdir" in helped.stdout
  run = _python(
    site,
    empty,
    "-m",
    "jaxtrain.tools.cli",
    "train",
    "--config",
    "digits",
    "--workdir",
    "w",
    "--quiet",
    f"--config.dataset.data_dir={tmp_path / 'dd'}",
    "--config.num_train_steps=20",
    "--config.eval_every_steps=20",
    "--config.checkpoint_every_steps=20",
    "--config.log_every_steps=10",
  )
  assert run.returncode == 0, run.stderr[-2000:]
  assert (empty / "w" / "checkpoints" / "20").is_dir()
  assert " step 20 test accuracy=" in run.stdout


def test_every_package_folder_is_listed_for_the_wheel():
  """A new sub-package (data/importing/) missing from pyproject's list is left out of the
  wheel: the installed command then fails to import it."""
  import tomllib

  listed = set(
    tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
  )
  found = {
    ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jaxtrain").rglob("__init__.py")
  }
  assert found <= listed, sorted(found - listed)

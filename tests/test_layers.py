"""The package's layers: every import points down, no cycles, the core loads alone, help is fast.

Layers, lowest first: errors; config and registry; the core (state, steps,
tasks, optim); models and data (which never import each other); the run
loop; the tools. Imports inside functions count too.
"""

import ast
import re
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "jaxtrain"
RANKS = {
  "jaxtrain": 0,
  "jaxtrain.errors": 0,
  "jaxtrain.files": 0,
  "jaxtrain.config": 1,
  "jaxtrain.registry": 1,
  "jaxtrain.state": 2,
  "jaxtrain.steps": 2,
  "jaxtrain.tasks": 2,
  "jaxtrain.optim": 2,
  "jaxtrain.lora": 2,
  "jaxtrain.models": 3,
  "jaxtrain.data": 3,
  "jaxtrain.run": 4,
  "jaxtrain.tools": 5,
}


def _modules() -> dict[str, str]:
  """{dotted module name: source} of every module in the package."""
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path.read_text()
  return out


def _imports(name: str, source: str, known: set[str]) -> set[str]:
  """The jaxtrain modules `name` imports, anywhere in its body."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("jaxtrain")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxtrain"):
      for alias in node.names:  # `from jaxtrain.run import checkpoint` imports a module
        sub = f"{node.module}.{alias.name}"
        found.add(sub if sub in known else node.module)
  return found - {name}


def _rank(module: str) -> int:
  while module not in RANKS:
    module = module.rpartition(".")[0]
  return RANKS[module]


def test_every_import_points_down_and_models_and_data_stay_apart():
  modules = _modules()
  wrong = []
  for name, source in modules.items():
    if name == "jaxtrain":
      continue  # the lazy __init__ names what it exports as strings
    for target in _imports(name, source, set(modules)):
      if _rank(target) > _rank(name):
        wrong.append(f"{name} -> {target}")
      if {name.split(".")[1], target.split(".")[1:2][0] if "." in target else ""} == {
        "models",
        "data",
      }:
        wrong.append(f"{name} -> {target}")
  assert not wrong, wrong


def test_no_import_cycles():
  modules = _modules()
  graph = {name: _imports(name, src, set(modules)) & set(modules) for name, src in modules.items()}
  state: dict[str, str] = {}

  def visit(node, path):
    state[node] = "open"
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt) :] + [nxt]))
      if nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = "done"

  for name in sorted(graph):
    if name not in state:
      visit(name, [name])


def _fresh(code: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
  )


def test_the_core_loads_without_data_checkpoint_or_config_libraries():
  out = _fresh(
    "import sys, jaxtrain.steps\n"
    "from jaxtrain import TrainState, train_step, eval_step, nnx_split\n"
    "heavy = ('tensorflow_datasets', 'grain', 'orbax', 'ml_collections', 'optuna', "
    "'jaxtrain.run', 'jaxtrain.data')\n"
    "print(sorted({m.split('.')[0] if not m.startswith('jaxtrain') else m "
    "for m in sys.modules if m.startswith(heavy)}))"
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]"


def test_help_is_real_and_loads_no_jax():
  code = (
    "import sys\nfrom jaxtrain.tools.cli import main\n"
    "status = [main([c, '--help']) for c in ('train', 'sweep')] + [main(['--help'])]\n"
    "print('STATUS', status, 'jax' in sys.modules)"
  )
  out = _fresh(code)
  assert out.returncode == 0, out.stderr
  assert "STATUS [0, 0, 0] False" in out.stdout
  for flag in (
    "--workdir",
    "--stop_at_step",
    "--allow_config_change",
    "--config.FIELD=VALUE",
    "--coordinator",
    "--space",
    "--trials",
    "--metric",
  ):
    assert flag in out.stdout, flag
  for command in ("train", "sweep", "report", "inspect", "rerun", "data", "predict", "export"):
    assert f"\n  {command} " in out.stdout, command


def test_the_entry_point_prints_help_and_exits_0():
  out = subprocess.run(
    [sys.executable, "-m", "jaxtrain.tools.cli", "train", "-h"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0 and "--workdir" in out.stdout, out.stderr


# One owner per artifact ------------------------------------------------------------------
def _orbax_importers(name: str, source: str) -> set[str]:
  """The orbax modules `name` imports, anywhere in its body."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("orbax")}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("orbax"):
      found.add(node.module)
  return found


def test_only_checkpoint_py_reads_or_writes_orbax_checkpoints():
  """Every checkpoint read goes through the verifying reader: no second one can appear.
  distributed.py only routes Orbax's barriers through JAX's coordination service."""
  users = {
    name: found for name, src in _modules().items() if (found := _orbax_importers(name, src))
  }
  assert set(users) == {"jaxtrain.run.checkpoint", "jaxtrain.run.distributed"}, users
  assert users["jaxtrain.run.distributed"] == {"orbax.checkpoint._src.multihost"}


# The names of a workdir's entries (run/workdir.py's docstring lists their owners).
WORKDIR_NAMES = {
  "checkpoints",
  "best_checkpoints",
  "corrupt_checkpoints",
  "abandoned",
  "metrics.jsonl",
  "metrics.abandoned.jsonl",
  "tensorboard",
  "manifest.json",
  "config.json",
  "init_from.json",
  "best.json",
  ".lock",
  "export",
}


def _names_a_workdir_file(text: str) -> bool:
  parts = [p for p in re.split(r"[/\\]", text) if p]
  return any(p in WORKDIR_NAMES or p.startswith(".lock.") for p in parts) and (
    len(parts) > 1 or text in WORKDIR_NAMES
  )


def test_only_workdir_py_spells_a_workdir_file_name():
  """String constants (f-strings' literal parts included) naming a workdir entry, or a path
  ending in one, appear in run/workdir.py alone. Messages that mention a file by name in
  prose ("has no config.json (...)") are not paths and are not counted."""
  wrong = []
  for name, source in _modules().items():
    if name == "jaxtrain.run.workdir":
      continue
    for node in ast.walk(ast.parse(source)):
      if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (
          node.value in WORKDIR_NAMES
          or (_names_a_workdir_file(node.value) and " " not in node.value)
        )
      ):
        wrong.append(f"{name}:{node.lineno}: {node.value!r}")
  # Not workdir entries: the CLI's command names, managed services' own folders, a data_dir's
  # lock, the tensorboard package, a Hugging Face folder's config.json (checkpoint.HF_CONFIG;
  # preprocess reads a tokenizer's special tokens from it).
  allowed = {
    "jaxtrain.tools.cli": {"'export'"},
    "jaxtrain.tools.managed": {"'checkpoints'", "'tensorboard'"},
    "jaxtrain.data.store": {"'.lock'"},
    "jaxtrain.run.loop": {"'tensorboard'"},
    "jaxtrain.run.checkpoint": {"'config.json'"},
    "jaxtrain.data.preprocess": {"'config.json'"},
  }
  wrong = [w for w in wrong if w.split(": ", 1)[1] not in allowed.get(w.split(":")[0], set())]
  assert not wrong, wrong


def test_only_files_py_renames_over_a_file():
  """Atomic writes have one implementation: nothing else calls os.replace or os.rename."""
  calls = []
  for name, source in _modules().items():
    for node in ast.walk(ast.parse(source)):
      if (
        isinstance(node, ast.Attribute)
        and node.attr in ("replace", "rename")
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
      ):
        calls.append(f"{name}:{node.lineno}: os.{node.attr}")
  assert calls and all(c.startswith("jaxtrain.files:") for c in calls), calls


def test_the_old_lock_module_still_works_and_names_its_replacement():
  out = _fresh(
    "import warnings\nwarnings.simplefilter('always')\n"
    "with warnings.catch_warnings(record=True) as caught:\n"
    "  from jaxtrain.run.workdir_lock import WorkdirLock\n"
    "from jaxtrain.run import workdir\n"
    "print(WorkdirLock is workdir.WorkdirLock, [str(w.message) for w in caught])"
  )
  assert out.returncode == 0, out.stderr
  assert (
    out.stdout.startswith("True [")
    and "import WorkdirLock, holder and lock_file from jaxtrain.run.workdir" in out.stdout
  )


# Lines over 100 columns that are verbatim text: a Markdown table's rows, a cron line.
LONG_VERBATIM = {"jaxtrain/tools/managed.py": 4, "experiments/retrain.py": 1}


def test_the_tree_is_formatted_and_lines_fit_in_100_columns():
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "ruff",
      "format",
      "--check",
      "jaxtrain",
      "tests",
      "experiments",
      "configs",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stdout + out.stderr
  long = {}
  for folder in ("jaxtrain", "tests", "experiments", "configs"):
    for path in sorted((ROOT / folder).rglob("*.py")):
      count = sum(len(line) > 100 for line in path.read_text().splitlines())
      if count:
        long[str(path.relative_to(ROOT))] = count
  assert long == LONG_VERBATIM

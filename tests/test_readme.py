"""The README's Python example runs as written and learns."""

import re

from conftest import ROOT


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_python_examples_run_and_fit():
  blocks = _python_blocks()
  assert len(blocks) == 3
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)
  state, metrics = namespace["state"], namespace["metrics"]
  assert int(state.step) == 500
  assert float(metrics["loss"]) < 0.05  # Huber loss of a fitted sum of sines
  assert float(metrics["count"]) == 64

  # The NNX example stands alone: batch norm, dropout, a loss reading params, seeds vmapped.
  nnx_namespace = {}
  exec(compile(blocks[1], "README.md", "exec"), nnx_namespace)
  evaluation = __import__("jax").jit(nnx_namespace["eval_step"])(
    nnx_namespace["state"], {"image": nnx_namespace["images"], "label": nnx_namespace["labels"]}
  )
  assert float(evaluation["accuracy"]) > 0.9
  assert nnx_namespace["metrics"]["loss"].shape == (4,)
  assert set(nnx_namespace["state"].model_state) == {"batch_stats"}

  # The Layout example continues from the first one, under pmap.
  exec(compile(blocks[2], "README.md", "exec"), namespace)
  state = namespace["state"]
  assert int(state.step) == 600 and state.params["Dense_1"]["kernel"].shape == (
    4,
    64,
  )  # no device axis
  assert float(namespace["layout"].fetch(namespace["metrics"])["loss"]) < 0.05

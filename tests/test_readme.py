"""The README's Python example runs as written and learns."""

import re

from conftest import ROOT


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_python_example_runs_and_fits():
  blocks = _python_blocks()
  assert len(blocks) == 2
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)
  state, metrics = namespace["state"], namespace["metrics"]
  assert int(state.step) == 500
  assert float(metrics["loss"]) < 0.05  # Huber loss of a fitted sum of sines
  assert float(metrics["count"]) == 64

  # The Layout example continues from the first one, under pmap.
  exec(compile(blocks[1], "README.md", "exec"), namespace)
  state = namespace["state"]
  assert int(state.step) == 600 and state.params["Dense_1"]["kernel"].shape == (4, 64)  # no device axis
  assert float(namespace["layout"].fetch(namespace["metrics"])["loss"]) < 0.05

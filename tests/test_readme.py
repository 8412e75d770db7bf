"""The README's Python example runs as written and learns."""

import re

from conftest import ROOT


def test_readme_python_example_runs_and_fits():
  text = (ROOT / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert len(blocks) == 1
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)
  state, metrics = namespace["state"], namespace["metrics"]
  assert int(state.step) == 500
  assert float(metrics["loss"]) < 0.05  # Huber loss of a fitted sum of sines
  assert float(metrics["count"]) == 64

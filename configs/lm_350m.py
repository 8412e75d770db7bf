"""A GPT-2-medium-shaped language model (350M params): configs/lm_124m.py with 24 layers of width
1024.

    jaxtrain train --config configs/lm_350m.py --workdir runs/lm_350m
(the same as `--config configs/lm_124m.py:350m`)
"""

import importlib.util
from pathlib import Path


def get_config():
  spec = importlib.util.spec_from_file_location("lm_124m", Path(__file__).with_name("lm_124m.py"))
  lm_124m = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(lm_124m)
  return lm_124m.get_config("350m")

"""experiments/finetune_memory.py runs and its numbers say what LoRA saves (tiny layout)."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))

import finetune_memory  # noqa: E402


def test_lora_trains_a_sliver_and_needs_less_state(capsys):
  full, lora = finetune_memory.main(["--layout", "tiny", "--length", "32"])
  assert full["trained_params"] == full["params"]
  assert lora["trained_params"] < 0.1 * lora["params"]  # rank-8 adapters on q, k, v, o
  assert lora["estimate_bytes"] < full["estimate_bytes"]  # no gradients or moments of the base
  assert full["peak_bytes"] > 0 and lora["peak_bytes"] > 0
  table = capsys.readouterr().out
  assert "| full | 155,968 | 155,968 |" in table and "full / LoRA: estimate" in table

"""experiments/lm_mfu.py keeps working (--quick: a tiny model, a few steps, no timing asserted)."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp

from conftest import ROOT
from jaxtrain.models.lm import TransformerLM

QUICK_MODEL = dict(num_layers=2, num_heads=4, embed_dim=64, vocab_size=256, max_length=32)


def test_quick_run_prints_the_table_and_writes_json(tmp_path, data_dir):
  out = tmp_path / "mfu.json"
  proc = subprocess.run(
    [sys.executable, "experiments/lm_mfu.py", "--quick", "--data_dir", data_dir, "--out", str(out)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result["benchmark"] == "lm_mfu" and result["timed_steps"] == 4
  # Both sides train the same model, so they count the same FLOPs per token.
  d, layers, vocab, length = 64, 2, 256, 32
  matmul_params = vocab * d + layers * (3 * d * d + d * d + 2 * 4 * d * d)
  assert result["model_flops_per_token"] == 6 * matmul_params + 12 * layers * length * d
  flax_params = jax.eval_shape(
    lambda: TransformerLM(**QUICK_MODEL).init(
      jax.random.PRNGKey(0), {"tokens": jnp.zeros((1, length + 1), jnp.int32)}
    )
  )
  assert result["params"] == sum(x.size for x in jax.tree.leaves(flax_params))  # the same model
  assert (
    result["jaxtrain_mfu"] > 0 and result["hand_mfu"] > 0 and result["matmul_flops_per_sec"] > 0
  )
  assert "ratio jaxtrain / hand:" in proc.stdout

"""Memory of full fine-tuning vs LoRA for a decoder with Llama 3.2 1B's layout (random bf16).

    python experiments/finetune_memory.py                 # the 1B layout (CPU: minutes)
    python experiments/finetune_memory.py --layout tiny   # what the test suite runs

Each mode runs in a process of its own: the model (weights in bfloat16, as a
pretrained folder gives them), one AdamW train_step of `--batch` sequences of
`--length` tokens through jaxtrain's own steps (LoRA: lora.py, rank 8 on q, k,
v and o; the base held fixed), and three numbers: the arithmetic estimate of
what training must hold (weights, gradients and Adam's two moments of what
trains; activations left out), what XLA's compiled step says it needs
(arguments + outputs + temporaries, aliased donations counted once), and the
peak measured: the device's peak bytes in use where the backend reports it (a
GPU), else the process's peak resident memory on the CPU (the model's
initialisation included). Prints a table and the full/LoRA ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAYOUTS = {  # Llama 3.2 1B's config.json; a tiny one for the tests
  "1b": dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    rope_theta=500000.0,
    tie_word_embeddings=True,
  ),
  "tiny": dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    tie_word_embeddings=True,
  ),
}
RANK = 8


def measure(layout: str, mode: str, batch: int, length: int) -> dict:
  """One mode's numbers, in this process."""
  import jax
  import jax.numpy as jnp
  import optax

  from jaxtrain import TrainState, lora, tasks
  from jaxtrain.models.llama import LlamaLM
  from jaxtrain.state import linen_apply_fn
  from jaxtrain.steps import train_step

  model = LlamaLM(**LAYOUTS[layout], dtype=jnp.bfloat16)
  tokens = jnp.zeros((batch, length), jnp.int32)
  data = {
    "tokens": tokens,
    "attention_mask": jnp.ones_like(tokens),
    "loss_mask": jnp.ones_like(tokens),
  }
  init = jax.jit(lambda k: jax.tree.map(lambda x: x.astype(jnp.bfloat16), model.init(k, data)))
  variables = init(jax.random.PRNGKey(0))
  apply_fn = linen_apply_fn(model, input_key=None)
  if mode == "lora":
    variables, apply_fn = lora.adapt(
      apply_fn,
      variables,
      pattern=r"self_attn/(q|k|v|o)_proj/kernel$",
      rank=RANK,
      alpha=16.0,
      rng=jax.random.PRNGKey(1),
    )
  tx = optax.adamw(1e-4)
  state = TrainState.create(
    apply_fn=apply_fn,
    variables=variables,
    tx=tx,
    loss_fn=tasks.causal_lm_loss,
    rng=jax.random.PRNGKey(2),
  )
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
  weights = nbytes(state.params) + nbytes(state.model_state)
  trained = nbytes(state.params)
  step = jax.jit(train_step, donate_argnums=0)
  compiled = step.lower(state, data).compile()
  analysis = compiled.memory_analysis()
  xla = (
    (
      analysis.argument_size_in_bytes
      + analysis.output_size_in_bytes
      + analysis.temp_size_in_bytes
      - analysis.alias_size_in_bytes
    )
    if analysis
    else None
  )
  state, metrics = compiled(state, data)
  jax.block_until_ready(metrics)
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return {
    "mode": mode,
    "params": sum(x.size for x in jax.tree.leaves(variables)),
    "trained_params": sum(x.size for x in jax.tree.leaves(state.params)),
    "estimate_bytes": weights + 3 * trained,  # + gradients + Adam's mu and nu, as what trains
    "xla_bytes": xla,
    "peak_bytes": peak
    if peak is not None
    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "peak_of": "device" if peak is not None else "host RSS",
    "device": jax.devices()[0].device_kind,
    "loss": float(metrics["loss"]),
  }


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layout", choices=sorted(LAYOUTS), default="1b")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--mode", choices=("full", "lora"), help=argparse.SUPPRESS)  # one process
  args = parser.parse_args(argv)
  if args.mode:
    print(json.dumps(measure(args.layout, args.mode, args.batch, args.length)))
    return []
  rows = []
  for mode in ("full", "lora"):
    out = subprocess.run(
      [
        sys.executable,
        __file__,
        "--layout",
        args.layout,
        "--batch",
        str(args.batch),
        "--length",
        str(args.length),
        "--mode",
        mode,
      ],
      capture_output=True,
      text=True,
      check=True,
    )
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  gb = lambda b: f"{b / 2**30:.2f}" if b is not None else "n/a"  # noqa: E731
  print(
    f"{args.layout} layout, batch {args.batch} x {args.length} tokens, bf16 weights, AdamW, "
    f"on {rows[0]['device']}"
  )
  print("| mode | params | trained | estimate GiB | XLA's step GiB | peak GiB (measured) |")
  print("| --- | ---: | ---: | ---: | ---: | ---: |")
  for r in rows:
    print(
      f"| {r['mode']} | {r['params']:,} | {r['trained_params']:,} | {gb(r['estimate_bytes'])} | "
      f"{gb(r['xla_bytes'])} | {gb(r['peak_bytes'])} ({r['peak_of']}) |"
    )
  full, lo = rows
  print(
    f"full / LoRA: estimate {full['estimate_bytes'] / lo['estimate_bytes']:.2f}x, "
    f"XLA {full['xla_bytes'] / lo['xla_bytes']:.2f}x, "
    f"measured peak {full['peak_bytes'] / lo['peak_bytes']:.2f}x"
  )
  return rows


if __name__ == "__main__":
  main()

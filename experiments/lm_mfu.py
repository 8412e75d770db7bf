"""Model FLOP utilisation of the language models: jaxtrain's loop vs. a hand-written plain-JAX step.

One process measures, side by side:
  1. the device's bfloat16 matmul rate (a chain of square matmuls in one jit),
  2. jaxtrain training configs/lm_124m.py (or :350m) through its whole loop
     (`train_and_evaluate`: the TFDS synthetic tokens, prefetch, guards),
  3. the same model written as plain JAX functions (no Flax, no loop
     machinery): `jax.jit(step, donate_argnums=0)` over batches in memory,
     the same AdamW, bf16 compute with f32 master weights, the same attention.
MFU = model FLOPs per token (lm.train_flops_per_token: 6N + 12*L*T*d, remat
not counted) x tokens/s / the measured matmul rate. Both sides time the steps
after a warm-up (compilation excluded).

    python experiments/lm_mfu.py --model 124m [--steps 100] [--attention cudnn] \
        [--remat dots_no_batch]
    python experiments/lm_mfu.py --model 350m --batch_size 16
    python experiments/lm_mfu.py --quick   # a tiny model, a few steps (the suite; no timings)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bench import load_config as load_config_file, timed_run  # noqa: E402
from jaxtrain.data import input_pipeline  # noqa: E402
from jaxtrain.data import datasets
from jaxtrain.models.lm import train_flops_per_token  # noqa: E402
from jaxtrain.optim import make_optimizer  # noqa: E402

QUICK_MODEL = dict(num_layers=2, num_heads=4, embed_dim=64, vocab_size=256, max_length=32)


def load_config(args):
  c = load_config_file("lm_124m", "124m" if args.quick else args.model)
  if args.quick:
    c.model.update(QUICK_MODEL)
    c.batch_size = 8
  m = c.model
  c.model.update(attention=args.attention, remat=args.remat)
  c.batch_size = args.batch_size or c.batch_size
  c.compute_dtype = args.compute_dtype
  c.num_train_steps, c.log_every_steps = args.warmup + args.steps, args.warmup
  c.checkpoint_every_steps = c.eval_every_steps = 10 * c.num_train_steps  # the final save only
  c.dataset.update(eval_split="", data_dir=args.data_dir)
  c.dataset.builder_kwargs.update(
    vocab_size=m.vocab_size,
    seq_len=m.max_length,
    num_examples=max(4 * c.batch_size, 64 if args.quick else 1024),
  )
  return c


def matmul_rate(n: int, chain: int = 8, repeats: int = 5) -> float:
  """FLOP/s of bf16 [n, n] x [n, n] matmuls (best of `repeats`, `chain` per dispatch)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16) / np.sqrt(n)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)

  @jax.jit
  def run(x):
    for _ in range(chain):
      x = jnp.dot(x, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16) * 0.5
    return x

  run(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    run(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n**3 * chain / best


# The hand-written model: GPT-2's shape as plain functions of a params dict.


def init_params(key, *, vocab_size, max_length, num_layers, embed_dim, mlp_ratio, **_):
  keys = iter(jax.random.split(key, 4 + 4 * num_layers))
  normal = lambda *shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)
  d = embed_dim
  layer = lambda: {
    "ln1": jnp.ones(d),
    "ln1_b": jnp.zeros(d),
    "qkv": normal(d, 3 * d),
    "qkv_b": jnp.zeros(3 * d),
    "out": normal(d, d),
    "out_b": jnp.zeros(d),
    "ln2": jnp.ones(d),
    "ln2_b": jnp.zeros(d),
    "up": normal(d, mlp_ratio * d),
    "up_b": jnp.zeros(mlp_ratio * d),
    "down": normal(mlp_ratio * d, d),
    "down_b": jnp.zeros(d),
  }
  return {
    "token_embed": normal(vocab_size, d),
    "position_embed": normal(max_length, d),
    "layers": [layer() for _ in range(num_layers)],
    "ln_f": jnp.ones(d),
    "ln_f_b": jnp.zeros(d),
  }


def _layer_norm(x, scale, bias):
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(((x32 - mean) ** 2).mean(-1, keepdims=True) + 1e-6)
  return (y * scale + bias).astype(x.dtype)


def hand_loss(params, tokens, *, num_heads, dtype, attention):
  p = jax.tree.map(lambda w: w.astype(dtype), params)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  b, t = inputs.shape
  x = p["token_embed"][inputs] + p["position_embed"][:t]
  for layer in p["layers"]:
    h = _layer_norm(x, layer["ln1"], layer["ln1_b"]) @ layer["qkv"] + layer["qkv_b"]
    q, k, v = jnp.split(h.reshape(b, t, 3 * num_heads, -1), 3, axis=2)
    a = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=attention or None)
    x = x + a.reshape(b, t, -1) @ layer["out"] + layer["out_b"]
    h = jax.nn.gelu(_layer_norm(x, layer["ln2"], layer["ln2_b"]) @ layer["up"] + layer["up_b"])
    x = x + h @ layer["down"] + layer["down_b"]
  logits = (_layer_norm(x, p["ln_f"], p["ln_f_b"]) @ p["token_embed"].T).astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def hand_steps_per_sec(config, tokens: np.ndarray, warmup: int, steps: int) -> float:
  m = config.model
  tx, _ = make_optimizer(config.optimizer, config.num_train_steps)
  params = init_params(jax.random.PRNGKey(0), **m)
  loss = lambda p, batch: hand_loss(
    p, batch, num_heads=m.num_heads, attention=m.attention, dtype=jnp.dtype(config.compute_dtype)
  )

  def step(state, batch):
    params, opt_state = state
    value, grads = jax.value_and_grad(loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), value

  step = jax.jit(step, donate_argnums=0)
  state, per_epoch = (params, tx.init(params)), len(tokens) // config.batch_size
  batches = [
    jax.device_put(tokens[i * config.batch_size : (i + 1) * config.batch_size])
    for i in range(per_epoch)
  ]
  for i in range(warmup):
    state, value = step(state, batches[i % per_epoch])
  value.block_until_ready()
  start = time.perf_counter()
  for i in range(warmup, warmup + steps):
    state, value = step(state, batches[i % per_epoch])
  value.block_until_ready()
  return steps / (time.perf_counter() - start)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("124m", "350m"), default="124m")
  parser.add_argument("--steps", type=int, default=100, help="timed steps")
  parser.add_argument("--warmup", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
  parser.add_argument(
    "--attention",
    default="best",
    help="best (cudnn on a GPU, else xla), '' (JAX chooses), xla or cudnn",
  )
  parser.add_argument("--remat", default="", help="'', full, dots, dots_no_batch")
  parser.add_argument("--compute_dtype", default="bfloat16")
  parser.add_argument("--matmul_size", type=int, default=8192)
  parser.add_argument("--quick", action="store_true", help="a tiny model, a few steps")
  parser.add_argument(
    "--data_dir", default=os.path.join(tempfile.gettempdir(), "jaxtrain-bench-tfds")
  )
  parser.add_argument("--out", default="lm_mfu.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.warmup, args.matmul_size = 4, 2, 256
  if args.attention == "best":
    args.attention = "cudnn" if jax.default_backend() == "gpu" else "xla"
  config = load_config(args)
  m = config.model
  rate = matmul_rate(args.matmul_size)
  with tempfile.TemporaryDirectory() as tmp:
    ours = timed_run(config, os.path.join(tmp, "run"), args.warmup)["steps_per_sec"]
  source = datasets.get_builder(config.dataset).as_data_source(split="train")
  tokens = input_pipeline.InMemorySource(source).arrays["tokens"]
  theirs = hand_steps_per_sec(config, tokens, args.warmup, args.steps)
  params = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), **m))
  flops = train_flops_per_token(
    params, num_layers=m.num_layers, embed_dim=m.embed_dim, seq_len=m.max_length
  )
  tokens_per_step = config.batch_size * m.max_length
  mfu = lambda steps_per_sec: flops * tokens_per_step * steps_per_sec / rate
  result = {
    "benchmark": "lm_mfu",
    "device": str(jax.devices()[0].device_kind),
    "model": args.model if not args.quick else "quick",
    "params": int(sum(x.size for x in jax.tree.leaves(params))),
    "batch_size": config.batch_size,
    "seq_len": m.max_length,
    "compute_dtype": config.compute_dtype,
    "attention": m.attention or "auto",
    "remat": m.remat or "none",
    "timed_steps": args.steps,
    "matmul_flops_per_sec": rate,
    "model_flops_per_token": flops,
    "jaxtrain_steps_per_sec": ours,
    "hand_steps_per_sec": theirs,
    "jaxtrain_mfu": mfu(ours),
    "hand_mfu": mfu(theirs),
    "ratio": ours / theirs,
    "date": time.strftime("%Y-%m-%d"),
  }
  print(
    f"device {result['device']}: bf16 matmul {rate / 1e12:.3g} TFLOP/s; model {result['model']} "
    f"({result['params'] / 1e6:.1f}M params), batch {config.batch_size} x {m.max_length} tokens"
  )
  print(f"{'step':<12} {'steps/s':>9} {'tokens/s':>11} {'MFU':>7}")
  for name, v in (("jaxtrain", ours), ("hand jax", theirs)):
    print(f"{name:<12} {v:>9.2f} {v * tokens_per_step:>11.0f} {mfu(v):>7.1%}")
  print(f"ratio jaxtrain / hand: {result['ratio']:.3f}  (goal: jaxtrain MFU >= 50%)")
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()

"""A GPT-2-small-shaped language model (124M params) on synthetic tokens: the speed benchmark.

    jaxtrain train --config configs/lm_124m.py --workdir runs/lm_124m

bfloat16 compute with float32 master weights, causal attention through
`jax.nn.dot_product_attention` (on a GPU set `--config.model.attention=cudnn`
for cuDNN's fused flash attention; "" leaves the choice to JAX), AdamW with warm-up and
cosine decay. The tokens are a seeded noisy Markov chain (datasets.py), so
the loss falls from ln(50304) = 10.8 towards its floor of about 3.3 nats.
`--config.model.remat=dots_no_batch` trades compute for activation memory.
experiments/lm_mfu.py measures its model FLOP utilisation.
"""

from jaxtrain.config import base_config


def get_config(arg: str = "124m"):
  shapes = {
    "124m": dict(num_layers=12, num_heads=12, embed_dim=768),
    "350m": dict(num_layers=24, num_heads=16, embed_dim=1024),
  }
  config = base_config()
  config.task = "language_modeling"
  config.batch_size = 32
  config.num_train_steps = 2000
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 1000
  config.compute_dtype = "bfloat16"
  config.optimizer.update(
    name="adamw",
    learning_rate=6e-4,
    b1=0.9,
    b2=0.95,
    weight_decay=0.1,
    grad_clip_norm=1.0,
    schedule="warmup_cosine",
    warmup_steps=100,
    end_lr_factor=0.1,
  )
  config.dataset.update(
    name="synthetic_tokens", train_split="train", eval_split="test", test_split=""
  )
  config.dataset.builder_kwargs.update(vocab_size=50304, seq_len=1024, num_examples=8192)
  config.model = dict(
    name="transformer_lm",
    vocab_size=50304,
    max_length=1024,
    mlp_ratio=4,
    dropout_rate=0.0,
    attention="",
    remat="",
    **shapes[arg],
  )
  return config

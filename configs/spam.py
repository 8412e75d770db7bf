"""Spam detection from messages: a bag-of-embeddings text classifier.

    jaxtrain data import --config configs/spam.py
    jaxtrain train --config configs/spam.py --workdir runs/spam
    jaxtrain train --config configs/spam.py:transformer --workdir runs/spam_transformer

The vocabulary is built from the training split and saved with the run;
classes are weighted for the imbalance (25% spam); training stops early when
validation F1 stops improving, keeping the two best checkpoints.
"""

from jaxtrain.config import base_config, sample_file


def get_config(model: str = "bag"):
  """`model`: "bag" (bag of embeddings) or "transformer" (a small Transformer encoder)."""
  config = base_config()
  config.task = "classification"
  config.data_import.update(sources=(sample_file("spam.csv"),), name="spam", label="label",
                            split="fraction", fractions="0.8,0.1,0.1", seed=0)
  config.dataset.update(name="spam", train_split="train", eval_split="validation", test_split="test")
  config.preprocess.update(tokenizer="vocab", vocab_size=5000, max_length=32, class_weights="balanced")
  config.model = dict(name="bag_of_embeddings", embed_dim=32, hidden=32)
  if model == "transformer":
    config.model = dict(name="transformer_encoder", width=32, depth=1, num_heads=2, mlp_dim=64,
                        dropout_rate=0.1)
  elif model != "bag":
    raise ValueError(f"configs/spam.py:{model}: the model is bag or transformer")
  config.batch_size = 64
  config.num_train_steps = 600
  config.log_every_steps = 50
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 100
  config.optimizer.update(name="adamw", learning_rate=3e-3, weight_decay=1e-4, schedule="warmup_cosine",
                          warmup_steps=30)
  config.early_stopping.update(metric="f1", mode="max", patience=4, min_delta=1e-3)
  config.keep_best_checkpoints = 2
  return config

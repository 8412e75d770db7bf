"""Spam detection from messages: a bag-of-embeddings text classifier.

    jaxtrain data import --config configs/spam.py
    jaxtrain train --config configs/spam.py --workdir runs/spam
    jaxtrain train --config configs/spam.py:transformer --workdir runs/spam_transformer

Messages are bags of hashed word and character n-grams (the vocabulary-free
features a TF-IDF + linear SVM baseline uses; the transformer reads words);
classes are weighted for the imbalance (25% spam); training stops early when
validation F1 stops improving, keeping the two best checkpoints.
"""

from jaxtrain.config import base_config, sample_file


def get_config(model: str = "bag"):
  """`model`: "bag" (bag of embeddings) or "transformer" (a small Transformer encoder)."""
  config = base_config()
  config.task = "classification"
  config.data_import.update(
    sources=(sample_file("spam.csv"),),
    name="spam",
    label="label",
    split="fraction",
    fractions="0.8,0.1,0.1",
    seed=0,
  )
  config.dataset.update(
    name="spam", train_split="train", eval_split="validation", test_split="test"
  )
  # Hashed word 1-2-grams and character 2-5-grams, symbols (£, !) kept: what a linear
  # text classifier sees; up to 512 per message.
  config.preprocess.update(
    tokenizer="ngrams",
    word_ngrams=2,
    char_ngrams="2,5",
    num_buckets=1 << 17,
    max_length=512,
    class_weights="balanced",
  )
  config.model = dict(
    name="bag_of_embeddings",
    embed_dim=64,  # each n-gram's vector; the text is their mean
    hidden=64,  # one hidden layer on the mean
    dropout_rate=0.0,
  )  # after the hidden layer
  if model == "transformer":
    config.preprocess.update(tokenizer="vocab", vocab_size=5000, max_length=32)  # words, in order
    config.model = dict(
      name="transformer_encoder",
      width=32,  # the model width
      depth=1,  # encoder blocks
      num_heads=2,
      mlp_dim=64,  # each block's MLP width
      dropout_rate=0.1,
      remat="",
    )  # rematerialise blocks: "" | full | dots | dots_no_batch
  elif model != "bag":
    raise ValueError(f"configs/spam.py:{model}: the model is bag or transformer")
  config.batch_size = 64
  config.num_train_steps = -1  # a budget in epochs: 5,000 messages or 500,000 alike
  config.num_epochs = 20  # early stopping (patience: 4 epochs) ends it sooner
  config.log_every_steps = 50
  config.eval_every_steps = -1  # once per epoch
  config.checkpoint_every_steps = -1
  config.optimizer.update(
    name="adamw", learning_rate=3e-3, weight_decay=1e-4, schedule="warmup_cosine", warmup_steps=30
  )
  config.early_stopping.update(metric="f1", mode="max", patience=4, min_delta=1e-3)
  config.keep_best_checkpoints = 2
  return config

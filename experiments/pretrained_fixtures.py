"""Writes tiny random pretrained folders, and the reference library's outputs on them.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 transformers==5.25.0 \
        tokenizers==0.23.3 safetensors==0.8.0
    /tmp/ref/bin/python experiments/pretrained_fixtures.py tests/fixtures/pretrained

Each family gets a Hugging Face folder as `save_pretrained` writes it (config.json,
safetensors: the BERT one sharded, with its index; tokenizer.json), `reference.npz`
(inputs, hidden states, logits from transformers on the CPU in float32) and nothing else.
tests/test_pretrained.py loads the folders into jaxtrain's models and compares: CI never
needs PyTorch. Weights are drawn with initializer_range 0.2 (not 0.02) so attention is far
from uniform and a wrong layout cannot hide under the layer norms.

`--check DIR FAMILY OUT` loads a folder jaxtrain exported (`jaxtrain export --format
safetensors`) into transformers and writes its logits on the reference inputs to OUT (npz):
the way back out, checked by the reference library (tests run it when PyTorch is installed).
"""

from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers

HERE = os.path.dirname(os.path.abspath(__file__))
SPAM = os.path.join(HERE, "..", "jaxtrain", "sample_data", "spam.csv")


def texts() -> list[str]:
  with open(SPAM, newline="") as f:
    return [row["text"] for row in csv.DictReader(f)]


def wordpiece_tokenizer(vocab_size: int) -> Tokenizer:
  """BERT's tokenizer pipeline (lower case, WordPiece, [CLS] ... [SEP]), trained on spam.csv."""
  tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  tok.train_from_iterator(
    texts(), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special)
  )
  cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  tok.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]",
    pair="[CLS] $A [SEP] $B:1 [SEP]:1",
    special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
  )
  tok.decoder = decoders.WordPiece()
  return tok


def bpe_tokenizer(vocab_size: int) -> Tokenizer:
  """Llama's kind of tokenizer (byte-level BPE, <s> first), trained on spam.csv."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  special = ["<unk>", "<s>", "</s>"]
  tok.train_from_iterator(
    texts(),
    trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=special,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ),
  )
  bos = tok.token_to_id("<s>")
  tok.post_processor = processors.TemplateProcessing(
    single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
  )
  return tok


def save(model, tok, folder: str, shard: str | None = None, **tokenizer_config) -> None:
  os.makedirs(folder, exist_ok=True)
  model.save_pretrained(
    folder, safe_serialization=True, **({"max_shard_size": shard} if shard else {})
  )
  if tok is not None:
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
      json.dump(tokenizer_config, f, indent=1)


def token_inputs(tok: Tokenizer, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  sample = ["Urgent! You won a credit voucher, call now", "see you at lunch"]
  ids = np.full((len(sample), length), pad_id, np.int64)
  mask = np.zeros((len(sample), length), np.int64)
  for row, enc in enumerate(tok.encode_batch(sample)):
    n = min(len(enc.ids), length)
    ids[row, :n], mask[row, :n] = enc.ids[:n], 1
  return ids, mask


def bert(root: str) -> None:
  torch.manual_seed(0)
  tok = wordpiece_tokenizer(400)
  config = transformers.BertConfig(
    vocab_size=tok.get_vocab_size(),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
    num_labels=3,
    initializer_range=0.2,
    attn_implementation="eager",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
  )
  model = transformers.BertForSequenceClassification(config).eval()
  folder = os.path.join(root, "bert")
  save(model, tok, folder, shard="40KB", do_lower_case=True, pad_token="[PAD]", cls_token="[CLS]")
  ids, mask = token_inputs(tok, 16, 0)
  with torch.no_grad():
    out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
  np.savez(
    os.path.join(folder, "reference.npz"),
    input_ids=ids,
    attention_mask=mask,
    last_hidden_state=out.hidden_states[-1].numpy(),
    logits=out.logits.numpy(),
  )


def llama(root: str, family: str = "llama") -> None:
  torch.manual_seed(1)
  tok = bpe_tokenizer(300)
  common = dict(
    vocab_size=tok.get_vocab_size(),
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    initializer_range=0.2,
    tie_word_embeddings=False,
    bos_token_id=tok.token_to_id("<s>"),
    attn_implementation="eager",
    eos_token_id=tok.token_to_id("</s>"),
    pad_token_id=tok.token_to_id("</s>"),
  )
  if family == "qwen2":  # Llama's layout with biases on q, k and v, tied embeddings
    config = transformers.Qwen2Config(**{**common, "tie_word_embeddings": True}, rope_theta=1e6)
    model = transformers.Qwen2ForCausalLM(config).eval()
  else:
    config = transformers.LlamaConfig(**common, rope_theta=10000.0)
    model = transformers.LlamaForCausalLM(config).eval()
  folder = os.path.join(root, family)
  save(model, tok, folder, bos_token="<s>", eos_token="</s>", pad_token="</s>")
  ids, mask = token_inputs(tok, 16, tok.token_to_id("</s>"))
  with torch.no_grad():
    out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
  np.savez(
    os.path.join(folder, "reference.npz"),
    input_ids=ids,
    attention_mask=mask,
    last_hidden_state=out.hidden_states[-1].numpy(),
    logits=out.logits.numpy(),
  )


def vit(root: str) -> None:
  torch.manual_seed(2)
  config = transformers.ViTConfig(
    image_size=16,
    patch_size=4,
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    num_labels=3,
    initializer_range=0.2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
  )
  model = transformers.ViTForImageClassification(config).eval()
  folder = os.path.join(root, "vit")
  save(model, None, folder)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
  with torch.no_grad():
    out = model(torch.tensor(images), output_hidden_states=True)
  np.savez(
    os.path.join(folder, "reference.npz"),
    pixel_values=images,
    last_hidden_state=out.hidden_states[-1].numpy(),
    logits=out.logits.numpy(),
  )


def check(folder: str, family: str, out: str) -> None:
  """Logits of an exported folder in transformers, on the family's reference inputs."""
  cls = {
    "bert": transformers.BertForSequenceClassification,
    "llama": transformers.LlamaForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM,
    "vit": transformers.ViTForImageClassification,
  }[family]
  model = cls.from_pretrained(folder).eval()
  reference = (
    np.load(os.path.join(folder, "reference.npz"))
    if os.path.exists(os.path.join(folder, "reference.npz"))
    else None
  )
  inputs = dict(np.load(sys.argv[5])) if len(sys.argv) > 5 else dict(reference)
  with torch.no_grad():
    if family == "vit":
      logits = model(torch.tensor(inputs["pixel_values"])).logits
    else:
      logits = model(
        torch.tensor(inputs["input_ids"]), attention_mask=torch.tensor(inputs["attention_mask"])
      ).logits
  np.savez(out, logits=logits.numpy())


if __name__ == "__main__":
  if sys.argv[1] == "--check":
    check(sys.argv[2], sys.argv[3], sys.argv[4])
    sys.exit(0)
  root = sys.argv[1]
  print(f"transformers {transformers.__version__}, torch {torch.__version__}")
  bert(root)
  llama(root, "llama")
  llama(root, "qwen2")
  vit(root)
  for family in sorted(os.listdir(root)):
    names = sorted(os.listdir(os.path.join(root, family)))
    size = sum(os.path.getsize(os.path.join(root, family, n)) for n in names)
    print(f"{family}: {size / 1024:.0f} KiB: {', '.join(names)}")

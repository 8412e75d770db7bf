"""Built-in models: Flax Linen modules, named in configs the way a user's own are.

image.py   MLP, CNN (Flax's MNIST example with batch norm), small ResNet
tables.py  tabular MLP, bag of embeddings, Transformer encoder, matrix
           factorization, two towers (they read the whole preprocessed batch)
lm.py      decoder-only Transformer LM (GPT-2 shape); model FLOPs per token
remat.py   rematerialisation policies for blocks

Pretrained layouts (`model.pretrained=DIR`, a Hugging Face folder):
bert.py    BERT encoder + classifier (BertForSequenceClassification)
llama.py   Llama-family decoder (Llama, Qwen2, Mistral): causal LM, classifier
vit.py     Vision Transformer + classifier (ViTForImageClassification)
hf.py      the rule from Hugging Face tensor names and layouts to Flax params, and back
"""

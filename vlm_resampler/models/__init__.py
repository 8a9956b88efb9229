"""Backbones (vision towers, language models, tokenizers) and the model parts built on them."""

"""Tokenizers: loading Hugging Face `tokenizer.json` folders, and training a fresh one for `init=random`."""

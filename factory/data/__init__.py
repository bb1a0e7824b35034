"""Training data: file readers with file-and-line errors, Hugging Face `datasets` sources, the
encoded-data cache, streaming, and the Lightning DataModule over a head."""

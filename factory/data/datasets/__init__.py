"""The small datasets shipped with factory, one folder per head; `generate.py` writes them."""

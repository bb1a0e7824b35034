"""The bottom of the package: the types and errors that several layers share, and nothing that imports
another part of factory. An upper layer imports them; a lower one never reaches up for them.

- `errors`: every error class the library raises for a user's mistake.
- `task`: what a head is to each layer (its data, training and prediction parts) and the values that
  travel between them (`DataSplits`, `Encoded`, `BatchPosition`, `Option`).
- `recipe`: what an architecture says about the tokenizer to train for it (`TokenizerRecipe`).
"""

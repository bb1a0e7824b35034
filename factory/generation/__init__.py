"""Text generation, below the heads that use it and the models that may offer it: `decode` (greedy,
sampling and beam search with the KV cache) and `options` (the `infer.py` options that choose tokens,
and the rule that turns them into `decode`'s arguments). Imports nothing of factory but the contract."""

"""`trainer.compile=true` on this machine: a compiled training step against eager and against transformers.

    python bench/compile.py                  # bert seqcls and gpt2 causal_lm at 8x128, 5 rounds
    python bench/compile.py --quick          # 2 rounds
    python bench/compile.py --layers 2       # shallower models: a faster cold compile

The models, batches and step are bench/train_step.py's (same weights on all sides, zero_grad, forward
with labels, backward, AdamW). `compiled` is our model after `nn.Module.compile()` (what
`trainer.compile=true` runs); its first step, which compiles, is timed alone as `cold`. Rounds then
alternate between the three sides; `compiled/eager` and `compiled/hf` are medians of per-round speed
ratios (above 1: compiled is faster). `loss diff` is the loss of one eval-mode forward (no dropout),
compiled against eager.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import _common as common
import torch
from train_step import HEADS, batch_for, save_hf, step_fn


def measure(model_type: str, runs: int, layers: int | None, quiet_wait: float) -> list[str]:
    import transformers

    import factory

    b, t = 8, 128
    auto = {"bert": "AutoModelForSequenceClassification", "gpt2": "AutoModelForCausalLM"}[model_type]
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(model_type, Path(tmp))
        extra = {"num_hidden_layers": layers} if layers else {}
        eager = getattr(factory, auto).from_pretrained(tmp, **extra).train()
        hf = getattr(transformers, auto).from_pretrained(tmp, dtype=torch.float32, **extra).train()
    compiled = copy.deepcopy(eager)
    compiled.compile()
    batch = batch_for(model_type, eager.config.vocab_size, b, t)
    with torch.no_grad():  # dropout off: compiled and eager draw their masks differently
        compiled.eval(), eager.eval()
        diff = abs(float(compiled(**batch).loss) - float(eager(**batch).loss))
        compiled.train(), eager.train()
    compiled_step = step_fn(compiled, batch)
    start = time.perf_counter()
    compiled_step()  # compiles the training graphs (the eval forward above compiled another)
    cold = time.perf_counter() - start
    sides = {"compiled": compiled_step, "eager": step_fn(eager, batch), "hf": step_fn(hf, batch)}
    times = common.alternate(sides, runs, warmup=1, quiet_wait=quiet_wait)
    tok = {k: b * t / common.median(v) for k, v in times.items()}
    vs = {k: common.median([o / c for c, o in zip(times["compiled"], times[k])]) for k in ("eager", "hf")}
    depth = layers or eager.config.num_hidden_layers
    return [
        f"{model_type} {HEADS[model_type]} ({depth} layers)",
        f"{b}x{t}",
        f"{tok['compiled']:.0f}",
        f"{tok['eager']:.0f}",
        f"{tok['hf']:.0f}",
        f"{vs['eager']:.2f}",
        f"{vs['hf']:.2f}",
        f"{cold:.0f} s",
        f"{diff:.1e}",
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="bert,gpt2")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--layers", type=int, default=None, help="override the depth (default: standard)")
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--threads", type=int, default=2)
    common.add_quiet_wait(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = 2 if args.quick else args.runs
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    with common.OtherLoad() as load:
        for model_type in args.models.split(","):
            rows.append(measure(model_type, runs, args.layers, args.quiet_wait))
    headers = ["model", "batch", "compiled tok/s", "eager tok/s", "hf tok/s", "compiled/eager", "compiled/hf", "cold", "loss diff"]  # fmt: skip
    print(common.table(headers, rows))
    print(load.note())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

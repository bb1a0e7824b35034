"""A full training step (forward, backward, AdamW) of our models against transformers', same weights.

    python bench/train_step.py                    # bert, roberta, distilbert seqcls; gpt2, llama causal_lm; 8x128
    python bench/train_step.py --quick            # 2 rounds
    python bench/train_step.py --models gpt2 --runs 8
    nice -n -10 python bench/train_step.py --quiet-wait 30   # on a shared machine

For each case a randomly initialised transformers model of the standard size with that head
(BertForSequenceClassification at bert-base size, GPT2LMHeadModel at gpt2 size, RoBERTa and
DistilBERT seqcls at roberta-base and distilbert-base size, LlamaForCausalLM at SmolLM-135M's size) is saved with
`save_pretrained`; both sides load that folder and train in the same plain loop: `zero_grad`, forward
with labels (the loss inside the model), `backward`, `AdamW.step` (torch's default foreach
implementation), in training mode with the checkpoint's dropout. Inputs are 8 rows of 128 random tokens
with an all-ones mask. Rounds alternate between the sides after one warm-up step each; `tok/s` is
1024 tokens over the median step time, `ours/hf` the median of the per-round speed ratios (above 1:
ours is faster). `peak` is the fraction of this process's best fp32 matmul rate that the step's FLOPs
reach, the FLOPs counted by torch's FlopCounterMode on our step (forward and backward).

`--keep-freed-memory` first applies what `train.py` does to the process (glibc keeps freed memory for
reuse, `factory.training.run.keep_freed_memory`), which speeds both sides up alike: the tokens per second
`train.py` sees.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import _common as common
import torch

GOALS = {
    "bert": 1.0,
    "gpt2": 1.15,
    "roberta": 1.0,
    "distilbert": 1.0,
    "llama": 1.0,
}  # ours/hf tokens per second, at least
HEADS = {
    "bert": "seqcls",
    "gpt2": "causal_lm",
    "roberta": "seqcls",
    "distilbert": "seqcls",
    "llama": "causal_lm",
}
AUTO = {"seqcls": "AutoModelForSequenceClassification", "causal_lm": "AutoModelForCausalLM"}


def batch_for(model_type: str, vocab: int, b: int, t: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones(b, t, dtype=torch.long)}
    out["labels"] = torch.randint(0, 2, (b,), generator=g) if HEADS[model_type] == "seqcls" else ids.clone()
    return out


def save_hf(model_type: str, folder: Path) -> None:
    import transformers

    torch.manual_seed(0)
    config = common.hf_config(model_type)
    if HEADS[model_type] == "seqcls":
        config.num_labels = 2
    getattr(transformers, AUTO[HEADS[model_type]]).from_config(config).save_pretrained(folder)


def step_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def step_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure(model_type: str, runs: int, peak: float, quiet_wait: float) -> list[str]:
    import transformers

    import factory

    b, t = 8, 128
    auto = AUTO[HEADS[model_type]]
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(model_type, Path(tmp))
        ours = getattr(factory, auto).from_pretrained(tmp).train()
        hf = getattr(transformers, auto).from_pretrained(tmp, dtype=torch.float32).train()
    batch = batch_for(model_type, ours.config.vocab_size, b, t)
    with torch.no_grad():  # same weights, same function: the losses agree in eval mode
        ours.eval(), hf.eval()
        diff = abs(float(ours(**batch).loss) - float(hf(**batch).loss))
        ours.train(), hf.train()
    flops = step_flops(ours, batch)
    sides = {"ours": step_fn(ours, batch), "hf": step_fn(hf, batch)}
    times = common.alternate(sides, runs, warmup=1, quiet_wait=quiet_wait)
    tok = {k: b * t / common.median(v) for k, v in times.items()}
    ratio = common.median([h / o for o, h in zip(times["ours"], times["hf"])])
    goal = GOALS[model_type]
    return [
        f"{model_type} {HEADS[model_type]}",
        f"{b}x{t}",
        f"{tok['ours']:.0f}",
        f"{tok['hf']:.0f}",
        f"{ratio:.2f}",
        f">= {goal:.2f}",
        "ok" if ratio >= goal else "MISSED",
        f"{flops * tok['ours'] / (b * t) / 1e9 / peak:.0%}",
        f"{flops * tok['hf'] / (b * t) / 1e9 / peak:.0%}",
        f"{diff:.1e}",
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="bert,gpt2,roberta,distilbert,llama")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep-freed-memory", action="store_true", help="as train.py: reuse freed memory")
    common.add_quiet_wait(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from factory.training.run import keep_freed_memory

        print(f"keep_freed_memory: {keep_freed_memory()}")
    runs = 2 if args.quick else args.runs
    peak = common.matmul_peak_gflops()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 matmul peak {peak:.0f} GFLOP/s"
    )
    rows = []
    with common.OtherLoad() as load:
        for model_type in args.models.split(","):
            rows.append(measure(model_type, runs, peak, args.quiet_wait))
    headers = [
        "model",
        "shape",
        "ours tok/s",
        "hf tok/s",
        "ours/hf",
        "goal",
        "",
        "ours peak",
        "hf peak",
        "loss diff",
    ]
    print(common.table(headers, rows))
    print(load.note())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

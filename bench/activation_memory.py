"""Peak memory of a training step with and without activation checkpointing, ours and transformers'.

    python bench/activation_memory.py                  # bert-base, 8 x 512, fp32
    python bench/activation_memory.py --batch 4 --length 256

Each variant runs in a fresh process: build a bert-base-sized BertForSequenceClassification (random,
seeded), note the resident memory, run one forward and backward pass, and report the peak resident
memory above that baseline (weights were already there; gradients and activations are what the step
adds) and the bytes autograd kept for the backward pass. Ours turns checkpointing on with
`factory.training.lightning.performance.enable_activation_checkpointing` (what `trainer.activation_checkpointing=
true` runs), transformers with `gradient_checkpointing_enable()`. `ckpt/plain` is the peak with
checkpointing over the peak without (goal: at most 0.5). The largest batch that fits in 8 GB is
extrapolated from the step's peak per row (less the gradients), with weights, gradients and AdamW's two
moments (16 bytes per parameter) counted.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

GOAL = 0.5
BUDGET = 8 * 1024**3


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(side: str, checkpointing: bool, batch: int, length: int) -> dict:
    """One variant, in this process (run it in a fresh one: the peak is a high-water mark)."""
    import torch

    torch.manual_seed(0)
    if side == "ours":
        from factory.build import build_model
        from factory.training.lightning.performance import enable_activation_checkpointing

        arch = dict(model_type="bert", max_position_embeddings=max(512, length))
        _, model = build_model(arch, "seqcls", seed=0)
        if checkpointing:
            enable_activation_checkpointing(model)
    else:
        import transformers

        model = transformers.BertForSequenceClassification(
            transformers.BertConfig(max_position_embeddings=max(512, length))
        )
        if checkpointing:
            model.gradient_checkpointing_enable()
    model.train()
    ids = torch.randint(5, 30000, (batch, length))
    labels = torch.zeros(batch, dtype=torch.long)
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    params = sum(p.numel() for p in model.parameters())
    base = _rss()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"peak": peak, "saved": saved, "params": params}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # side:0|1, run in a child process
    args = parser.parse_args(argv)
    if args.variant:
        side, ckpt = args.variant.split(":")
        print(json.dumps(measure(side, ckpt == "1", args.batch, args.length)))
        return 0
    results = {}
    for side in ("ours", "hf"):
        for ckpt in (False, True):
            command = [sys.executable, __file__, f"--variant={side}:{int(ckpt)}"]
            command += [f"--batch={args.batch}", f"--length={args.length}"]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[side, ckpt] = json.loads(out.strip().splitlines()[-1])
    print(f"bert-base seqcls, batch {args.batch} x {args.length}, fp32, one forward + backward")
    gib = 1024**3
    for side in ("ours", "hf"):
        plain, ckpt = results[side, False], results[side, True]
        ratio = ckpt["peak"] / plain["peak"]
        # Per row: what the step added beyond the gradients (4 bytes per parameter), so activations
        # and the recomputed block; the budget holds weights, gradients and AdamW's moments besides.
        fits = {
            k: int((BUDGET - 16 * plain["params"]) // ((r["peak"] - 4 * r["params"]) / args.batch))
            for k, r in (("plain", plain), ("ckpt", ckpt))
        }
        print(
            f"  {side:<4}  peak {plain['peak'] / gib:.2f} GiB -> {ckpt['peak'] / gib:.2f} GiB with checkpointing "
            f"(ckpt/plain {ratio:.2f}, goal <= {GOAL}: {'ok' if ratio <= GOAL else 'MISSED'}); kept for backward "
            f"{plain['saved'] / gib:.2f} -> {ckpt['saved'] / gib:.2f} GiB; largest batch x {args.length} in 8 GB: "
            f"{fits['plain']} -> {fits['ckpt']}"
        )
    ours, hf = results["ours", True], results["hf", True]
    print(f"  ours/hf peak with checkpointing: {ours['peak'] / hf['peak']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Forward time of our models against transformers', same weights, fp32, inference mode.

    python bench/forward.py            # bert, gpt2, bart, roberta, distilbert, llama at 8x128 and 1x16
    python bench/forward.py --quick    # fewer runs
    python bench/forward.py --models gpt2 --shapes 8x128 --runs 20
    python bench/forward.py --probe    # with output_hidden_states and output_attentions (HF eager)
    nice -n -10 python bench/forward.py --quiet-wait 30   # on a shared machine

For each architecture a randomly initialised transformers base model of the standard size (bert-base,
gpt2, bart-base, roberta-base, distilbert-base, llama at SmolLM-135M's size) is saved with `save_pretrained` to a temporary folder; both sides load that folder
(`factory.AutoModel` and `transformers.AutoModel`). Inputs carry an all-ones attention mask, as a
tokenizer gives. Times are medians of interleaved runs after warm-up; `ours/hf` is the median of the
per-round ratios. `peak` is the fraction of this process's best fp32 matmul rate that the model's FLOPs
reach: 2 * (weights in matmuls) * tokens plus 4 * B * T * T_kv * C per attention (causal attention
counted in full). `cpu ours/hf` is the ratio of
process CPU time (all threads) per forward: a cross-check that other processes on the machine do not
distort as much as they distort wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import _common as common
import torch

GOALS = {
    ("bert", "8x128"): 0.95,
    ("gpt2", "8x128"): 0.85,
    ("bart", "8x128"): 1.0,
    ("roberta", "8x128"): 1.0,
    ("distilbert", "8x128"): 1.0,
    ("llama", "8x128"): 1.0,
}
DEFAULT_GOAL = 1.0


def model_flops(model: torch.nn.Module, model_type: str, b: int, t: int) -> float:
    """FLOPs of one forward of our base model on (b, t) inputs (decoder inputs of the same length)."""
    flops = 0.0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            tokens = b if name.startswith("pooler") else b * t  # BERT's pooler sees one token per row
            flops += 2 * module.weight.numel() * tokens
    cfg = model.config
    if model_type == "bart":
        attentions = cfg.encoder_layers + 2 * cfg.decoder_layers  # self + cross in each decoder layer
    else:
        attentions = cfg.num_hidden_layers
    return flops + attentions * 4 * b * t * t * cfg.hidden_size


def inputs(vocab: int, b: int, t: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones(b, t, dtype=torch.long)}


def measure(
    model_type: str,
    shapes: list[str],
    runs: int,
    warmup: int,
    peak: float,
    quiet_wait: float = 0.0,
    probe: bool = False,
) -> list[list[str]]:
    """One table row per shape for `model_type`: times, ratio, goal, fraction of peak, output difference.

    With `probe`, both sides also return every layer's hidden states and attention probabilities
    (transformers in its eager attention, the one that returns them).
    """
    import transformers

    import factory

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        common.save_random_hf_model(model_type, Path(tmp))
        ours = factory.AutoModel.from_pretrained(tmp).eval()
        hf_kwargs = {"attn_implementation": "eager"} if probe else {}
        hf = transformers.AutoModel.from_pretrained(tmp, **hf_kwargs).eval()
    for shape in shapes:
        b, t = (int(x) for x in shape.split("x"))
        batch = inputs(ours.config.vocab_size, b, t)
        if probe:
            batch.update(output_hidden_states=True, output_attentions=True)
        with torch.inference_mode():
            diff = (ours(**batch).last_hidden_state - hf(**batch).last_hidden_state).abs().max().item()
            sides = {"ours": lambda batch=batch: ours(**batch), "hf": lambda batch=batch: hf(**batch)}
            cpu: dict[str, list[float]] = {}
            times = common.alternate(sides, runs, warmup, cpu, quiet_wait)
        ms = {k: common.median(v) * 1e3 for k, v in times.items()}
        cpu_ratio = common.paired_ratio(cpu["ours"], cpu["hf"])
        flops = model_flops(ours, model_type, b, t)
        ratio = common.paired_ratio(times["ours"], times["hf"])
        goal = GOALS.get((model_type, shape), DEFAULT_GOAL)
        rows.append(
            [
                model_type,
                shape,
                f"{ms['ours']:.1f}",
                f"{ms['hf']:.1f}",
                f"{ratio:.2f}",
                # The goals are the default path's; the probing path is measured, not held to them.
                "-" if probe else f"<= {goal:.2f} {common.verdict(ratio, goal)}",
                f"{cpu_ratio:.2f}",
                f"{flops / (ms['ours'] * 1e-3) / 1e9 / peak:.0%}",
                f"{flops / (ms['hf'] * 1e-3) / 1e9 / peak:.0%}",
                f"{diff:.1e}",
            ]
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="bert,gpt2,bart,roberta,distilbert,llama")
    parser.add_argument("--shapes", default="8x128,1x16")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per side (default 15, quick 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per side (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--probe",
        action="store_true",
        help="ask both sides for output_hidden_states and output_attentions (transformers in eager)",
    )
    common.add_quiet_wait(parser)
    args = parser.parse_args()
    runs = args.runs or (5 if args.quick else 15)
    warmup = args.warmup or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)

    import transformers

    import factory
    from factory import registry

    peak = common.matmul_peak_gflops(runs=3 if args.quick else 5)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
        f"fp32 matmul peak {peak:.0f} GFLOP/s; medians of {runs} interleaved runs after {warmup} warm-up; "
        f"factory from {Path(factory.__file__).parent}\n"
    )
    rows = []
    with common.OtherLoad() as load:
        for model_type in args.models.split(","):
            if model_type not in registry.model_types():
                print(f"{model_type}: skipped, factory has no {model_type!r} yet")
                continue
            rows += measure(
                model_type, args.shapes.split(","), runs, warmup, peak, args.quiet_wait, args.probe
            )
    headers = [
        "model",
        "BxT",
        "ours ms",
        "hf ms",
        "ours/hf",
        "goal",
        "cpu ours/hf",
        "ours peak",
        "hf peak",
        "max |diff|",
    ]
    print(common.table(headers, rows))
    missed = sum("MISSED" in r[5] for r in rows)
    print(f"\n{missed} of {len(rows)} goals missed; {load.note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

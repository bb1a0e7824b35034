"""Greedy or beam-search generation with our GPT-2 against transformers' `generate`, same weights, fp32.

    python bench/generate.py                # 64 new tokens, batch 1 (8-token prompt) and batch 4 (32)
    python bench/generate.py --quick        # fewer rounds
    python bench/generate.py --num-beams 4  # beam search (goal: at least as fast as transformers)
    python bench/generate.py --shapes 1x8 --new-tokens 128
    nice -n -10 python bench/generate.py --quiet-wait 30   # on a shared machine

A randomly initialised GPT2LMHeadModel of the gpt2 size is saved with `save_pretrained`; both sides load
it. Ours is `factory.generation.decode.generate`, theirs `model.generate(do_sample=False)`; both use their KV
cache and never stop early (eos disabled), so each call makes exactly `--new-tokens` tokens per row, and
the outputs must be equal token for token. Rounds alternate between the sides after a warm-up call;
`tok/s` is new tokens (all rows) over the median call time, `ours/hf` the median of the per-round speed
ratios (above 1: ours is faster). Goal: at least 1.25x greedy (at batch 1), 1.0x with beams.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import _common as common
import torch

GOAL = 1.25
BEAM_GOAL = 1.0


def measure(shape: str, new_tokens: int, runs: int, quiet_wait: float, num_beams: int = 1) -> list[str]:
    import transformers

    import factory
    from factory.generation.decode import generate

    b, t = (int(x) for x in shape.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(common.hf_config("gpt2")).save_pretrained(tmp)
        ours = factory.AutoModelForCausalLM.from_pretrained(tmp).eval()
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # every call makes exactly new_tokens tokens
    hf.generation_config.pad_token_id = 0
    ids = torch.randint(3, ours.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    sides = {
        "ours": lambda: generate(
            ours, ids, mask, max_new_tokens=new_tokens, eos_token_id=[], num_beams=num_beams
        ),
        "hf": lambda: hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=0,
            do_sample=False,
            num_beams=num_beams,
        ),
    }
    with torch.inference_mode():
        same = torch.equal(sides["ours"](), sides["hf"]())
    times = common.alternate(sides, runs, warmup=1, quiet_wait=quiet_wait)
    tok = {k: b * new_tokens / common.median(v) for k, v in times.items()}
    ratio = common.median([h / o for o, h in zip(times["ours"], times["hf"])])
    goal = GOAL if num_beams == 1 else BEAM_GOAL
    return [
        f"gpt2 {shape}" + (f" {num_beams} beams" if num_beams > 1 else ""),
        str(new_tokens),
        f"{tok['ours']:.1f}",
        f"{tok['hf']:.1f}",
        f"{ratio:.2f}",
        f">= {goal:.1f}",
        "ok" if ratio >= goal else "MISSED",
        "yes" if same else "NO",
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="1x8,4x32", help="batch x prompt length")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--num-beams", type=int, default=1, help="1: greedy; more: beam search")
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--threads", type=int, default=2)
    common.add_quiet_wait(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = 2 if args.quick else args.runs
    rows = []
    with common.OtherLoad() as load:
        for shape in args.shapes.split(","):
            rows.append(measure(shape, args.new_tokens, runs, args.quiet_wait, args.num_beams))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    headers = ["model batch x prompt", "new", "ours tok/s", "hf tok/s", "ours/hf", "goal", "", "same tokens"]
    print(common.table(headers, rows))
    print(load.note())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Useful (non-pad) tokens per second in training: our batching against padding to max_length and against
transformers' `Trainer` with its default collator, same model shape and batch size, in one run.

    python bench/data_throughput.py                       # both tasks, 10 steps each way (a few minutes)
    python bench/data_throughput.py --quick               # a smoke run
    python bench/data_throughput.py --tasks causal_lm --layers 4 --document-attention

Data: synthetic words in documents whose lengths are lognormal (median about 40 tokens, a tail to 512), in
memory; a tokenizer of the model's family is trained on them. Two tasks:

- seqcls, a bert-base-shaped model (width 768, 12 heads; `--layers` layers): ours with
  `data.group_by_length=true` (rows of similar length batched together, padded to a multiple of 8); ours
  padded to `max_length` (512); `Trainer` with `DataCollatorWithPadding` (pads each random batch to its
  longest row).
- causal_lm, a gpt2-shaped model: ours with `data.packing` (documents joined into full rows of 512); ours
  with a document per row padded to 512; `Trainer` with `DataCollatorForLanguageModeling(mlm=False)` on a
  document per row (padded to the longest of the batch). `--document-attention` adds ours packed with
  per-document attention.

Each way runs `--steps` optimizer steps (forward, backward, AdamW) after a warm-up forward and backward;
for seqcls that is one epoch of the same `--steps` x `--batch-size` rows for every way (the length-grouped
epoch's longest batch included), for causal_lm the first steps of an epoch over all documents. Ours runs
in a plain loop over our DataModule's training loader and our model; `Trainer` (timed from the start of its first step
to the end of its last, by a callback) over the same encoded rows with the transformers model class of
the same shape. Useful tokens are the attention mask's ones over the timed steps. Ratios above 1 mean
ours trains on more useful tokens per second. `Trainer` needs `accelerate` (pip install accelerate).
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common
import torch

GOALS = {"max_length": 2.0, "trainer": 1.3}  # ours over each, at least
MAX_LENGTH = 512
SHAPES = {  # bert-base and gpt2 widths; the depth comes from --layers
    "seqcls": ("bert", dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072)),
    "causal_lm": ("gpt2", dict(hidden_size=768, num_attention_heads=12)),
}
HF_CLASSES = {"seqcls": "BertForSequenceClassification", "causal_lm": "GPT2LMHeadModel"}


def corpus(n: int, seed: int = 0, median: float = 40.0, longest: int = MAX_LENGTH) -> list[str]:
    """`n` documents of synthetic words, word counts lognormal with `median`, the 99.9th percentile near
    `longest` (sigma from ln(longest / median) / 3.09)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 8))) for _ in range(3000)]
    weights = [1.0 / (i + 1) for i in range(len(words))]  # Zipf-like: a few frequent words
    sigma = math.log(longest / median) / 3.09
    docs = []
    for _ in range(n):
        count = min(longest - 2, max(1, round(rng.lognormvariate(math.log(median), sigma))))
        docs.append(" ".join(rng.choices(words, weights, k=count)))
    return docs


def percentiles(lengths: list[int]) -> str:
    s = sorted(lengths)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return f"median {pick(0.5)}, p90 {pick(0.9)}, p99 {pick(0.99)}, max {s[-1]} tokens"


def model_config(task: str, vocab: int, layers: int) -> Any:
    from factory import registry

    model_type, shape = SHAPES[task]
    cls = registry.config_class(model_type)
    values = {
        **shape,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "max_position_embeddings": MAX_LENGTH,
    }
    if task == "seqcls":
        values["num_labels"] = 2
    return cls.from_dict({}, **values)


def our_model(task: str, config: Any) -> torch.nn.Module:
    from factory import registry

    torch.manual_seed(0)
    return registry.model_class(config.model_type, task)(config).train()


def hf_model(task: str, config: Any) -> torch.nn.Module:
    import transformers

    values = {k: v for k, v in config.to_dict().items() if k != "model_type"}
    hf_config = transformers.AutoConfig.for_model(config.model_type, **values)
    torch.manual_seed(0)
    return getattr(transformers, HF_CLASSES[task])(hf_config).train()


# ---- ours -----------------------------------------------------------------------------------------------
def run_ours(task: str, model: torch.nn.Module, module: Any, steps: int) -> tuple[float, int, int]:
    """`(seconds, useful tokens, padded tokens)` over the first `steps` batches of `module`'s training
    loader, after a warm-up step on a validation batch."""
    import inspect

    head = module.head
    accepted = set(inspect.signature(model.forward).parameters)
    # Trainer's default optimizer (fused AdamW, on the CPU too; train.py's with optim.fused=true): the
    # optimizer is not what is compared here.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step(batch: dict[str, torch.Tensor]) -> None:
        batch = head.prepare_batch(model, batch)
        loss = model(**{k: v for k, v in batch.items() if k in accepted}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    batches = iter(module.train_dataloader())
    step(next(iter(module.val_dataloader())))  # warm-up, on none of the timed batches
    useful = padded = 0
    start = time.perf_counter()
    for _, batch in zip(range(steps), batches):
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        # Packed rows with per-document attention carry no mask; they are full but for an epoch's last.
        useful += int(mask.sum()) if mask is not None else ids.numel()
        padded += ids.numel()
        step(batch)
    return time.perf_counter() - start, useful, padded


# ---- transformers' Trainer ------------------------------------------------------------------------------
def run_trainer(
    task: str, model: torch.nn.Module, rows: list[dict], tokenizer_dir: Path, steps: int, batch: int
):
    """`(seconds, useful tokens, padded tokens)` over Trainer's `steps` steps (from the start of the first
    to the end of the last)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if task == "seqcls":
        collator = transformers.DataCollatorWithPadding(tok)
        rows = [{k: v for k, v in r.items() if k in ("input_ids", "token_type_ids", "labels")} for r in rows]
    else:
        collator = transformers.DataCollatorForLanguageModeling(tok, mlm=False)
        rows = [{"input_ids": r["input_ids"]} for r in rows]
    seen: list[tuple[int, int]] = []

    def counting(features):
        out = collator(features)
        seen.append((int(out["attention_mask"].sum()), out["input_ids"].numel()))
        return out

    # Warm up as ours does (a step's forward and backward on a batch of the data, gradients dropped), so
    # that every one of Trainer's steps can be timed, its first included.
    model(**collator(rows[:batch])).loss.backward()
    model.zero_grad(set_to_none=True)
    stamps: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=steps,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=rows, data_collator=counting, callbacks=[Clock()]
        )
        trainer.train()
    timed = seen[:steps]
    return stamps[steps] - stamps[0], sum(u for u, _ in timed), sum(p for _, p in timed)


# ---- the run --------------------------------------------------------------------------------------------
def bench_task(task: str, args: argparse.Namespace, out: Path) -> dict[str, tuple[float, int, int]]:
    from factory.data.files import DataSplits
    from factory.data.module import FactoryDataModule
    from factory.tokenizers.training import train_tokenizer

    model_type, _ = SHAPES[task]
    docs = corpus(args.documents, seed=args.seed)
    tok = train_tokenizer(model_type, docs, args.vocab, model_max_length=MAX_LENGTH)
    tok_dir = out / f"{task}_tokenizer"
    tok.save_pretrained(tok_dir)
    rng = random.Random(args.seed)
    examples = [{"text": d, "label": rng.randint(0, 1)} if task == "seqcls" else {"text": d} for d in docs]
    if task == "seqcls":
        # Every way trains one epoch of the same rows: the same useful tokens, so the ratios are ratios
        # of time (a few steps of a heavy-tailed length distribution drawn apart would differ more by
        # chance than by padding). The length-grouped epoch's longest batch is in it, as in any epoch.
        examples = examples[: args.steps * args.batch_size]
    splits = DataSplits(
        examples, examples[: args.batch_size], labels=["a", "b"] if task == "seqcls" else None
    )
    config = model_config(task, len(tok), args.layers)

    def module(**data: Any) -> FactoryDataModule:
        dm = FactoryDataModule(task, data, tok, args.batch_size, MAX_LENGTH, seed=args.seed, splits=splits)
        dm.setup()
        return dm

    if task == "seqcls":
        ways = {"ours": dict(group_by_length=True), "max_length": dict(pad_to_multiple_of=MAX_LENGTH)}
        per_row = dict()
    else:
        ways = {"ours": dict(), "max_length": dict(packing=False, pad_to_multiple_of=MAX_LENGTH)}
        if args.document_attention:
            ways["ours_document_attention"] = dict(packing_document_attention=True)
        per_row = dict(packing=False)
    rows = module(**per_row).train.rows
    print(f"{task}: {len(examples)} documents, {percentiles([len(r['input_ids']) for r in rows])}")
    ours = {name: (our_model(task, config), module(**data)) for name, data in ways.items()}
    theirs = hf_model(task, config)
    # Rounds alternate the ways (a shared machine's load changes in the meantime); each way's time is its
    # median over the rounds. Padding to max_length is so far behind that one round tells.
    runs: dict[str, list[tuple[float, int, int]]] = {name: [] for name in [*ways, "trainer"]}
    for round_ in range(args.rounds):
        order = [*ours, "trainer"] if round_ % 2 == 0 else ["trainer", *ours]
        for name in order:
            if name == "max_length" and round_:
                continue
            if name == "trainer":
                runs[name].append(run_trainer(task, theirs, rows, tok_dir, args.steps, args.batch_size))
            else:
                runs[name].append(run_ours(task, *ours[name], args.steps))
    return {name: sorted(r)[len(r) // 2] for name, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["seqcls", "causal_lm"], choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per way")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers (bert-base/gpt2 have 12)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--documents", type=int, default=3000)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating ours and Trainer")
    parser.add_argument(
        "--document-attention", action="store_true", help="causal_lm: also packed per document"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 layer, 3 steps, 600 documents")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.steps, args.rounds, args.documents = 1, 3, 1, min(args.documents, 600)
    try:
        import accelerate  # noqa: F401  (transformers' Trainer needs it)
    except ImportError:
        raise SystemExit("transformers' Trainer needs accelerate: pip install accelerate") from None
    print(
        f"{args.steps} steps of batch {args.batch_size}, {args.layers} layers, max_length {MAX_LENGTH}, "
        f"median of {args.rounds} rounds"
    )
    rows = []
    with common.OtherLoad() as load, tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            results = bench_task(task, args, Path(tmp))
            rate = {name: useful / seconds for name, (seconds, useful, _) in results.items()}
            for name, (seconds, useful, padded) in results.items():
                rows.append([task, name, f"{rate[name]:.0f}", f"{useful / padded:.0%}", f"{seconds:.1f}"])
            for other, goal in GOALS.items():
                ratio = rate["ours"] / rate[other]
                verdict = "ok" if ratio >= goal else f"below the goal of {goal}x"
                rows.append([task, f"ours/{other}", f"{ratio:.2f}x", "", verdict])
    print(common.table(["task", "way", "useful tok/s", "useful share", "seconds"], rows))
    print(load.note())


if __name__ == "__main__":
    main()

# python -m pytest -q tests/test_stateless_heads.py  (all slow: each case runs train.py twice)
"""A head holds no per-run state: every head trains twice in fresh processes sharing one encoded-data
cache (the second run a cache hit), and streaming heads train with loader workers, which encode in other
processes; both runs give the same first batch and the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from factory import registry
from factory.data.files import default_data_files
from factory.data.sources import load_examples
from factory.heads.head import trainable_heads
from tests.helpers import TINY_RUN

REPO = Path(__file__).resolve().parent.parent
MATRIX = registry.model_matrix()
# The heads that stream (their label set does not come from the training split): factory/data/streaming.py.
STREAMING = ("causal_lm", "masked_lm", "seq2seq_lm", "qa", "multiple_choice")
# Short rows keep each run to seconds; QA's windows need room for the question and a stride below it.
MAX_LENGTH = {"qa": ["data.max_length=128", "data.stride=32"]}


def arch_for(head: str) -> str:
    """BERT where it serves the head, else the first architecture that does."""
    having = sorted(t for t, heads in MATRIX.items() if head in heads)
    return "bert" if "bert" in having else having[0]


def start_train(run: Path, cache: Path, head: str, *more: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache)}
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        f"arch={arch_for(head)}",
        f"head={head}",
        *TINY_RUN,
        *MAX_LENGTH.get(head, ["data.max_length=64"]),
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        f"hydra.run.dir={run}",
        "+callbacks.first_batch._target_=tests.callbacks.FirstBatch",
        f"+callbacks.first_batch.path={run.parent / (run.name + '.first_batch.safetensors')}",
        *more,
    ]
    return subprocess.Popen(
        cmd, cwd=run.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen, what: str) -> str:
    """The run's output, once it has ended with exit 0."""
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, f"{what}:\n{output[-3000:]}"
    return output


def assert_same_runs(first: Path, second: Path) -> None:
    batches = [load_file(str(p.parent / (p.name + ".first_batch.safetensors"))) for p in (first, second)]
    assert batches[0].keys() == batches[1].keys()
    for key in batches[0]:
        assert batches[0][key].equal(batches[1][key]), f"first batch differs in {key}"
    weights = [load_file(str(p / "model" / "model.safetensors")) for p in (first, second)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert weights[0][key].equal(weights[1][key]), f"trained weights differ in {key}"
    metrics = [json.loads((p / "results.json").read_text())["final_metrics"] for p in (first, second)]
    assert metrics[0] == metrics[1]


@pytest.mark.slow
@pytest.mark.parametrize("head", trainable_heads())
def test_every_head_trains_twice_on_one_data_cache(head, tmp_path):
    cache = tmp_path / "cache"
    runs = [tmp_path / "first", tmp_path / "second"]
    outputs = [finish(start_train(run, cache, head), f"{run.name} run of head={head}") for run in runs]
    assert "from the cache" in outputs[1], "the second run encoded again instead of hitting the cache"
    assert_same_runs(*runs)


def jsonl_files(head: str, folder: Path) -> list[str]:
    """The shipped data of `head` as JSONL files (a stream reads text or JSONL; QA ships SQuAD's JSON)."""
    splits = load_examples(head)
    paths = []
    for name, examples in (("train", splits.train), ("validation", splits.validation)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
        paths.append(f"data.{name}_file={path}")
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("head", [h for h in trainable_heads() if h in STREAMING])
def test_streaming_heads_train_with_loader_workers(head, tmp_path):
    runs = [tmp_path / "first", tmp_path / "second"]
    stream = ["data.streaming=true", "data.num_workers=2"]
    if default_data_files(head)[0].endswith(".json"):
        stream += jsonl_files(head, tmp_path)
    # Side by side: they share nothing (a stream is not cached).
    procs = [start_train(run, tmp_path / run.name, head, *stream) for run in runs]
    for run, proc in zip(runs, procs):
        finish(proc, f"{run.name} streaming run of head={head}")
    assert_same_runs(*runs)

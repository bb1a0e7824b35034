# python -m pytest -q tests/test_streaming.py  (-m "not slow" for the fast tier)
"""`data.streaming=true`: the training split read lazily, in shards per rank and worker, resumable."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from factory.data import streaming
from factory.data.files import DataError, texts_for_tokenizer
from factory.data.module import FactoryDataModule
from factory.data.sources import load_examples
from factory.tokenizers.training import train_tokenizer

REPO = Path(__file__).resolve().parents[1]

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hum".split()


def write_text(path: Path, documents: int) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(documents):
            words = [WORDS[(i * 7 + j) % len(WORDS)] for j in range(5 + i % 9)]
            f.write(f"doc {i} " + " ".join(words) + "\nsecond line\n\n")
    return path


@pytest.fixture
def lm_files(tmp_path) -> dict[str, str]:
    return {
        "train_file": str(write_text(tmp_path / "train.txt", 60)),
        "validation_file": str(write_text(tmp_path / "validation.txt", 5)),
    }


@pytest.fixture(scope="module")
def gpt_tok():
    return train_tokenizer("gpt2", [" ".join(WORDS), "doc second line 0123456789"], 300, model_max_length=64)


def module(cfg, tok, max_length=16, batch_size=4, **kwargs) -> FactoryDataModule:
    dm = FactoryDataModule("causal_lm", cfg, tok, batch_size=batch_size, max_length=max_length, **kwargs)
    dm.setup()
    return dm


def test_stream_gives_the_rows_of_the_whole_file(lm_files, gpt_tok):
    whole = module({**lm_files, "cache": False}, gpt_tok)
    streamed = module({**lm_files, "streaming": True}, gpt_tok)
    assert streamed.train_stream is not None
    # Fewer documents than a chunk: the same packing as reading the file whole.
    assert list(streamed.train_stream) == whole.train.rows
    assert streamed.validation.rows == whole.validation.rows
    batch = next(iter(streamed.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16) and "labels" in batch


def test_shards_are_disjoint_and_cover_the_stream(lm_files, monkeypatch):
    monkeypatch.setattr(streaming, "CHUNK_EXAMPLES", 4)
    splits = load_examples("causal_lm", {**lm_files, "streaming": True})
    every = [r for _, r in splits.stream.records()]
    assert len(every) == 60
    shards = [[r for c in splits.stream.chunks(s, 3) for _, r in c.records()] for s in range(3)]
    assert sorted(map(str, itertools.chain(*shards))) == sorted(map(str, every))
    assert all(shards) and not set(map(str, shards[0])) & set(map(str, shards[1]))


def test_the_loader_reads_only_what_it_gives_out(lm_files, gpt_tok, monkeypatch):
    """The stream is read a chunk at a time: two batches read one chunk, not the file."""
    monkeypatch.setattr(streaming, "CHUNK_EXAMPLES", 4)
    read = []
    original = streaming._text_records

    def counted(path, column):
        for pair in original(path, column):
            read.append(pair)
            yield pair

    monkeypatch.setattr(streaming, "_text_records", counted)
    dm = module({**lm_files, "streaming": True}, gpt_tok, max_length=8, batch_size=2)
    read.clear()
    batches = iter(dm.train_dataloader())
    next(batches), next(batches)
    assert 0 < len(read) <= 8  # one chunk (and the look-ahead of the next), of 60 documents


def test_resume_restores_the_position_in_the_stream(lm_files, gpt_tok):
    dm = module({**lm_files, "streaming": True}, gpt_tok, max_length=8, batch_size=2)
    loader = dm.train_dataloader()
    it = iter(loader)
    seen = [next(it) for _ in range(3)]
    state = loader.state_dict()
    assert state["batches"] == 3
    fresh = dm.train_dataloader()
    fresh.load_state_dict(state)
    resumed = next(iter(fresh))
    expected = next(it)
    assert resumed["input_ids"].tolist() == expected["input_ids"].tolist()
    assert seen[0]["input_ids"].tolist() != resumed["input_ids"].tolist()


def test_a_tokenizer_learns_from_the_start_of_the_stream(lm_files, monkeypatch):
    monkeypatch.setattr(streaming, "SAMPLE_EXAMPLES", 10)
    splits = load_examples("causal_lm", {**lm_files, "streaming": True})
    assert len(splits.train) == 10 and len(list(texts_for_tokenizer("causal_lm", splits))) == 10


def test_streaming_a_datasets_source(tmp_path, gpt_tok):
    texts = [f"doc {i} " + " ".join(WORDS[: 3 + i % 7]) for i in range(40)]
    datasets.Dataset.from_dict({"content": texts}).to_parquet(str(tmp_path / "train.parquet"))
    cfg = {"path": str(tmp_path / "*.parquet"), "text_column": "content", "validation_split": "train"}
    whole = module({**cfg, "cache": False}, gpt_tok)
    streamed = module({**cfg, "streaming": True}, gpt_tok)
    assert list(streamed.train_stream) == whole.train.rows


def test_what_cannot_stream_is_an_error(lm_files, tmp_path):
    with pytest.raises(DataError, match="validation_fraction cannot be used with data.streaming=true"):
        load_examples(
            "causal_lm", {"train_file": lm_files["train_file"], "validation_fraction": 0.1, "streaming": True}
        )
    with pytest.raises(DataError, match="needs data.validation_file"):
        load_examples("causal_lm", {"train_file": lm_files["train_file"], "streaming": True})
    with pytest.raises(DataError, match="cannot serve head=seqcls: its label names"):
        rows = tmp_path / "labels.jsonl"
        rows.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
        load_examples("seqcls", {"train_file": str(rows), "validation_file": str(rows), "streaming": True})
    with pytest.raises(DataError, match=r"bad.jsonl, line 4: not valid JSON"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "ok"}\n\n\n{"text": \n')
        load_examples("causal_lm", {"train_file": str(bad), "validation_file": str(bad), "streaming": True})


@pytest.mark.slow
def test_train_streams_a_text_file(tmp_path):
    """train() on a 20 MB text file with data.streaming=true: it trains, and reads a sliver of the file."""
    from hydra import compose, initialize_config_dir

    from factory.training.run import train
    from tests.helpers import TINY_RUN

    big = tmp_path / "big.txt"
    with open(big, "w", encoding="utf-8") as f:
        line = " ".join(WORDS) + "\n"
        while f.tell() < 20_000_000:
            f.write(line * 5 + "\n")
    validation = write_text(tmp_path / "validation.txt", 10)
    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "arch=gpt2",
                "head=causal_lm",
                *TINY_RUN,
                "data.max_length=32",
                f"data.train_file={big}",
                f"data.validation_file={validation}",
                "data.streaming=true",
            ],
        )
    read = []
    original = streaming._text_records

    def counted(path, column):
        for pair in original(path, column):
            read.append(pair)
            yield pair

    mp = pytest.MonkeyPatch()
    mp.setattr(streaming, "_text_records", counted)
    try:
        train(cfg, run_dir=tmp_path / "run")
    finally:
        mp.undo()
    documents = big.stat().st_size // (len(line) * 5 + 1)
    # The tokenizer's sample and the chunks of three steps: a quarter of the file at most.
    assert len(read) <= streaming.SAMPLE_EXAMPLES + 4 * streaming.CHUNK_EXAMPLES < documents / 4


def test_a_stream_needs_max_steps():
    from hydra import compose, initialize_config_dir

    from factory.config import ConfigError
    from factory.training.plan import resolve

    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["head=causal_lm", "arch=gpt2", "data.streaming=true"])
    with pytest.raises(ConfigError, match=r"data.streaming=true needs trainer.max_steps"):
        resolve(cfg)
    items = ["head=causal_lm", "arch=gpt2", "data.streaming=true", "trainer.max_steps=5"]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        plan = resolve(compose("train", overrides=items), items)
        assert plan.trainer["max_epochs"] == -1  # steps only: Lightning does not start the stream early
        items.append("trainer.max_epochs=2")
        with pytest.raises(
            ConfigError, match=r"trainer.max_epochs=2 does not apply with data.streaming=true"
        ):
            resolve(compose("train", overrides=items), items)


@pytest.mark.slow
def test_killed_streaming_run_resumes_to_the_same_weights(lm_files, tmp_path, monkeypatch):
    from factory.training import resume
    from factory.training.run import train
    from tests.test_resume import assert_same_run, compose_cfg, last, train_killed_after

    items = [
        "arch=gpt2",
        "head=causal_lm",
        "arch.num_hidden_layers=1",
        "arch.hidden_size=32",
        "arch.num_attention_heads=2",
        "arch.intermediate_size=37",
        "arch.vocab_size=1000",
        "arch.resid_pdrop=0.3",
        "data.batch_size=2",
        "data.max_length=16",
        *(f"data.{k}={v}" for k, v in lm_files.items()),
        "data.streaming=true",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "+trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar.refresh_rate=0",
        "callbacks.last_checkpoint.every_n_train_steps=1",
    ]
    train(compose_cfg(items), run_dir=tmp_path / "whole")
    train_killed_after(compose_cfg(items), tmp_path / "killed", 4, monkeypatch)
    train(resume.run_config(tmp_path / "killed"))
    assert_same_run(last(tmp_path / "killed"), last(tmp_path / "whole"))


def test_each_rank_reads_its_own_share_and_never_runs_out(lm_files, gpt_tok, monkeypatch):
    """Under DDP each rank keeps every other example of every chunk, so even a stream shorter than a
    chunk feeds both, and passes over the stream without end: a rank that ran out first would wait for
    the other in its next collective forever."""
    monkeypatch.setattr(streaming, "CHUNK_EXAMPLES", 4)
    dm = module({**lm_files, "streaming": True}, gpt_tok, max_length=8)
    everything = list(dm.train_stream)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    ranks = []
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        ranks.append(list(itertools.islice(iter(dm.train_stream), 3 * len(everything))))
    assert len(ranks[0]) == len(ranks[1]) == 3 * len(everything)  # more than a pass: it goes round
    assert ranks[0][:5] != ranks[1][:5]
    monkeypatch.setattr(streaming, "CHUNK_EXAMPLES", 10_000)  # one chunk: both ranks still read
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        assert list(itertools.islice(iter(dm.train_stream), 2))


@pytest.mark.slow
def test_a_stream_trains_on_two_ddp_ranks(tmp_path):
    """train.py with two CPU ranks on the shipped causal-LM text, which is shorter than one chunk."""
    run = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), "head=causal_lm", "arch=gpt2", "data.streaming=true"]
    cmd += ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={run}"]
    cmd += ["arch.num_hidden_layers=1", "arch.hidden_size=32", "arch.num_attention_heads=2"]
    cmd += ["arch.intermediate_size=37", "trainer.max_steps=6", "trainer.val_check_interval=3"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["global_step"] == 6
    assert [r["rank"] for r in json.loads((run / "ranks.json").read_text())] == [0, 1]

# python -m pytest -q tests/test_hf_data.py
"""`datasets` as a data source (saved folders, parquet/JSON/CSV files and globs, hub ids through an offline
cache built here), the encoded-data cache and parallel tokenisation. Nothing is downloaded."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import datasets
import pytest

from factory.data import cache as data_cache
from factory.data.files import DataError, texts_for_tokenizer
from factory.data.module import FactoryDataModule
from factory.data.sources import load_examples
from factory.heads.head import get_head
from factory.tokenizers.training import train_tokenizer

LABELS = datasets.Features(
    {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
)
TEXTS = ["a good film", "a bad film", "great acting", "dull plot", "loved it", "hated it"]


def seqcls_dict() -> datasets.DatasetDict:
    train = datasets.Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1, 0, 1, 0]}, features=LABELS)
    validation = datasets.Dataset.from_dict({"text": TEXTS[:2], "label": [1, 0]}, features=LABELS)
    return datasets.DatasetDict({"train": train, "validation": validation})


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "reviews"
    seqcls_dict().save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def tok(saved):
    splits = load_examples("seqcls", {"path": str(saved)})
    return train_tokenizer("bert", texts_for_tokenizer("seqcls", splits), 200, model_max_length=64)


# ---- sources ------------------------------------------------------------------------------------------


def test_saved_dataset_dict_reads_like_files(saved):
    splits = load_examples("seqcls", {"path": str(saved)})
    assert splits.labels == ["neg", "pos"]  # class-label ids read as their names
    assert splits.train[:2] == [{"text": "a good film", "label": 1}, {"text": "a bad film", "label": 0}]
    assert len(splits.validation) == 2
    assert splits.train_file == f"{saved} (split 'train')"


def test_missing_column_names_dataset_split_row_and_columns(saved):
    with pytest.raises(DataError) as e:
        load_examples("seqcls", {"path": str(saved), "text_column": "review"})
    assert str(e.value) == (
        f"{saved} (split 'train'), row 0: no column 'review' (data.text_column); the columns are ['label', 'text']."
    )


def test_split_names_and_missing_split(saved):
    splits = load_examples("seqcls", {"path": str(saved), "validation_split": "train"})
    assert splits.validation == splits.train
    with pytest.raises(
        DataError, match=r"no split 'dev' \(data.validation_split\); its splits are \['train', 'validation'\]"
    ):
        load_examples("seqcls", {"path": str(saved), "validation_split": "dev"})


def test_saved_single_dataset_and_validation_fraction(tmp_path):
    folder = tmp_path / "one"
    seqcls_dict()["train"].save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"its splits are \['train'\].*validation_fraction"):
        load_examples("seqcls", {"path": str(folder)})
    a = load_examples("seqcls", {"path": str(folder), "validation_fraction": 0.5, "validation_seed": 3})
    b = load_examples("seqcls", {"path": str(folder), "validation_fraction": 0.5, "validation_seed": 3})
    assert len(a.train) == len(a.validation) == 3
    assert a.train == b.train and a.validation == b.validation  # seeded


def test_parquet_json_csv_files_and_globs(tmp_path):
    train = seqcls_dict()["train"]
    for i in range(2):
        train.shard(2, i).to_parquet(str(tmp_path / f"part-{i}.parquet"))
    train.to_json(str(tmp_path / "all.jsonl"))
    train.to_csv(str(tmp_path / "all.csv"), index=False)
    cfg = {"validation_fraction": 0.5}
    globbed = load_examples("seqcls", {"path": str(tmp_path / "part-*.parquet"), **cfg})
    for name in ("all.jsonl", "all.csv"):
        other = load_examples("seqcls", {"path": str(tmp_path / name), **cfg})
        assert sorted(e["text"] for e in other.train + other.validation) == sorted(TEXTS)
    assert sorted(e["text"] for e in globbed.train + globbed.validation) == sorted(TEXTS)
    with pytest.raises(DataError, match="matches no file"):
        load_examples("seqcls", {"path": str(tmp_path / "none-*.parquet"), **cfg})


def test_causal_lm_and_token_cls_from_datasets(tmp_path):
    text = datasets.Dataset.from_dict({"content": ["one two three", "four five"]})
    text.to_parquet(str(tmp_path / "lm.parquet"))
    splits = load_examples(
        "causal_lm",
        {"path": str(tmp_path / "lm.parquet"), "text_column": "content", "validation_split": "train"},
    )
    assert splits.train == [{"text": "one two three"}, {"text": "four five"}]
    tags = datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": tags})
    ner = datasets.Dataset.from_dict(
        {"tokens": [["Ana", "Lima", "runs"], ["He", "sleeps"]], "ner_tags": [[1, 2, 0], [0, 0]]},
        features=features,
    )
    datasets.DatasetDict({"train": ner, "validation": ner}).save_to_disk(str(tmp_path / "ner"))
    splits = load_examples("token_cls", {"path": str(tmp_path / "ner"), "tags_column": "ner_tags"})
    assert sorted(splits.labels) == ["B-PER", "I-PER", "O"]  # CoNLL-style tag ids read as their names


def test_a_missing_local_path_is_not_looked_up_on_the_hub(tmp_path):
    for path in (str(tmp_path / "nothing"), "./nothing", "data.parquet"):
        with pytest.raises(DataError, match=r"does not exist \(a local path"):
            load_examples("seqcls", {"path": path})


def test_path_and_train_file_together_is_an_error(saved, tmp_path):
    with pytest.raises(DataError, match="data.path=.* and data.train_file are both set"):
        load_examples("seqcls", {"path": str(saved), "train_file": str(tmp_path / "x.csv")})


# ---- the hub, offline -----------------------------------------------------------------------------------


def cache_hub_dataset(cache: Path, repo_id: str, data: datasets.DatasetDict, tmp_path: Path) -> None:
    """Lay `data` out in `cache` as `datasets` caches a hub dataset it has prepared (no network): the
    arrow files of a packaged builder, moved to `<namespace>___<name>/default/0.0.0/<hash>/<name>-<split>.arrow`."""
    files = {}
    for split, ds in data.items():
        files[split] = str(tmp_path / f"{split}.parquet")
        ds.to_parquet(files[split])
    built = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "build"))
    folder = Path(next(iter(built.values())).cache_files[0]["filename"]).parent
    namespace, name = repo_id.split("/")
    target = cache / f"{namespace}___{name}" / "default" / "0.0.0" / folder.name
    target.mkdir(parents=True)
    for split in data:
        shutil.copy(folder / f"parquet-{split}.arrow", target / f"{name}-{split}.arrow")
    shutil.copy(folder / "dataset_info.json", target / "dataset_info.json")


def test_hub_id_from_the_offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "datasets"
    cache_hub_dataset(cache, "someone/reviews", seqcls_dict(), tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    splits = load_examples("seqcls", {"path": "someone/reviews"})
    assert [e["text"] for e in splits.train] == TEXTS
    assert splits.labels == ["neg", "pos"]  # the class labels survive the cache
    assert splits.train_file == "someone/reviews (split 'train')"


def test_hub_id_not_cached_fails_fast_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(
        DataError, match=r"data.path='nobody/absent': HF_HUB_OFFLINE is set and .* not in the datasets cache"
    ):
        load_examples("causal_lm", {"path": "nobody/absent"})
    assert time.perf_counter() - started < 5  # no retries against an unreachable hub


# ---- tokenise once ---------------------------------------------------------------------------------------


def count_encodes(monkeypatch, head: str) -> list[int]:
    calls = []
    cls = type(get_head(head))
    original = cls.encode

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "encode", counted)
    return calls


def setup_module_rows(cfg, tok, splits=None, max_length=16):
    dm = FactoryDataModule("seqcls", cfg, tok, batch_size=2, max_length=max_length, splits=splits)
    dm.setup()
    return dm.train.rows, dm.validation.rows


def test_second_setup_reads_the_cache(saved, tok, tmp_path, monkeypatch):
    cfg = {"path": str(saved), "cache_dir": str(tmp_path)}
    calls = count_encodes(monkeypatch, "seqcls")
    first = setup_module_rows(cfg, tok)
    assert len(calls) == 2  # train and validation
    assert len(list(tmp_path.rglob("*.encoded"))) == 1
    second = setup_module_rows(cfg, tok)
    assert len(calls) == 2 and second == first
    setup_module_rows({**cfg, "num_proc": 1, "streaming": False}, tok)  # how it is read: the same entry
    assert len(calls) == 2


def test_any_key_component_misses(saved, tok, tmp_path, monkeypatch):
    cfg = {"path": str(saved), "cache_dir": str(tmp_path)}
    setup_module_rows(cfg, tok)
    calls = count_encodes(monkeypatch, "seqcls")
    setup_module_rows(cfg, tok, max_length=8)  # max_length
    other_tok = train_tokenizer("bert", [*TEXTS, "another text"], 150, model_max_length=64)
    setup_module_rows(cfg, other_tok)  # tokenizer
    setup_module_rows({**cfg, "validation_split": "train"}, tok)  # data
    edited = seqcls_dict()
    edited["train"] = edited["train"].map(lambda r: {"text": r["text"] + "!"})
    edited.save_to_disk(str(tmp_path / "edited"))
    setup_module_rows({**cfg, "path": str(tmp_path / "edited")}, tok)  # content
    assert len(calls) == 8
    setup_module_rows({**cfg, "cache": False}, tok)
    assert len(calls) == 10 and len(list(tmp_path.rglob("*.encoded"))) == 5


def test_num_proc_gives_the_rows_of_one_process(tmp_path):
    many = datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict({"text": TEXTS * 5, "label": [1, 0] * 15}, features=LABELS)
            for s in ("train", "validation")
        }
    )
    many.save_to_disk(str(tmp_path / "many"))
    splits = load_examples("seqcls", {"path": str(tmp_path / "many")})
    tok = train_tokenizer("bert", TEXTS, 150, model_max_length=64)
    one = setup_module_rows({"cache": False}, tok, splits)
    two = setup_module_rows({"cache": False, "num_proc": 3}, tok, splits)
    assert one == two
    lm = load_examples("causal_lm", {})  # packing across documents: the blocks must not move
    gpt = train_tokenizer("gpt2", texts_for_tokenizer("causal_lm", lm), 300, model_max_length=64)
    rows = []
    for n in (1, 2):
        dm = FactoryDataModule("causal_lm", {"cache": False, "num_proc": n}, gpt, 4, 32, splits=lm)
        dm.setup()
        rows.append((dm.train.rows, dm.validation.rows))
    assert rows[0] == rows[1]
    with pytest.raises(DataError, match=r"data.num_proc=0 is not valid"):
        setup_module_rows({"cache": False, "num_proc": 0}, tok, splits)


@pytest.mark.slow
def test_num_proc_keeps_qa_windows():
    qa = load_examples("qa", {})  # windows: overflow_to_sample_mapping is shifted to the whole batch
    qa.train, qa.validation = qa.train[:60], qa.validation[:20]
    bert = train_tokenizer("bert", texts_for_tokenizer("qa", qa), 300, model_max_length=64)
    encoded = []
    for n in (1, 2):
        dm = FactoryDataModule("qa", {"cache": False, "num_proc": n, "stride": 8}, bert, 4, 40, splits=qa)
        dm.setup()
        encoded.append((dm.train.rows, dm.validation.rows, dm.validation.state))
    assert encoded[0] == encoded[1]


def test_default_cache_dir_follows_the_datasets_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    assert data_cache.default_cache_dir() == tmp_path / "factory_encoded"
    monkeypatch.delenv("HF_DATASETS_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert data_cache.default_cache_dir() == tmp_path / "hf" / "datasets" / "factory_encoded"


@pytest.mark.slow
def test_train_reads_a_dataset_and_the_next_run_reuses_its_encoding(saved, tmp_path, caplog):
    from hydra import compose, initialize_config_dir

    from factory.training.run import train
    from tests.helpers import TINY_RUN

    conf = Path(__file__).resolve().parent.parent / "conf"
    items = [
        "arch=bert",
        "head=seqcls",
        *TINY_RUN,
        "data.max_length=16",
        "data.batch_size=2",
        f"data.path={saved}",
    ]
    items.append(f"data.cache_dir={tmp_path / 'cache'}")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=items)
    caplog.set_level("INFO", logger="factory.data.cache")
    train(cfg, run_dir=tmp_path / "a")
    assert "from the cache" not in caplog.text and "Cached the encoded data" in caplog.text
    caplog.clear()
    train(cfg, run_dir=tmp_path / "b")
    assert "Encoded seqcls data from the cache" in caplog.text
    labels = json.loads((tmp_path / "b" / "model" / "config.json").read_text())["id2label"]
    assert labels == {"0": "neg", "1": "pos"}

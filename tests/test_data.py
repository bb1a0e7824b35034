# pytest tests/test_data.py
"""Data loading, tokenizer training and the DataModule, offline, on the shipped data and tiny files.

Every error case checks that the message names the file, the line and the column a user must fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
import torch

from factory.data import files as data
from factory.data.datasets import generate
from factory.data.files import DataError, DataSplits, default_data_files, texts_for_tokenizer
from factory.data.module import FactoryDataModule
from factory.data.sources import load_examples
from factory.tokenizers.tokenizer import AutoTokenizer, Tokenizer
from factory.tokenizers.training import special_token_ids, train_tokenizer

FAMILIES = ["bert", "gpt2", "bart"]
HEADS = ["seqcls", "qa", "causal_lm"]


def write(tmp_path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return str(path)


def squad(*paragraphs: tuple[str, list[tuple[str, str, int]]]) -> str:
    """SQuAD JSON from (context, [(question, answer, answer_start)])."""
    return json.dumps(
        {
            "data": [
                {
                    "paragraphs": [
                        {
                            "context": context,
                            "qas": [
                                {
                                    "id": f"q{p}-{i}",
                                    "question": q,
                                    "answers": [{"text": a, "answer_start": s}],
                                }
                                for i, (q, a, s) in enumerate(qas)
                            ],
                        }
                        for p, (context, qas) in enumerate(paragraphs)
                    ]
                }
            ]
        },
        indent=1,
    )


@pytest.fixture(scope="module")
def shipped() -> dict[str, DataSplits]:
    return {head: load_examples(head, {}) for head in HEADS}


@pytest.fixture(scope="module")
def tokenizers(shipped) -> dict[tuple[str, str], Tokenizer]:
    """A tokenizer per (family, head), trained on that head's shipped training texts."""
    return {
        (family, head): train_tokenizer(
            family, texts_for_tokenizer(head, shipped[head]), 1000, model_max_length=128
        )
        for family in FAMILIES
        for head in HEADS
    }


# -- the shipped datasets -------------------------------------------------------------------------


def test_shipped_files_are_what_the_generator_writes(tmp_path):
    written = generate.generate(tmp_path)
    assert len(written) == 6
    for path in written:
        relative = path.relative_to(tmp_path)
        shipped = generate.HERE / relative
        assert shipped.is_file(), f"{relative} is not shipped; run python -m factory.data.datasets.generate"
        digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (path, shipped)]
        assert digest[0] == digest[1], f"{relative} differs from the generator's output; regenerate it"
    total = sum(p.stat().st_size for p in written)
    assert total < 600_000, f"shipped data should stay a few hundred KB, is {total} bytes"


def test_default_files_exist_for_every_head():
    for head in HEADS:
        for path in default_data_files(head):
            assert os.path.isfile(path)
    with pytest.raises(DataError, match=r"head='base'.*valid heads"):
        default_data_files("base")


def test_shipped_seqcls(shipped):
    splits = shipped["seqcls"]
    assert splits.labels == ["negative", "positive"]
    assert (len(splits.train), len(splits.validation)) == (2000, 400)
    assert set(splits.train[0]) == {"text", "label"}
    counts = [sum(e["label"] == i for e in splits.train) for i in (0, 1)]
    assert counts == [1000, 1000]
    assert splits.train_file.endswith(os.path.join("seqcls", "train.csv"))


def test_shipped_qa(shipped):
    splits = shipped["qa"]
    assert splits.labels is None
    assert len(splits.train) > 500 and len(splits.validation) > 100
    for example in splits.train + splits.validation:
        start, text = example["answers"]["answer_start"][0], example["answers"]["text"][0]
        assert example["context"][start : start + len(text)] == text
    assert {e["id"] for e in splits.train}.isdisjoint(e["id"] for e in splits.validation)


def test_shipped_causal_lm(shipped):
    splits = shipped["causal_lm"]
    assert len(splits.train) == 220 and len(splits.validation) == 30
    assert all(e["text"].startswith("Once upon a time") for e in splits.train)


def test_texts_for_tokenizer_reads_only_training_texts(shipped):
    texts = list(texts_for_tokenizer("qa", shipped["qa"]))
    contexts = {e["context"] for e in shipped["qa"].train}
    assert len(texts) == len(shipped["qa"].train) + len(contexts)  # each context once
    assert not {e["context"] for e in shipped["qa"].validation} & set(texts)
    assert len(list(texts_for_tokenizer("seqcls", shipped["seqcls"]))) == 2000


# -- seqcls loaders ---------------------------------------------------------------------------------


def test_csv_with_names(tmp_path):
    train = write(tmp_path, "t.csv", 'text,label\n"good, really",pos\nbad,neg\n\nmeh,neutral\n')
    dev = write(tmp_path, "d.csv", "text,label\nfine,pos\n")
    splits = load_examples("seqcls", {"train_file": train, "validation_file": dev})
    assert splits.labels == ["neg", "neutral", "pos"]
    assert splits.train == [
        {"text": "good, really", "label": 2},
        {"text": "bad", "label": 0},
        {"text": "meh", "label": 1},
    ]
    assert splits.validation == [{"text": "fine", "label": 2}]


def test_tsv_with_integer_ids_and_text_pair(tmp_path):
    train = write(tmp_path, "t.tsv", "premise\thypothesis\ty\na\tb\t2\nc\td\t0\n")
    dev = write(tmp_path, "d.tsv", "premise\thypothesis\ty\ne\tf\t1\n")
    cfg = {
        "train_file": train,
        "validation_file": dev,
        "text_column": "premise",
        "text_pair_column": "hypothesis",
        "label_column": "y",
    }
    splits = load_examples("seqcls", cfg)
    # Integer labels are ids and stay ids; names are their strings, "1" included though unseen.
    assert splits.labels == ["0", "1", "2"]
    assert splits.train[0] == {"text": "a", "text_pair": "b", "label": 2}
    assert splits.validation[0]["label"] == 1
    assert list(texts_for_tokenizer("seqcls", splits)) == ["a", "b", "c", "d"]


def test_jsonl_and_json_records(tmp_path):
    train = write(tmp_path, "t.jsonl", '{"sentence": "yes", "label": 1}\n\n{"sentence": "no", "label": 0}\n')
    dev = write(tmp_path, "d.json", json.dumps([{"sentence": "maybe", "label": 1}]))
    splits = load_examples("seqcls", {"train_file": train, "validation_file": dev, "text_column": "sentence"})
    assert splits.labels == ["0", "1"]
    assert [e["label"] for e in splits.train] == [1, 0]
    assert splits.validation == [{"text": "maybe", "label": 1}]


def test_format_overrides_the_extension(tmp_path):
    train = write(tmp_path, "train.data", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    splits = load_examples("seqcls", {"train_file": train, "validation_file": train, "format": "jsonl"})
    assert splits.labels == ["x", "y"]
    with pytest.raises(DataError, match=r"train\.data.*cannot tell the format.*data\.format"):
        load_examples("seqcls", {"train_file": train, "validation_file": train})
    with pytest.raises(DataError, match=r"data\.format='xml'.*valid: \['csv', 'tsv', 'jsonl', 'json'\]"):
        load_examples("seqcls", {"train_file": train, "validation_file": train, "format": "xml"})


def test_unknown_config_keys_are_left_to_the_pipeline(tmp_path):
    splits = load_examples("seqcls", {"batch_size": 8, "max_length": 64, "train_file": None})
    assert splits.labels == ["negative", "positive"]
    keys = data.data_keys("seqcls")
    assert "train_file" in keys and "label_column" in keys and "batch_size" not in keys


def test_column_names_given_as_numbers(tmp_path):
    # Hydra reads `data.label_column=1` as an int; a header is text.
    tsv = write(tmp_path, "t.tsv", "a\t1\nx\tpos\ny\tneg\n")
    cfg = {"train_file": tsv, "validation_file": tsv, "text_column": "a"}
    assert load_examples("seqcls", {**cfg, "label_column": 1}).labels == ["neg", "pos"]
    with pytest.raises(DataError, match=r"t\.tsv, line 1: no column '2' \(data\.label_column\)"):
        load_examples("seqcls", {**cfg, "label_column": 2})


# -- errors -----------------------------------------------------------------------------------------


def seqcls_error(tmp_path, train: str, dev: str = "text,label\nok,a\n", name: str = "t.csv", **cfg):
    train_path = write(tmp_path, name, train)
    dev_path = write(tmp_path, "dev" + os.path.splitext(name)[1], dev)
    with pytest.raises(DataError) as info:
        load_examples("seqcls", {"train_file": train_path, "validation_file": dev_path, **cfg})
    return str(info.value)


def test_missing_column_names_file_column_and_columns(tmp_path):
    message = seqcls_error(tmp_path, "sentence,label\na,x\n")
    assert "t.csv, line 1" in message
    assert "'text' (data.text_column)" in message
    assert "['sentence', 'label']" in message


def test_missing_column_in_jsonl_names_the_line(tmp_path):
    good = '{"text": "a", "label": "x"}\n'
    message = seqcls_error(tmp_path, good + '{"txt": "b", "label": "x"}\n', dev=good, name="t.jsonl")
    assert re.search(r"t\.jsonl, line 2: no column 'text' \(data\.text_column\); the columns are", message)
    assert "['label', 'txt']" in message


def test_unknown_validation_label_names_file_and_line(tmp_path):
    message = seqcls_error(tmp_path, "text,label\na,x\nb,y\n", dev="text,label\nc,x\nd,z\n")
    assert re.search(
        r"dev\.csv, line 3: label 'z' \(column 'label'\) is not one of the training labels", message
    )
    assert "['x', 'y']" in message


@pytest.mark.parametrize("value", ["0.5", "1.0", "-2.", ".5", "1e-3", "3E2"])
def test_float_labels_in_a_csv_are_refused_as_in_jsonl(tmp_path, value):
    message = seqcls_error(tmp_path, f"text,label\na,1\nb,{value}\n")
    assert (
        f"t.csv, line 3: column 'label' holds {value!r}; a label must be a name or an integer id" in message
    )
    good = '{"text": "a", "label": 1}\n'
    jsonl = seqcls_error(tmp_path, good + '{"text": "b", "label": 0.5}\n', dev=good, name="t.jsonl")
    assert "t.jsonl, line 2: column 'label' holds 0.5; a label must be a name or an integer id" in jsonl


def test_label_names_that_merely_hold_digits_stay_names(tmp_path):
    from factory.data.sources import load_examples

    train = write(tmp_path, "t.csv", "text,label\na,4 stars\nb,v1.2\nc,4 stars\n")
    splits = load_examples("seqcls", {"train_file": train, "validation_file": train})
    assert splits.labels == ["4 stars", "v1.2"]


def test_validation_id_beyond_training_ids(tmp_path):
    message = seqcls_error(tmp_path, "text,label\na,0\nb,1\n", dev="text,label\nc,2\n")
    assert "dev.csv, line 2: label '2'" in message and "['0', '1']" in message


@pytest.mark.parametrize(
    "content, expected",
    [
        ("", r"t\.csv is empty"),
        ("  \n\n", r"t\.csv is empty"),
        ("text,label\n", r"t\.csv has no examples"),
        ("text,label\na,x\nb\n", r"t\.csv, line 3: 1 fields but the header has 2"),
        ('text,label\na,x\n"b,x\n', r"t\.csv, line \d: unreadable row"),
        ("text,label\na,x\nb,\n", r"t\.csv, line 3: column 'label' is empty"),
        (
            "text,label,text\na,x,b\n",
            r"t\.csv, line 1: the header names column\(s\) \['text'\] more than once",
        ),
    ],
)
def test_bad_csv(tmp_path, content, expected):
    assert re.search(expected, seqcls_error(tmp_path, content))


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"text": "a", "label": "x"}\n{"text": "b", label: "x"}\n', r"t\.jsonl, line 2: not valid JSON"),
        ('{"text": "a", "label": "x"}\n["b", "x"]\n', r"t\.jsonl, line 2: expected a JSON object per line"),
        ('{"text": 3, "label": "x"}\n', r"t\.jsonl, line 1: column 'text' should hold text, found int"),
        ('{"text": "a", "label": null}\n', r"t\.jsonl, line 1: column 'label' holds None"),
        ('{"text": "a", "label": 1.5}\n', r"t\.jsonl, line 1: column 'label' holds 1\.5"),
        ('{"text": "a", "label": -1}\n', r"t\.jsonl: integer labels are ids and must be >= 0"),
    ],
)
def test_bad_jsonl(tmp_path, content, expected):
    message = seqcls_error(tmp_path, content, dev='{"text": "a", "label": "x"}\n', name="t.jsonl")
    assert re.search(expected, message), message


def test_bad_json_file_names_the_line(tmp_path):
    message = seqcls_error(tmp_path, '[\n{"text": "a",\n "label": }\n]', name="t.json")
    assert re.search(r"t\.json, line 3: not valid JSON", message)


def test_missing_file_and_half_given_files(tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"nope\.csv.*does not exist"):
        load_examples("seqcls", {"train_file": missing, "validation_file": missing})
    with pytest.raises(DataError, match=r"data\.train_file is set but data\.validation_file is not"):
        load_examples("seqcls", {"train_file": missing})
    with pytest.raises(DataError, match=r"head='base' has no data loader"):
        load_examples("base", {})


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\na,x\n\xff\xfe,y\n")
    with pytest.raises(DataError, match=r"t\.csv, line 3: not valid UTF-8"):
        load_examples("seqcls", {"train_file": str(path), "validation_file": str(path)})


# -- qa loaders -------------------------------------------------------------------------------------

CONTEXT = "Anna was born in Paris. Ben works in Oslo."


def test_squad_json_and_jsonl_agree(tmp_path):
    train = write(tmp_path, "t.json", squad((CONTEXT, [("Where was Anna born?", "Paris", 17)])))
    line = {
        "id": "q0-0",
        "question": "Where was Anna born?",
        "context": CONTEXT,
        "answers": {"text": ["Paris"], "answer_start": [17]},
    }
    dev = write(tmp_path, "d.jsonl", json.dumps(line) + "\n")
    splits = load_examples("qa", {"train_file": train, "validation_file": dev})
    assert splits.train == splits.validation == [line]
    # SQuAD's list form of answers in JSONL, and renamed columns.
    renamed = {"q": "Where does Ben work?", "c": CONTEXT, "a": [{"text": "Oslo", "answer_start": 37}]}
    other = write(tmp_path, "r.jsonl", json.dumps(renamed) + "\n")
    cfg = {"question_column": "q", "context_column": "c", "answers_column": "a"}
    splits = load_examples("qa", {"train_file": other, "validation_file": other, **cfg})
    assert splits.train[0]["answers"] == {"text": ["Oslo"], "answer_start": [37]}
    assert splits.train[0]["id"] == "1"  # no id column: the line number


@pytest.mark.parametrize(
    "record, expected",
    [
        (
            {"question": "q", "context": CONTEXT, "answers": {"text": ["Rome"], "answer_start": [17]}},
            r"t\.jsonl, line 1: answer 'Rome' is not at answer_start=17 of the context \(found 'Pari' there\)",
        ),
        (
            {"question": "q", "context": CONTEXT},
            r"t\.jsonl, line 1: no column 'answers' \(data\.answers_column\)",
        ),
        (
            {"question": "q", "context": CONTEXT, "answers": [{"text": "Paris"}]},
            r"t\.jsonl, line 1: each answer in column 'answers' needs 'text' and 'answer_start'",
        ),
        (
            {"question": "q", "context": CONTEXT, "answers": {"text": ["Paris"], "answer_start": [-1]}},
            r"t\.jsonl, line 1: answer_start -1 in column 'answers' must be an integer >= 0",
        ),
    ],
)
def test_bad_qa_jsonl(tmp_path, record, expected):
    path = write(tmp_path, "t.jsonl", json.dumps(record) + "\n")
    with pytest.raises(DataError) as info:
        load_examples("qa", {"train_file": path, "validation_file": path})
    assert re.search(expected, str(info.value)), str(info.value)


def test_bad_squad_names_the_question(tmp_path):
    path = write(tmp_path, "t.json", squad((CONTEXT, [("q", "Paris", 17), ("q2", "Oslo", 3)])))
    with pytest.raises(DataError, match=r"t\.json, data\[0\]\.paragraphs\[0\]\.qas\[1\]: answer 'Oslo'"):
        load_examples("qa", {"train_file": path, "validation_file": path})
    path = write(tmp_path, "u.json", json.dumps({"version": 1}))
    with pytest.raises(DataError, match=r"u\.json: expected SQuAD format"):
        load_examples("qa", {"train_file": path, "validation_file": path})
    path = write(
        tmp_path,
        "v.json",
        squad((CONTEXT, [("q", "Paris", 17), ("q2", "Paris", 17)])).replace("q0-1", "q0-0"),
    )
    with pytest.raises(DataError, match=r"v\.json: question id 'q0-0' appears twice"):
        load_examples("qa", {"train_file": path, "validation_file": path})


# -- causal_lm loaders ------------------------------------------------------------------------------


def test_text_documents_and_jsonl(tmp_path):
    path = write(tmp_path, "t.txt", "\n\nFirst doc,\nsecond line.\n\n\n  \nSecond doc.\n")
    splits = load_examples("causal_lm", {"train_file": path, "validation_file": path})
    assert splits.train == [{"text": "First doc,\nsecond line."}, {"text": "Second doc."}]
    jsonl = write(tmp_path, "t.jsonl", '{"body": "One."}\n{"body": "Two."}\n')
    splits = load_examples(
        "causal_lm", {"train_file": jsonl, "validation_file": jsonl, "text_column": "body"}
    )
    assert [e["text"] for e in splits.train] == ["One.", "Two."]
    with pytest.raises(DataError, match=r"t\.jsonl, line 1: no column 'text' \(data\.text_column\)"):
        load_examples("causal_lm", {"train_file": jsonl, "validation_file": jsonl})
    with pytest.raises(DataError, match=r"e\.txt is empty"):
        empty = write(tmp_path, "e.txt", "\n \n")
        load_examples("causal_lm", {"train_file": empty, "validation_file": empty})


# -- tokenizer training -----------------------------------------------------------------------------

SAMPLES = [
    ("Where was Anna Keller born?", "Anna Keller was born in Paris in 1999. She works as a doctor."),
    ("The movie was great!", None),
    ("Unseen wörds: zygote, 42, ☃ and <mask> [MASK] <|endoftext|>", None),
    ("  leading spaces", "trailing  "),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_tokenizer_round_trips_through_transformers(tmp_path, tokenizers, family):
    transformers = pytest.importorskip("transformers")
    tok = tokenizers[(family, "qa")]
    tok.save_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = AutoTokenizer.from_pretrained(tmp_path)
    assert len(theirs) == len(ours) == len(tok)
    for text, pair in SAMPLES:
        expected = theirs(text, pair, return_offsets_mapping=True)
        for candidate in (tok, ours):
            got = candidate(text, pair, return_offsets_mapping=True)
            assert set(got) == set(expected)
            for key in expected:
                assert [tuple(x) if isinstance(x, list) else x for x in got[key]] == [
                    tuple(x) if isinstance(x, list) else x for x in expected[key]
                ], key
        assert theirs.decode(expected["input_ids"]) == ours.decode(expected["input_ids"])
    assert theirs.pad_token_id == tok.pad_token_id and theirs.eos_token_id == tok.eos_token_id
    assert theirs.model_max_length == tok.model_max_length == 128


def test_bert_tokenizer_layout(tokenizers):
    tok = tokenizers[("bert", "seqcls")]
    vocab = tok.get_vocab()
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    enc = tok("Great Movie", "Bad")
    assert tok.convert_ids_to_tokens(enc["input_ids"])[0] == "[CLS]"
    assert enc["token_type_ids"][-2:] == [1, 1]
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == "great movie bad"  # lowercased
    assert special_token_ids(tok) == {"pad_token_id": 0}  # no bos/eos: the config keeps its defaults


def test_gpt2_tokenizer_layout(tokenizers):
    tok = tokenizers[("gpt2", "causal_lm")]
    assert tok.pad_token is None and tok.eos_token == tok.bos_token == "<|endoftext|>"
    eos = tok.eos_token_id
    text = "Once upon a time, a fox. Ünïcödé ☃"
    ids = tok(text)["input_ids"]
    assert eos not in ids  # no template: GPT-2 adds no special tokens
    assert tok.decode(ids) == text  # byte-level: lossless
    assert tok("upon")["input_ids"] != tok(" upon")["input_ids"]  # add_prefix_space=False
    assert special_token_ids(tok) == {"pad_token_id": eos, "bos_token_id": eos, "eos_token_id": eos}


def test_bart_tokenizer_layout(tokenizers):
    tok = tokenizers[("bart", "qa")]
    vocab = tok.get_vocab()
    assert [vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert vocab["<mask>"] == len(tok) - 1
    ids = tok("Where?", "Paris.")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and ids.count(2) == 3  # <s> A </s></s> B </s>
    assert special_token_ids(tok) == {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}


def test_train_tokenizer_errors():
    with pytest.raises(ValueError, match=r"model_type='xlnet'.*valid: \[.*'bert'.*'gpt2'.*\]"):
        train_tokenizer("xlnet", ["a"], 1000)
    with pytest.raises(ValueError, match=r"vocab_size=100 is too small.*gpt2.*at least"):
        train_tokenizer("gpt2", ["a"], 100)
    with pytest.raises(ValueError, match="No texts"):
        train_tokenizer("bert", iter([]), 1000)


def test_vocab_size_is_an_upper_bound(shipped):
    small = train_tokenizer("bert", texts_for_tokenizer("seqcls", shipped["seqcls"]), 120)
    assert len(small) <= 120
    bart = train_tokenizer("bart", texts_for_tokenizer("seqcls", shipped["seqcls"]), 300)
    assert len(bart) <= 300


# -- the DataModule ---------------------------------------------------------------------------------

EXPECTED_KEYS = {
    "seqcls": {"input_ids", "attention_mask", "labels"},
    "qa": {"input_ids", "attention_mask", "start_positions", "end_positions"},
    "causal_lm": {"input_ids", "attention_mask", "labels"},
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", HEADS)
def test_datamodule_batches(shipped, tokenizers, family, head):
    tok = tokenizers[(family, head)]
    dm = FactoryDataModule(head, {}, tok, batch_size=4, max_length=48, seed=0, splits=shipped[head])
    dm.setup("fit")
    train, val = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))
    type_ids = {"token_type_ids"} if family == "bert" else set()
    assert set(train) == EXPECTED_KEYS[head] | type_ids
    assert set(val) == EXPECTED_KEYS[head] | type_ids | ({"window_index"} if head == "qa" else set())
    pad = special_token_ids(tok)["pad_token_id"]
    for batch in (train, val):
        assert all(t.dtype == torch.long for t in batch.values())
        rows, length = batch["input_ids"].shape
        assert rows == 4 and length <= 48
        assert batch["attention_mask"].shape == (rows, length)
        padding = batch["attention_mask"] == 0
        assert (batch["input_ids"][padding] == pad).all()
        if "token_type_ids" in batch:
            assert batch["token_type_ids"].shape == (rows, length)
        if head == "seqcls":
            assert batch["labels"].shape == (rows,) and set(batch["labels"].tolist()) <= {0, 1}
        elif head == "qa":
            assert batch["start_positions"].shape == batch["end_positions"].shape == (rows,)
            assert (batch["start_positions"] <= batch["end_positions"]).all()
        else:
            assert length == 48  # packed: every block but the very last is full
            expected = batch["input_ids"].masked_fill(padding, -100)
            assert torch.equal(batch["labels"], expected)
    if head == "qa":
        assert val["window_index"].tolist() == [0, 1, 2, 3]
        assert len(dm.validation.state["input_ids"]) == len(dm.validation.rows) >= len(dm.validation.examples)
        assert dm.validation.examples == shipped["qa"].validation
    assert dm.label_names == (["negative", "positive"] if head == "seqcls" else None)


def test_datamodule_qa_windows_carry_the_answer(shipped, tokenizers):
    tok = tokenizers[("bert", "qa")]
    dm = FactoryDataModule("qa", {"stride": 8}, tok, batch_size=8, max_length=40, splits=shipped["qa"])
    dm.setup()
    windows = dm.validation.state
    assert len(windows["input_ids"]) > len(dm.validation.examples)  # long contexts became several windows
    found = set()
    for row, example in enumerate(windows["example_index"]):
        start, end = windows["start_positions"][row], windows["end_positions"][row]
        if start == 0:
            continue
        text = dm.validation.examples[example]["answers"]["text"][0]
        assert tok.decode(windows["input_ids"][row][start : end + 1]) == text.lower()
        found.add(example)
    assert len(found) == len(dm.validation.examples)


def test_datamodule_causal_lm_packing(tokenizers):
    tok = tokenizers[("gpt2", "causal_lm")]
    splits = DataSplits([{"text": "one two"}, {"text": "three"}], [{"text": "four five six"}])
    dm = FactoryDataModule("causal_lm", {}, tok, batch_size=8, max_length=4, splits=splits)
    dm.setup()
    stream = tok("one two")["input_ids"] + [tok.eos_token_id] + tok("three")["input_ids"] + [tok.eos_token_id]
    assert [r["input_ids"] for r in dm.train.rows] == [
        stream[i : i + 4] for i in range(0, len(stream), 4) if len(stream[i : i + 4]) > 1
    ]
    bert = tokenizers[("bert", "causal_lm")]
    dm = FactoryDataModule("causal_lm", {}, bert, batch_size=8, max_length=512, splits=splits)
    dm.setup()
    assert dm.train.rows[0]["input_ids"].count(bert.sep_token_id) == 2  # BERT separates with [SEP]


def test_datamodule_shuffle_is_seeded(shipped, tokenizers):
    tok = tokenizers[("gpt2", "seqcls")]

    def first_batches(seed):
        dm = FactoryDataModule(
            "seqcls", {}, tok, batch_size=16, max_length=32, seed=seed, splits=shipped["seqcls"]
        )
        dm.setup()
        return [b["input_ids"] for b, _ in zip(dm.train_dataloader(), range(3))]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, c))


def test_datamodule_loads_data_itself_and_checks_arguments(tokenizers, tmp_path):
    tok = tokenizers[("bert", "seqcls")]
    dm = FactoryDataModule("seqcls", {}, tok, batch_size=2, max_length=16)
    assert dm.label_names == ["negative", "positive"] and dm.num_labels == 2
    assert dm.id2label == {0: "negative", 1: "positive"}
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match=r"head='base' has no data module"):
        FactoryDataModule("base", {}, tok, batch_size=2, max_length=16)
    with pytest.raises(ValueError, match=r"batch_size=0 must be a positive integer"):
        FactoryDataModule("seqcls", {}, tok, batch_size=0, max_length=16)
    bad = write(tmp_path, "bad.csv", "text\nx\n")
    dm = FactoryDataModule("seqcls", {"train_file": bad, "validation_file": bad}, tok, 2, 16)
    with pytest.raises(DataError, match=r"bad\.csv, line 1: no column 'label'"):
        dm.setup()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", HEADS)
def test_batches_feed_the_models(shipped, tokenizers, family, head):
    """The batch keys are the forward arguments of every architecture's head: the model takes them as
    they are (bar qa's `window_index`, which is for the metric) and returns a finite loss."""
    from factory.build import build_model
    from factory.registry import config_class

    tok = tokenizers[(family, head)]
    dm = FactoryDataModule(head, {}, tok, batch_size=3, max_length=32, splits=shipped[head])
    dm.setup()
    arch = dict(
        model_type=family,
        num_hidden_layers=1,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    fields = set(config_class(family).field_names())
    extra = {k: v for k, v in special_token_ids(tok).items() if k in fields}
    if head == "seqcls":
        extra["id2label"] = dict(enumerate(dm.label_names))
    if head == "causal_lm" and "is_decoder" in fields:
        extra["is_decoder"] = True
    _, model = build_model(arch, head, seed=0, vocab_size=len(tok), **extra)
    for batch in (next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))):
        batch.pop("window_index", None)
        out = model(**batch)
        assert torch.isfinite(out.loss)


# ---- a validation split carved out of the training file ----------------------------------------------
def test_validation_fraction_carves_a_seeded_split_out_of_the_training_file():
    train_file = default_data_files("seqcls")[0]
    whole = load_examples("seqcls", {"train_file": train_file, "validation_file": train_file}).train
    settings = {"train_file": train_file, "validation_fraction": 0.1}
    splits = load_examples("seqcls", settings)
    assert len(splits.validation) == round(0.1 * len(whole)) and len(splits.train) + len(
        splits.validation
    ) == len(whole)
    key = lambda e: json.dumps(e, sort_keys=True)  # noqa: E731
    assert sorted(map(key, splits.train + splits.validation)) == sorted(map(key, whole))
    again = load_examples("seqcls", settings)
    assert again.validation == splits.validation  # the same split every time
    other = load_examples("seqcls", {**settings, "validation_seed": 1})
    assert other.validation != splits.validation
    assert "validation_fraction=0.1" in splits.validation_file


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"validation_fraction": 0.1}, r"carves the validation split out of data.train_file"),
        ({"train_file": "T", "validation_file": "T", "validation_fraction": 0.1}, "no data.validation_file"),
        (
            {"train_file": "T", "validation_fraction": 1.5},
            r"validation_fraction=1.5 is not valid: .*\(0, 1\)",
        ),
        ({"train_file": "T", "validation_fraction": 0.1, "validation_seed": "x"}, "validation_seed='x'"),
        (
            {"train_file": "T"},
            r"data.validation_file is not: name both files or data.validation_fraction=0.1",
        ),
    ],
)
def test_validation_fraction_errors_name_the_keys(settings, message):
    train_file = default_data_files("seqcls")[0]
    settings = {k: (train_file if v == "T" else v) for k, v in settings.items()}
    with pytest.raises(DataError, match=message):
        load_examples("seqcls", settings)


def test_a_file_of_one_example_cannot_be_split(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("text,label\na fine film,positive\n")
    with pytest.raises(DataError, match=r"one.csv: 1 example\(s\) cannot be split"):
        load_examples("seqcls", {"train_file": str(path), "validation_fraction": 0.5})


def test_train_py_runs_on_a_training_file_alone(tmp_path):
    from factory.training.run import train
    from tests.test_train import tiny_cfg

    train_file = default_data_files("seqcls")[0]
    cfg = tiny_cfg("bert", "seqcls", f"data.train_file={train_file}", "data.validation_fraction=0.2")
    train(cfg, run_dir=tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["global_step"] == 3 and "val/accuracy" in results["final_metrics"]

# pytest tests/test_distilbert.py   (add -m "not slow" to skip the train.py runs)
"""DistilBERT against transformers: every head both ways on unusual configs, losses, its own parameter
names under the common ones, sinusoidal positions, no causal LM, a student made from a BERT checkpoint,
its tokenizer, and train.py from scratch and from a checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from torch.testing import assert_close

import factory
from factory import ConfigError, DistilBertConfig, registry
from factory.build import build_config
from factory.checkpoints.weights import select_layers
from factory.tokenizers.tokenizer import AutoTokenizer
from factory.tokenizers.training import train_tokenizer
from factory.training.plan import resolve
from factory.training.run import train
from tests.helpers import TINY_RUN

REPO = Path(__file__).resolve().parent.parent
HF_CLASSES = {
    "base": transformers.DistilBertModel,
    "seqcls": transformers.DistilBertForSequenceClassification,
    "qa": transformers.DistilBertForQuestionAnswering,
    "token_cls": transformers.DistilBertForTokenClassification,
    "masked_lm": transformers.DistilBertForMaskedLM,
    "multiple_choice": transformers.DistilBertForMultipleChoice,
}
CONFIGS = {
    "odd": dict(dim=36, n_heads=3, n_layers=2, hidden_dim=37, max_position_embeddings=40),
    "sinusoidal": dict(
        dim=32,
        n_heads=4,
        n_layers=3,
        hidden_dim=64,
        activation="relu",
        sinusoidal_pos_embds=True,
        pad_token_id=1,
        tie_word_embeddings=False,
        max_position_embeddings=30,
    ),
}
ATTN = "eager"


def hf_config(head: str, **kw) -> transformers.DistilBertConfig:
    kw = {"vocab_size": 99, **kw}
    config = transformers.DistilBertConfig(num_labels=2 if head == "qa" else 3, **kw)
    config._attn_implementation = ATTN
    return config


@torch.no_grad()
def off_init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def inputs(head: str, pad: int, seed: int = 0) -> dict:
    """Three rows (full, right-padded, left-padded), with token type ids that both sides must ignore."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 99, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, :3] = 0
    ids = ids.masked_fill(mask == 0, pad)
    out = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": (torch.arange(11) >= 5).long().expand(3, -1),
    }
    if head == "multiple_choice":  # (B, C, T): the three rows are one example's choices, twice
        out = {k: v[None].expand(2, -1, -1).clone() for k, v in out.items()}
        out["input_ids"][1, 0, 5] = 7
    g = torch.Generator().manual_seed(seed + 1)
    ids, mask = out["input_ids"], out["attention_mask"]
    if head == "seqcls":
        out["labels"] = torch.randint(0, 3, (3,), generator=g)
    elif head == "qa":
        out["start_positions"] = torch.tensor([1, 3, 20])
        out["end_positions"] = torch.tensor([4, 6, 2])
    elif head == "token_cls":
        out["labels"] = torch.randint(0, 3, ids.shape, generator=g).masked_fill(mask == 0, -100)
    elif head == "masked_lm":
        chosen = (torch.rand(ids.shape, generator=g) < 0.3) & (mask == 1)
        chosen[0, 1] = True
        out["labels"] = ids.masked_fill(~chosen, -100)
    elif head == "multiple_choice":
        out["labels"] = torch.tensor([0, 2])
    return out


def compare(ours, theirs, mask: torch.Tensor) -> None:
    valid = mask.bool()
    compared = []
    for name in ("last_hidden_state", "logits", "start_logits", "end_logits", "loss"):
        a, b = getattr(ours, name, None), getattr(theirs, name, None)
        if a is None or b is None:
            continue
        if a.dim() >= 2 and a.shape[:2] == mask.shape:
            a, b = a[valid], b[valid]  # padding positions carry no meaning
        assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        compared.append(name)
    assert compared


def run_both(ours, theirs, head: str, config: dict) -> None:
    batch = inputs(head, config.get("pad_token_id", 0))
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    compare(a, b, batch["attention_mask"])
    assert (a.loss is not None) == (head != "base")


@pytest.mark.parametrize("head", list(HF_CLASSES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_checkpoint_loads_to_equal_outputs_and_losses(tmp_path, head, name):
    torch.manual_seed(0)
    hf = off_init(HF_CLASSES[head](hf_config(head, **CONFIGS[name])), seed=1)
    hf.save_pretrained(tmp_path)
    ours, info = registry.model_class("distilbert", head).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    run_both(ours, hf, head, CONFIGS[name])


@pytest.mark.parametrize("head", list(HF_CLASSES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_what_we_save_loads_in_transformers(tmp_path, head, name):
    torch.manual_seed(0)
    config = DistilBertConfig.from_dict(hf_config(head, **CONFIGS[name]).to_dict())
    ours = off_init(registry.model_class("distilbert", head)(config), seed=2)
    ours.save_pretrained(tmp_path)
    assert "distilbert.transformer.layer.0.attention.q_lin.weight" in load_file(
        tmp_path / "model.safetensors"
    ) or (head == "base")
    hf, info = HF_CLASSES[head].from_pretrained(
        tmp_path, output_loading_info=True, dtype=torch.float32, attn_implementation=ATTN
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    run_both(ours, hf.eval(), head, CONFIGS[name])


def test_sinusoidal_positions_are_hfs_and_fixed(tmp_path):
    from transformers.models.distilbert.modeling_distilbert import create_sinusoidal_embeddings

    config = DistilBertConfig.from_dict({}, **{**CONFIGS["sinusoidal"], "vocab_size": 99})
    model = registry.model_class("distilbert", "base")(config)
    table = model.embeddings.position_embeddings.weight
    assert_close(table, create_sinusoidal_embeddings(30, 32, torch.empty(30, 32)), atol=1e-6, rtol=0)
    assert not table.requires_grad
    model.save_pretrained(tmp_path)  # and stay fixed when loaded
    loaded = registry.model_class("distilbert", "base").from_pretrained(tmp_path)
    assert not loaded.embeddings.position_embeddings.weight.requires_grad
    learned = registry.model_class("distilbert", "base")(config.replace(sinusoidal_pos_embds=False))
    assert learned.embeddings.position_embeddings.weight.requires_grad


# ---- names -------------------------------------------------------------------------------------------
def test_common_names_set_distilberts_own_fields(tmp_path):
    config = DistilBertConfig.from_dict(
        {}, num_hidden_layers=4, hidden_size=64, num_attention_heads=8, intermediate_size=100
    )
    assert (config.n_layers, config.dim, config.n_heads, config.hidden_dim) == (4, 64, 8, 100)
    assert config.num_hidden_layers == 4 and config.hidden_size == 64
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["n_layers"] == 4 and "num_hidden_layers" not in written
    assert transformers.AutoConfig.from_pretrained(tmp_path).num_hidden_layers == 4
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        base = build_config(compose("train", overrides=["arch=distilbert", "~experiment"]).arch)
        # Its own names take a `+` (the YAML is written in common names) and win over them.
        cfg = compose("train", overrides=["arch=distilbert", "arch.num_hidden_layers=4", "+arch.dim=96"])
    assert (base.n_layers, base.dim, base.hidden_dim) == (6, 768, 3072)
    assert (build_config(cfg.arch).n_layers, build_config(cfg.arch).dim) == (4, 96)


@pytest.mark.parametrize(
    "values, words",
    [
        (dict(n_heads=5), ["n_heads=5", "divisor of dim=768"]),
        (dict(activation="gelu2"), ["activation='gelu2'", "'gelu'"]),
        (dict(seq_classif_dropout=1.5), ["seq_classif_dropout=1.5", "probability"]),
    ],
)
def test_validation_errors_name_field_value_and_choices(values, words):
    with pytest.raises(ConfigError) as e:
        DistilBertConfig.from_dict({}, **values)
    for word in words:
        assert word in str(e.value)


def test_no_causal_lm_as_in_transformers():
    matrix = registry.model_matrix()
    assert "causal_lm" not in matrix["distilbert"] and "causal_lm" in matrix["roberta"]
    assert set(matrix["distilbert"]) == {"base", "seqcls", "qa", "token_cls", "masked_lm", "multiple_choice"}
    with pytest.raises(registry.RegistryError, match=r"Architectures that have head 'causal_lm': \[.*'bert'"):
        registry.model_class("distilbert", "causal_lm")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["arch=distilbert", "head=causal_lm"])
    with pytest.raises(ConfigError, match="Valid heads for 'distilbert'"):
        resolve(cfg)


# ---- a student from a BERT checkpoint ----------------------------------------------------------------
def bert_folder(path: Path) -> transformers.BertForMaskedLM:
    """A 4-layer BERT pretraining-style checkpoint (MLM head, pooler) with no token-type contribution."""
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_attention_heads=4, num_hidden_layers=4, intermediate_size=37,
        max_position_embeddings=40, type_vocab_size=2,
    )  # fmt: skip
    config._attn_implementation = ATTN
    torch.manual_seed(0)
    bert = off_init(transformers.BertForMaskedLM(config), seed=3)
    with torch.no_grad():  # DistilBERT has no token types: BERT's type-0 row is what it drops
        bert.bert.embeddings.token_type_embeddings.weight.zero_()
    bert.save_pretrained(path)
    return bert


def student_config(n_layers: int) -> DistilBertConfig:
    return DistilBertConfig.from_dict(
        {}, vocab_size=99, dim=32, n_heads=4, n_layers=n_layers, hidden_dim=37, max_position_embeddings=40
    )


@pytest.mark.parametrize("config", [None, student_config(4)], ids=["bert_config_json", "given"])
def test_a_bert_checkpoint_makes_an_equal_distilbert(tmp_path, config):
    bert = bert_folder(tmp_path)
    ours, info = registry.model_class("distilbert", "masked_lm").from_pretrained(
        tmp_path, config=config, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    # BERT's config.json reads as the student's: its common names and renamed keys, nothing of its own.
    assert ours.config.to_dict() == student_config(4).replace(architectures=None).to_dict()
    batch = inputs("masked_lm", pad=0)
    batch.pop("token_type_ids")
    with torch.no_grad():
        compare(ours(**batch), bert(**batch), batch["attention_mask"])


def test_every_other_bert_layer_as_distilberts_authors_chose(tmp_path):
    # bert-base's 12 layers into 6: the layers extract_distilbert.py copies.
    assert select_layers(12, 6, "even") == [0, 2, 4, 7, 9, 11]
    bert = bert_folder(tmp_path).state_dict()
    model, info = registry.model_class("distilbert", "masked_lm").from_pretrained(
        tmp_path, config=student_config(2), layers="even", output_loading_info=True
    )
    assert info["kept_layers"] == {"distilbert.transformer.layer": [0, 3]} and not info["missing_keys"]
    ours = model.state_dict()
    # The authors' table, written out by hand: student name <- teacher name.
    copied = {
        "distilbert.embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
        "distilbert.embeddings.position_embeddings.weight": "bert.embeddings.position_embeddings.weight",
        "distilbert.embeddings.LayerNorm.weight": "bert.embeddings.LayerNorm.weight",
        "vocab_transform.weight": "cls.predictions.transform.dense.weight",
        "vocab_layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
        "vocab_projector.bias": "cls.predictions.bias",
    }
    parts = {"attention.q_lin": "attention.self.query", "attention.k_lin": "attention.self.key",
             "attention.v_lin": "attention.self.value", "attention.out_lin": "attention.output.dense",
             "sa_layer_norm": "attention.output.LayerNorm", "ffn.lin1": "intermediate.dense",
             "ffn.lin2": "output.dense", "output_layer_norm": "output.LayerNorm"}  # fmt: skip
    for student, teacher in enumerate([0, 3]):
        for ours_part, bert_part in parts.items():
            for p in ("weight", "bias"):
                copied[f"distilbert.transformer.layer.{student}.{ours_part}.{p}"] = (
                    f"bert.encoder.layer.{teacher}.{bert_part}.{p}"
                )
    for student, teacher in copied.items():
        assert torch.equal(ours[student], bert[teacher]), student
    assert set(info["unexpected_keys"]) == {
        k for k in load_file(tmp_path / "model.safetensors") if ".layer.1." in k or ".layer.2." in k
    }


# ---- tokenizer ---------------------------------------------------------------------------------------
def test_trained_tokenizer_is_a_distilbert_tokenizer_without_token_types(tmp_path):
    texts = ["The movie was great fun.", "A dull and slow film.", "Great acting, weak plot!"] * 20
    tok = train_tokenizer("distilbert", texts, 100)
    assert "token_type_ids" not in tok("great", "dull")
    tok.save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(hf).__name__.startswith("DistilBertTokenizer")
    for args in (("a great movie",), ("a great movie", "dull plot")):
        assert tok(*args)["input_ids"] == hf(*args)["input_ids"]
        assert "token_type_ids" not in hf(*args)


# ---- train.py ----------------------------------------------------------------------------------------
def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


MAX_LENGTH = {"qa": ["data.max_length=128", "data.stride=32"], "masked_lm": ["data.max_length=32"],
              "multiple_choice": ["data.max_length=32"], "token_cls": ["data.max_length=32"],
              "seqcls": ["data.max_length=32"]}  # fmt: skip


def check_export(run: Path, head: str) -> None:
    """The exported model is DistilBERT's, sized by the tokenizer, and gives transformers' outputs."""
    config = json.loads((run / "model" / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(run / "model")
    assert (
        config["model_type"] == "distilbert" and config["vocab_size"] == len(tok) and config["n_layers"] == 1
    )
    ours = registry.model_class("distilbert", head).from_pretrained(run / "model")
    theirs = HF_CLASSES[head].from_pretrained(run / "model", attn_implementation=ATTN).eval()
    batch = dict(
        tok(["a great movie", "The pacing was not charming at all."], padding=True, return_tensors="pt")
    )
    if head == "multiple_choice":
        batch = {k: v[None] for k, v in batch.items()}
    with torch.no_grad():
        compare(ours(**batch), theirs(**batch), batch["attention_mask"])


def test_train_seqcls_from_scratch(tmp_path):
    value = train(
        compose_cfg("arch=distilbert", "head=seqcls", *TINY_RUN, *MAX_LENGTH["seqcls"]), run_dir=tmp_path
    )
    assert 0.0 <= value <= 1.0
    check_export(tmp_path, "seqcls")


@pytest.mark.slow
@pytest.mark.parametrize("head", ["token_cls", "masked_lm", "multiple_choice"])
def test_train_the_other_heads(tmp_path, head):
    # seqcls and qa of every architecture run in tests/test_train.py.
    train(compose_cfg("arch=distilbert", f"head={head}", *TINY_RUN, *MAX_LENGTH[head]), run_dir=tmp_path)
    check_export(tmp_path, head)


@pytest.mark.slow
def test_train_py_command_line(tmp_path):
    cmd = [sys.executable, "train.py", "arch=distilbert", "head=qa", *TINY_RUN, *MAX_LENGTH["qa"],
           "arch.sinusoidal_pos_embds=true", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["sinusoidal_pos_embds"] is True
    check_export(tmp_path, "qa")


@pytest.mark.slow
def test_init_pretrained_from_a_transformers_folder(tmp_path_factory, tmp_path):
    from factory.data.files import texts_for_tokenizer
    from factory.data.sources import load_examples

    folder = tmp_path_factory.mktemp("distilbert")
    tok = train_tokenizer("distilbert", texts_for_tokenizer("seqcls", load_examples("seqcls", {})), 300)
    config = hf_config("base", dim=32, n_heads=2, n_layers=3, hidden_dim=37, max_position_embeddings=130,
                       vocab_size=len(tok))  # fmt: skip
    torch.manual_seed(0)
    off_init(transformers.DistilBertModel(config), seed=8).save_pretrained(folder)
    tok.save_pretrained(folder)
    overrides = ["head=seqcls", *[o for o in TINY_RUN if not o.startswith("arch.")], *MAX_LENGTH["seqcls"],
                 "init=pretrained", f"init.name_or_path={folder}", "arch=distilbert", "arch.num_hidden_layers=2",
                 "init.layers=last", "arch.seq_classif_dropout=0.3", "optim.lr=1e-12"]  # fmt: skip
    train(compose_cfg(*overrides), run_dir=tmp_path, overrides=overrides)
    report = json.loads((tmp_path / "load_report.json").read_text())
    assert report["model_class"] == "DistilBertForSequenceClassification"
    assert report["kept_layers"] == {"distilbert.transformer.layer": [1, 2]}
    assert sorted(report["newly_initialised"]) == sorted(
        f"{m}.{p}" for m in ("pre_classifier", "classifier") for p in ("weight", "bias")
    )
    written = json.loads((tmp_path / "model" / "config.json").read_text())
    assert written["n_layers"] == 2 and written["seq_classif_dropout"] == 0.3
    start = transformers.DistilBertModel.from_pretrained(folder).state_dict()
    trained = factory.AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").state_dict()
    key = "transformer.layer.{}.attention.q_lin.weight"
    assert_close(trained["distilbert." + key.format(0)], start[key.format(1)], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def bert_with_tokenizer(tmp_path_factory) -> Path:
    """A 4-layer BERT pretraining checkpoint (MLM head, pooler, token types) with its tokenizer."""
    from factory.data.files import texts_for_tokenizer
    from factory.data.sources import load_examples

    path = tmp_path_factory.mktemp("bert")
    tok = train_tokenizer("bert", texts_for_tokenizer("causal_lm", load_examples("causal_lm", {})), 300)
    config = transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_attention_heads=2, num_hidden_layers=4,
                                     intermediate_size=37, max_position_embeddings=130)  # fmt: skip
    torch.manual_seed(0)
    off_init(transformers.BertForMaskedLM(config), seed=9).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def student_overrides(folder: Path) -> list[str]:
    return ["head=masked_lm", *[o for o in TINY_RUN if not o.startswith("arch.")], *MAX_LENGTH["masked_lm"],
            "init=pretrained", f"init.name_or_path={folder}", "arch=distilbert", "arch.num_hidden_layers=2",
            "init.layers=even"]  # fmt: skip


def test_init_pretrained_of_a_bert_folder_plans_a_distilbert(bert_with_tokenizer, monkeypatch):
    monkeypatch.setattr("factory.data.sources.load_examples", lambda *a, **k: pytest.fail("data was read"))
    overrides = student_overrides(bert_with_tokenizer)
    plan = resolve(compose_cfg(*overrides), overrides)
    assert plan.config.model_type == "distilbert" and plan.config.architectures is None
    assert (plan.config.n_layers, plan.config.dim, plan.config.n_heads, plan.config.hidden_dim) == (
        2,
        32,
        2,
        37,
    )
    with pytest.raises(
        ConfigError, match=r"arch=gpt2 disagrees .* \(or one built from it: \['distilbert'\]\)"
    ):
        overrides = ["init=pretrained", f"init.name_or_path={bert_with_tokenizer}", "arch=gpt2"]
        resolve(compose_cfg(*overrides), overrides)


@pytest.mark.slow
def test_train_a_distilbert_from_every_other_layer_of_a_bert(bert_with_tokenizer, tmp_path):
    overrides = [*student_overrides(bert_with_tokenizer), "optim.lr=1e-12"]
    train(compose_cfg(*overrides), run_dir=tmp_path, overrides=overrides)
    report = json.loads((tmp_path / "load_report.json").read_text())
    assert report["model_class"] == "DistilBertForMaskedLM"
    # Every weight of the student comes from the teacher, its MLM head included.
    assert (
        report["kept_layers"] == {"distilbert.transformer.layer": [0, 3]}
        and report["newly_initialised"] == []
    )
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model_type"] == "distilbert" and config["n_layers"] == 2 and config["dim"] == 32
    teacher = load_file(bert_with_tokenizer / "model.safetensors")
    student = load_file(tmp_path / "model" / "model.safetensors")
    for ours, bert in [("distilbert.transformer.layer.1.attention.q_lin.weight", "bert.encoder.layer.3.attention.self.query.weight"),
                       ("vocab_transform.weight", "cls.predictions.transform.dense.weight")]:  # fmt: skip
        assert_close(student[ours], teacher[bert], atol=1e-6, rtol=0)
    theirs = transformers.DistilBertForMaskedLM.from_pretrained(
        tmp_path / "model", attn_implementation=ATTN
    ).eval()
    ours = registry.model_class("distilbert", "masked_lm").from_pretrained(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    batch = dict(tok(["a great [MASK] today", "the pacing was slow"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        compare(ours(**batch), theirs(**batch), batch["attention_mask"])

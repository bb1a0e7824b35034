# pytest tests/test_roberta.py   (add -m "not slow" to skip the train.py runs)
"""RoBERTa against transformers: every head both ways on unusual configs, losses, positions counted from
the input ids, the KV cache, its tokenizer, its config, and train.py from scratch and from a checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from torch.testing import assert_close

import factory
from factory import ConfigError, RobertaConfig, registry
from factory.build import build_config
from factory.models.roberta import position_ids_from_input_ids
from factory.tokenizers.tokenizer import AutoTokenizer
from factory.tokenizers.training import special_token_ids, train_tokenizer
from factory.training.run import train
from tests.helpers import TINY_RUN

REPO = Path(__file__).resolve().parent.parent
HF_CLASSES = {
    "base": transformers.RobertaModel,
    "seqcls": transformers.RobertaForSequenceClassification,
    "qa": transformers.RobertaForQuestionAnswering,
    "token_cls": transformers.RobertaForTokenClassification,
    "masked_lm": transformers.RobertaForMaskedLM,
    "multiple_choice": transformers.RobertaForMultipleChoice,
    "causal_lm": transformers.RobertaForCausalLM,
}
# roberta-base's quirks at tiny size (one token type, eps 1e-5, an odd width), and another padding id
# with more heads, two token types and a deeper stack, so that the position offset is not a constant 2.
CONFIGS = {
    "odd": dict(
        hidden_size=36,
        num_attention_heads=3,
        num_hidden_layers=2,
        intermediate_size=37,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        max_position_embeddings=40,
    ),
    "pad0": dict(
        hidden_size=32,
        num_attention_heads=4,
        num_hidden_layers=3,
        intermediate_size=64,
        hidden_act="gelu_new",
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        max_position_embeddings=30,
    ),
}
ATTN = "eager"


def hf_config(head: str, **kw) -> transformers.RobertaConfig:
    kw = {"vocab_size": 99, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, **kw}
    config = transformers.RobertaConfig(
        num_labels=2 if head == "qa" else 3, is_decoder=head == "causal_lm", **kw
    )
    config._attn_implementation = ATTN
    return config


@torch.no_grad()
def off_init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def inputs(head: str, pad: int, type_vocab_size: int, seed: int = 0) -> dict:
    """Three rows: full, right-padded, left-padded (positions must skip the padding either way)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 99, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, :3] = 0
    ids = ids.masked_fill(mask == 0, pad)
    out = {"input_ids": ids, "attention_mask": mask}
    if head == "causal_lm":  # left padding under a causal mask differs from HF's only in padding rows
        out = {"input_ids": ids[:2], "attention_mask": mask[:2]}
    if type_vocab_size > 1 and head != "causal_lm":
        out["token_type_ids"] = (torch.arange(11) >= 5).long().expand(len(out["input_ids"]), -1)
    if head == "multiple_choice":  # (B, C, T): the three rows are one example's choices, twice
        out = {k: v[None].expand(2, -1, -1).clone() for k, v in out.items()}
        out["input_ids"][1, 0, 5] = 7
    g = torch.Generator().manual_seed(seed + 1)
    ids, mask = out["input_ids"], out["attention_mask"]
    if head == "seqcls":
        out["labels"] = torch.randint(0, 3, (ids.size(0),), generator=g)
    elif head == "qa":
        out["start_positions"] = torch.tensor([1, 3, 20])
        out["end_positions"] = torch.tensor([4, 6, 2])
    elif head == "token_cls":
        out["labels"] = torch.randint(0, 3, ids.shape, generator=g).masked_fill(mask == 0, -100)
    elif head == "masked_lm":
        chosen = (torch.rand(ids.shape, generator=g) < 0.3) & (mask == 1)
        chosen[0, 1] = True
        out["labels"] = ids.masked_fill(~chosen, -100)
    elif head == "causal_lm":
        out["labels"] = ids.masked_fill(mask == 0, -100)
    elif head == "multiple_choice":
        out["labels"] = torch.tensor([0, 2])
    return out


def compare(ours, theirs, mask: torch.Tensor) -> None:
    valid = mask.bool()
    names = ("last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits", "loss")
    compared = []
    for name in names:
        a, b = getattr(ours, name, None), getattr(theirs, name, None)
        if a is None or b is None:
            continue
        if a.shape[:2] == mask.shape and a.dim() >= 2:
            a, b = a[valid], b[valid]  # padding positions carry no meaning
        assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        compared.append(name)
    assert compared and (("loss" in compared) or ours.loss is None)


def run_both(ours, theirs, head: str, config: dict) -> None:
    batch = inputs(head, config.get("pad_token_id", 1), config.get("type_vocab_size", 2))
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    compare(a, b, batch["attention_mask"])
    if head not in ("base",):
        assert a.loss is not None


@pytest.mark.parametrize("head", list(HF_CLASSES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_checkpoint_loads_to_equal_outputs_and_losses(tmp_path, head, name):
    torch.manual_seed(0)
    hf = off_init(HF_CLASSES[head](hf_config(head, **CONFIGS[name])), seed=1)
    hf.save_pretrained(tmp_path)
    ours, info = registry.model_class("roberta", head).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    run_both(ours, hf, head, CONFIGS[name])


@pytest.mark.parametrize("head", list(HF_CLASSES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_what_we_save_loads_in_transformers(tmp_path, head, name):
    torch.manual_seed(0)
    config = RobertaConfig.from_dict(hf_config(head, **CONFIGS[name]).to_dict())
    ours = off_init(registry.model_class("roberta", head)(config), seed=2)
    ours.save_pretrained(tmp_path)
    hf, info = HF_CLASSES[head].from_pretrained(
        tmp_path, output_loading_info=True, dtype=torch.float32, attn_implementation=ATTN
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    run_both(ours, hf.eval(), head, CONFIGS[name])


def test_positions_count_real_tokens_from_the_padding_id():
    ids = torch.tensor([[5, 6, 7, 1, 1], [1, 1, 5, 6, 7]])
    assert position_ids_from_input_ids(ids, pad=1).tolist() == [[2, 3, 4, 1, 1], [1, 1, 2, 3, 4]]
    assert position_ids_from_input_ids(ids[:, :1], pad=1, past_len=4).tolist() == [[6], [1]]
    # So a right-padded row gives the real tokens the outputs they have alone.
    torch.manual_seed(0)
    config = RobertaConfig.from_dict({}, **{**CONFIGS["odd"], "vocab_size": 99})
    model = off_init(registry.model_class("roberta", "base")(config), seed=3)
    with torch.no_grad():
        alone = model(ids[:1, :3]).last_hidden_state
        padded = model(ids[:1], attention_mask=(ids[:1] != 1).long()).last_hidden_state
    assert_close(padded[:, :3], alone, atol=1e-5, rtol=1e-5)


def test_kv_cache_matches_full_forward_and_transformers(tmp_path):
    torch.manual_seed(0)
    hf = off_init(transformers.RobertaForCausalLM(hf_config("causal_lm", **CONFIGS["pad0"])), seed=4)
    hf.save_pretrained(tmp_path)
    ours = registry.model_class("roberta", "causal_lm").from_pretrained(tmp_path)
    ids = torch.randint(4, 99, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = hf(ids).logits
        out, theirs = ours(ids[:, :4], use_cache=True), hf(ids[:, :4], use_cache=True)
        steps, hf_steps = [out.logits], [theirs.logits]
        for t in range(4, 9):
            out = ours(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            theirs = hf(ids[:, t : t + 1], cache=theirs.cache, use_cache=True)
            steps.append(out.logits)
            hf_steps.append(theirs.logits)
    assert len(out.past_key_values) == 3 and out.past_key_values[0][0].shape[2] == 9
    assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert_close(torch.cat(steps, dim=1), torch.cat(hf_steps, dim=1), atol=1e-5, rtol=1e-5)


def test_greedy_generation_equals_transformers_generate(tmp_path):
    from factory.generation.decode import generate

    torch.manual_seed(0)
    hf = off_init(transformers.RobertaForCausalLM(hf_config("causal_lm", **CONFIGS["odd"])), seed=9)
    hf.save_pretrained(tmp_path)
    ours = registry.model_class("roberta", "causal_lm").from_pretrained(tmp_path)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # batches are left-padded to generate
    ids = torch.randint(4, 99, (2, 6), generator=torch.Generator().manual_seed(1)).masked_fill(mask == 0, 1)
    got = generate(ours, ids, mask, max_new_tokens=8, eos_token_id=[])
    want = hf.generate(
        ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=1, eos_token_id=None
    )
    assert torch.equal(got, want)


def test_sequence_longer_than_the_position_table_is_an_error():
    config = RobertaConfig.from_dict({}, **{**CONFIGS["odd"], "vocab_size": 99})  # 40 rows: 38 tokens
    model = registry.model_class("roberta", "base")(config).eval()
    model(torch.full((1, 38), 5))
    with pytest.raises(ValueError, match=r"39 tokens is longer than RoBERTa's 38 positions"):
        model(torch.full((1, 39), 5))


def test_pretraining_file_with_pooler_and_buffers_loads_into_the_lm_heads(tmp_path):
    """roberta-base's file (saved from RobertaForMaskedLM) has a pooler and, in old saves, position ids."""
    torch.manual_seed(0)
    config = hf_config("masked_lm", **CONFIGS["odd"])
    base = off_init(transformers.RobertaModel(config), seed=6)
    mlm = off_init(transformers.RobertaForMaskedLM(config), seed=7)
    state = {f"roberta.{k}": v for k, v in base.state_dict().items()}
    state.update({k: v for k, v in mlm.state_dict().items() if k.startswith("lm_head.")})
    state["roberta.embeddings.position_ids"] = torch.arange(40)[None]
    # Tied copies left out: the word embeddings and lm_head.bias supply them.
    state.pop("lm_head.decoder.weight")
    state.pop("lm_head.decoder.bias")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    config.save_pretrained(tmp_path)
    for head in ("masked_lm", "causal_lm"):
        ours, info = registry.model_class("roberta", head).from_pretrained(tmp_path, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert torch.equal(ours.lm_head.decoder.weight, base.embeddings.word_embeddings.weight)
        assert torch.equal(ours.lm_head.decoder.bias, mlm.lm_head.bias)


def test_a_bert_checkpoint_is_not_a_roberta(tmp_path):
    transformers.BertModel(transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=37)).save_pretrained(tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match="model_type='bert' cannot be read by RobertaConfig"):
        registry.model_class("roberta", "base").from_pretrained(tmp_path)


# ---- config ------------------------------------------------------------------------------------------
def test_defaults_are_hf_defaults_and_the_yaml_is_roberta_base():
    ours, theirs = RobertaConfig().to_dict(), transformers.RobertaConfig().to_dict()
    for key in RobertaConfig.field_names():
        if key in theirs and key not in ("architectures", "id2label", "label2id"):
            assert ours[key] == theirs[key], key
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["arch=roberta", "~experiment"])
    config = build_config(cfg.arch)
    assert (config.max_position_embeddings, config.type_vocab_size, config.layer_norm_eps) == (514, 1, 1e-5)
    assert config.max_tokens == 512 and config.vocab_size == 50265


@pytest.mark.parametrize(
    "values, words",
    [
        (dict(max_position_embeddings=2), ["max_position_embeddings=2", "more than pad_token_id + 1 = 2"]),
        (dict(pad_token_id=None), ["pad_token_id=None", "positions start after it"]),
        (dict(num_attention_heads=5), ["num_attention_heads=5", "divisor of hidden_size=768"]),
        (dict(position_embedding_type="relative_key"), ["position_embedding_type", "not implemented"]),
    ],
)
def test_validation_errors_name_field_value_and_choices(values, words):
    with pytest.raises(ConfigError) as e:
        RobertaConfig.from_dict({}, **values)
    for word in words:
        assert word in str(e.value)


# ---- tokenizer ---------------------------------------------------------------------------------------
TEXTS = ["The movie was great fun.", "A dull and slow film.", "Great acting, weak plot!"] * 20


def test_trained_tokenizer_has_roberta_layout_and_loads_in_transformers(tmp_path):
    tok = train_tokenizer("roberta", TEXTS, 300)
    assert [tok.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert tok.convert_tokens_to_ids("<mask>") == len(tok) - 1
    assert special_token_ids(tok) == {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
    tok.save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(hf).__name__.startswith("RobertaTokenizer")
    for args in (("a great movie",), ("a great movie", "dull plot")):
        ours = tok(*args)
        assert ours["input_ids"] == hf(*args)["input_ids"] and "token_type_ids" not in ours
    pair = tok("great", "dull")["input_ids"]
    assert pair[0] == 0 and pair[-1] == 2 and pair.count(2) == 3  # <s> A </s></s> B </s>
    assert (
        AutoTokenizer.from_pretrained(tmp_path)("a great movie")["input_ids"]
        == tok("a great movie")["input_ids"]
    )


# ---- train.py ----------------------------------------------------------------------------------------
def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


MAX_LENGTH = {"qa": ["data.max_length=128", "data.stride=32"], "masked_lm": ["data.max_length=32"],
              "multiple_choice": ["data.max_length=32"], "token_cls": ["data.max_length=32"],
              "seqcls": ["data.max_length=32"], "causal_lm": ["data.max_length=32"]}  # fmt: skip


def check_export(run: Path, head: str) -> None:
    """The exported model is roberta's, sized by the tokenizer, and gives transformers' outputs."""
    config = json.loads((run / "model" / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(run / "model")
    assert config["model_type"] == "roberta" and config["vocab_size"] == len(tok)
    assert config["architectures"] == [registry.model_class("roberta", head).__name__]
    ours = registry.model_class("roberta", head).from_pretrained(run / "model")
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
        compose_cfg("arch=roberta", "head=seqcls", *TINY_RUN, *MAX_LENGTH["seqcls"]), run_dir=tmp_path
    )
    assert 0.0 <= value <= 1.0
    check_export(tmp_path, "seqcls")


@pytest.mark.slow
@pytest.mark.parametrize("head", ["token_cls", "masked_lm", "multiple_choice"])
def test_train_the_other_heads(tmp_path, head):
    # seqcls, qa and causal_lm of every architecture run in tests/test_train.py.
    train(compose_cfg("arch=roberta", f"head={head}", *TINY_RUN, *MAX_LENGTH[head]), run_dir=tmp_path)
    check_export(tmp_path, head)


@pytest.mark.slow
def test_train_py_command_line(tmp_path):
    cmd = [sys.executable, "train.py", "arch=roberta", "head=causal_lm", *TINY_RUN,
           *MAX_LENGTH["causal_lm"], f"hydra.run.dir={tmp_path}"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["is_decoder"] is True
    check_export(tmp_path, "causal_lm")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A 4-layer RoBERTa saved by transformers, with a tokenizer of ours, as a user's checkpoint."""
    from factory.data.files import texts_for_tokenizer
    from factory.data.sources import load_examples

    path = tmp_path_factory.mktemp("roberta")
    tok = train_tokenizer("roberta", texts_for_tokenizer("seqcls", load_examples("seqcls", {})), 300)
    config = hf_config("base", hidden_size=32, num_attention_heads=2, num_hidden_layers=4, intermediate_size=37,
                       type_vocab_size=1, max_position_embeddings=130, vocab_size=len(tok))  # fmt: skip
    torch.manual_seed(0)
    off_init(transformers.RobertaModel(config), seed=8).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.slow
def test_init_pretrained_picks_layers_and_applies_overrides(tmp_path, hf_folder):
    overrides = ["head=seqcls", *[o for o in TINY_RUN if not o.startswith("arch.")], *MAX_LENGTH["seqcls"],
                 "init=pretrained", f"init.name_or_path={hf_folder}", "arch.num_hidden_layers=2",
                 "init.layers=even", "arch.hidden_dropout_prob=0.2", "optim.lr=1e-12"]  # fmt: skip
    train(compose_cfg(*overrides), run_dir=tmp_path, overrides=overrides)
    report = json.loads((tmp_path / "load_report.json").read_text())
    assert report["model_class"] == "RobertaForSequenceClassification"
    assert report["kept_layers"] == {"roberta.encoder.layer": [0, 3]}
    assert sorted(report["newly_initialised"]) == sorted(
        f"classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")
    )
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["hidden_dropout_prob"] == 0.2
    start = transformers.RobertaModel.from_pretrained(hf_folder).state_dict()
    trained = factory.AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").state_dict()
    key = "encoder.layer.{}.attention.self.query.weight"
    assert_close(trained["roberta." + key.format(1)], start[key.format(3)], atol=1e-6, rtol=0)


def test_init_pretrained_shape_conflict_names_both_values(tmp_path, hf_folder):
    overrides = ["head=seqcls", "init=pretrained", f"init.name_or_path={hf_folder}", "arch.hidden_size=64"]
    with pytest.raises(
        ConfigError, match=r"arch.hidden_size=64 differs from the checkpoint .* hidden_size=32"
    ):
        train(compose_cfg(*overrides), run_dir=tmp_path, overrides=overrides)

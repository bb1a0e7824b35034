# pytest tests/test_hub.py
"""Hub ids through the real huggingface_hub calls, offline, against a cache folder laid out as it lays it out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from torch.testing import assert_close

from factory import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
from factory.checkpoints.hub import commit_of
from tests.helpers import SHA_MAIN, SHA_OLD, add_snapshot


@pytest.fixture
def hub_cache(tmp_path, minilm_path):
    """`org/minilm` at two commits (main: MiniLM; an older one with 3 layers), and a sharded `org/gpt2`."""
    cache = tmp_path / "hub"
    add_snapshot(cache, "org/minilm", minilm_path, SHA_MAIN)
    old = tmp_path / "old"
    old.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_path / name, old / name)
    transformers.BertModel(
        transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=2)
    ).save_pretrained(old)
    add_snapshot(cache, "org/minilm", old, SHA_OLD, branch="v1")
    torch.manual_seed(0)
    gpt = tmp_path / "gpt"
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=2))
    hf.save_pretrained(gpt, max_shard_size="30KB")
    torch.save(hf.state_dict(), gpt / "pytorch_model.bin")  # safetensors must win over this
    add_snapshot(cache, "org/gpt2", gpt, SHA_MAIN)
    return cache, hf.eval()


def test_hub_id_revision_branch_and_sha(hub_cache, minilm_path):
    cache, _ = hub_cache
    model = AutoModel.from_pretrained("org/minilm", cache_dir=cache)
    assert model.config.num_hidden_layers == 6
    ref = AutoModel.from_pretrained(minilm_path)
    assert_close(model.embeddings["word_embeddings"].weight, ref.embeddings["word_embeddings"].weight)
    assert AutoConfig.from_pretrained("org/minilm", cache_dir=cache, revision="v1").num_hidden_layers == 3
    assert AutoModel.from_pretrained("org/minilm", cache_dir=cache, revision=SHA_OLD).config.hidden_size == 32
    tok = AutoTokenizer.from_pretrained("org/minilm", cache_dir=cache, revision="v1")
    assert tok("hello world")["input_ids"][0] == tok.cls_token_id


def test_shards_preferred_over_bin(hub_cache):
    cache, hf = hub_cache
    model, info = AutoModelForCausalLM.from_pretrained("org/gpt2", cache_dir=cache, output_loading_info=True)
    assert len(info["files"]) > 1 and all(f.endswith(".safetensors") for f in info["files"])
    ids = torch.randint(0, 99, (2, 6))
    with torch.no_grad():
        assert_close(model(ids).logits, hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_missing_revision_names_repo_and_revision(hub_cache):
    cache, _ = hub_cache
    with pytest.raises(
        FileNotFoundError,
        match=r"org/minilm at revision 'v2' is not in the hub cache .*hf download org/minilm --revision v2",
    ):
        AutoModel.from_pretrained("org/minilm", cache_dir=cache, revision="v2")


def test_empty_cache_offline_fails_naming_the_way_out(tmp_path):
    # How fast it fails is measured by bench/offline_failure.py.
    with pytest.raises(
        FileNotFoundError, match=r"org/nothing at revision 'main' is not in the hub cache.*HF_HUB_OFFLINE"
    ):
        AutoModel.from_pretrained("org/nothing", cache_dir=tmp_path / "empty")


def test_local_files_only_without_offline_env(hub_cache, monkeypatch):
    cache, _ = hub_cache
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert AutoConfig.from_pretrained("org/minilm", cache_dir=cache, local_files_only=True).hidden_size == 384
    with pytest.raises(FileNotFoundError, match="local_files_only=True"):
        AutoConfig.from_pretrained("org/other", cache_dir=cache, local_files_only=True)


@pytest.mark.slow
def test_hf_home_is_honoured(hub_cache, tmp_path):
    cache, _ = hub_cache
    home = tmp_path / "home"
    home.mkdir()
    shutil.move(str(cache), home / "hub")
    code = "from factory import AutoConfig; print(AutoConfig.from_pretrained('org/minilm').num_hidden_layers)"
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "6"


def test_commit_of_cache_paths(hub_cache):
    cache, _ = hub_cache
    path = cache / "models--org--minilm" / "snapshots" / SHA_OLD / "config.json"
    assert commit_of(path) == SHA_OLD and commit_of("/some/local/config.json") is None


def test_not_a_folder_nor_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub id"):
        AutoConfig.from_pretrained(str(tmp_path / "missing" / "dir"))


def test_shard_index_from_the_hub_refuses_escaping_names(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    transformers.BertConfig(
        vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(src)
    (src / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../../../../etc/passwd"}}')
    add_snapshot(tmp_path / "hub", "org/evil", src, SHA_MAIN)
    from factory import CheckpointError

    with pytest.raises(CheckpointError, match="leaves the checkpoint folder"):
        AutoModel.from_pretrained("org/evil", cache_dir=tmp_path / "hub")


@pytest.mark.parametrize("wrapped", [False, True], ids=["raw", "as_local_entry_not_found"])
def test_unreachable_hub_says_so_and_suggests_offline(tmp_path, monkeypatch, wrapped):
    import huggingface_hub
    import huggingface_hub.constants
    import requests
    from huggingface_hub.errors import LocalEntryNotFoundError

    def no_network(*args, **kwargs):
        error = requests.ConnectionError("Max retries exceeded: Failed to establish a new connection")
        if not wrapped:
            raise error
        # What huggingface_hub raises when the hub is unreachable and the cache lacks the file.
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache") from error

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(FileNotFoundError) as info:
        AutoConfig.from_pretrained("org/model", cache_dir=tmp_path / "hub")
    message = str(info.value)
    assert "could not be reached" in message and "org/model" in message and "HF_HUB_OFFLINE=1" in message
    assert "downloads are off" not in message

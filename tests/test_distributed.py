# python -m pytest tests/test_distributed.py
"""More than one process on CPU (gloo): trainer presets against every arch x head, the SLURM launcher preset,
train.py under DDP (a single run, a grid sweep and an Optuna sweep: one run dir per run, rank 0 alone
writing, every rank of a trial with the same values; a pruned trial stops every rank at one step), and data parallelism giving the weights of one
process with the whole batch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

import factory  # noqa: F401  (registers the architectures)
from factory import ConfigError, registry
from factory.build import build_model
from factory.training.distributed import ranks as distributed
from factory.training.lightning.module import FactoryModule, config_values
from factory.training.plan import resolve
from tests.helpers import TINY_RUN

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
PRESETS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml"))
CASES = [(t, h) for t, heads in registry.model_matrix().items() for h in sorted(heads) if h != "base"]
# DistilBERT's block keeps HF's name, TransformerBlock; RoBERTa's layers are BERT's.
BLOCKS = {
    "BertLayer",
    "GPT2Block",
    "BartEncoderLayer",
    "BartDecoderLayer",
    "TransformerBlock",
    "LlamaDecoderLayer",
    "T5Block",
}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}

# A tiny run (two CPU ranks through gloo, see DDP).
TINY = [*TINY_RUN, "data.max_length=32"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def compose_cfg(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def tiny_model(arch: str, head: str):
    values = dict(model_type=arch, num_hidden_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=99)
    values.update(max_position_embeddings=64, intermediate_size=37)
    if head == "causal_lm":
        values["is_decoder"] = True
    return build_model(values, head, seed=0)[1]


# ---- presets ------------------------------------------------------------------------------------------
def test_block_classes_are_our_transformer_blocks():
    assert {c.__name__ for c in distributed.block_classes()} == BLOCKS
    blocks = distributed.block_classes(tiny_model("bart", "seqcls"))
    assert {c.__name__ for c in blocks} == {"BartEncoderLayer", "BartDecoderLayer"}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(("arch", "head"), CASES)
def test_every_trainer_preset_composes_with_every_arch_and_head(preset, arch, head):
    assert {"cpu", "gpu", "ddp", "fsdp"} <= set(PRESETS)
    cfg = compose_cfg(f"trainer={preset}", f"arch={arch}", f"head={head}", "trainer.devices=2")
    plan = resolve(cfg)
    assert cfg.trainer.max_epochs == 3  # presets hold deltas on top of trainer/default.yaml
    model = tiny_model(arch, head)
    kwargs = distributed.trainer_arguments(distributed.check_trainer(plan.trainer), model)
    if preset == "fsdp":
        strategy = kwargs["strategy"]
        assert (
            isinstance(strategy, pl.strategies.FSDPStrategy)
            and strategy.sharding_strategy.name == "FULL_SHARD"
        )
        policy = strategy.kwargs["auto_wrap_policy"]
        wrapped = [m for m in model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)]
        blocks = [m for m in model.modules() if type(m).__name__ in BLOCKS]
        assert wrapped == blocks and len(blocks) in (2, 4)  # BART: encoder and decoder layers
    if preset == "ddp":
        assert isinstance(kwargs["strategy"], pl.strategies.DDPStrategy)
    if preset == "fsdp2":  # FSDP2 over every rank: no tensor parallelism
        strategy = kwargs["strategy"]
        assert isinstance(strategy, pl.strategies.ModelParallelStrategy)
        assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (2, 1)
    if preset in ("ddp", "fsdp", "fsdp2"):  # bounded: a hung rank ends the run in minutes, not half an hour
        assert kwargs["strategy"]._timeout == timedelta(seconds=600)
    if preset in ("cpu", "ddp"):  # a Trainer can be built here (no GPU)
        trainer = pl.Trainer(**{**kwargs, "devices": 1}, logger=False, enable_checkpointing=False)
        assert trainer.accelerator.__class__.__name__ == "CPUAccelerator"


@pytest.mark.parametrize("precision", ["32", "32-true", "bf16-mixed", "16-mixed"])
def test_precision_and_accumulation_keys(precision):
    cfg = compose_cfg(
        "trainer=gpu",
        f"trainer.precision={precision}",
        "trainer.accumulate_grad_batches=4",
        "trainer.gradient_clip_val=0.5",
    )
    values = distributed.check_trainer(resolve(cfg).trainer)
    assert str(values["precision"]) == precision and values["accumulate_grad_batches"] == 4


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["trainer.precision=bf17-mixed"], r"trainer.precision='bf17-mixed' is not valid.*Did you mean 'bf16-mixed'"),
        (["trainer=cpu", "trainer.precision=16-mixed"], r"trainer.precision='16-mixed' .* on CPU"),
        (["trainer=fsdp", "trainer.accelerator=cpu"], r"trainer.accelerator='cpu' .* FSDP on GPUs only"),
        (["+trainer.strategy=dpp"], r"trainer.strategy='dpp' is not valid.*Did you mean 'ddp'"),
        (["trainer=ddp", "trainer.num_nodes=0"], r"trainer.num_nodes=0 is not valid: expected a positive integer"),
        (["trainer.accumulate_grad_batches=0"], r"trainer.accumulate_grad_batches=0 is not valid"),
        (["trainer.gradient_clip_val=-1"], r"trainer.gradient_clip_val=-1 is not valid"),
        (["trainer=fsdp", "trainer.strategy.auto_wrap_policy=layers"], r"auto_wrap_policy='layers' .*'blocks'.*BertLayer"),
        (["trainer=ddp", "trainer.strategy.timeout=0"], r"trainer.strategy.timeout=0 is not valid: expected a positive"),
    ],
)  # fmt: skip
def test_bad_trainer_values_name_the_key(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        distributed.check_trainer(resolve(compose_cfg(*overrides)).trainer)


def test_slurm_launcher_preset_follows_the_trainer():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose_cfg(
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        hydra=True,
    )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["partition"] == "gpu" and launcher["timeout_min"] > 0 and launcher["mem_gb"] > 0
    assert launcher["submitit_folder"].startswith(cfg.hydra.sweep.dir.split("${")[0])
    assert type(instantiate(cfg.hydra.launcher)).__name__ == "SlurmLauncher"
    single = compose_cfg("hydra/launcher=slurm", hydra=True)  # trainer=default has no num_nodes
    assert OmegaConf.to_container(single.hydra.launcher, resolve=True)["nodes"] == 1


def test_ranks_that_disagree_stop_the_run(tmp_path, monkeypatch):
    from types import SimpleNamespace

    module = FactoryModule(config_values(tiny_model("gpt2", "seqcls").config), "seqcls")
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    trainer = SimpleNamespace(
        global_rank=0, node_rank=0, local_rank=0, optimizers=[optimizer], is_global_zero=True
    )
    check = distributed.RankCheck({"optim": {"lr": 1e-3}}, tmp_path)
    check.on_fit_start(trainer, module)  # one process: nothing to compare, nothing written
    assert not (tmp_path / "ranks.json").exists()
    monkeypatch.setattr(distributed, "gather", lambda mine: [mine, {**mine, "rank": 1, "lr": [2e-3]}])
    with pytest.raises(RuntimeError, match=r"\['lr'\] differ.*'lr': \[\[0.001\], \[0.002\]\]"):
        check.on_fit_start(trainer, module)
    assert [r["rank"] for r in json.loads((tmp_path / "ranks.json").read_text())] == [0, 1]


# ---- train.py with two CPU ranks ----------------------------------------------------------------------
def run_train(cwd: Path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "train.py"), *(["-m"] if multirun else []), *TINY, *DDP, *overrides]
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def assert_ranks(run: Path, lr: float, steps: int = 3) -> list[dict]:
    """Both ranks of the run trained the same config, hyperparameters, vocabulary and learning rate."""
    reports = json.loads((run / "ranks.json").read_text())
    assert [r["rank"] for r in reports] == [0, 1] and {r["backend"] for r in reports} == {"gloo"}
    assert len({r["pid"] for r in reports}) == 2
    for key in ("config", "hparams", "extra"):
        assert reports[0][key] == reports[1][key], key
    assert all(r["lr"] == [lr, lr] for r in reports), [r["lr"] for r in reports]  # two param groups
    # Rank 0 alone exported: rank 1 replayed this run dir and stopped before the exports.
    log = (run / "train_rank1.log").read_text()
    assert f"Rank 1 replays {run}" in log and "wrote" not in log
    assert json.loads((run / "results.json").read_text())["global_step"] == steps
    assert (run / "model" / "model.safetensors").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    return reports


def assert_two_trials(sweep: Path) -> None:
    """The sweep summary lists each trial once (rank 1 ran no sweep of its own), both finished."""
    with (sweep / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["trial"] for r in rows) == ["0", "1"] and {r["status"] for r in rows} == {"ok"}


@pytest.mark.slow
def test_ddp_single_run_is_one_run_dir(tmp_path):
    # BART's causal LM: its decoder's cross-attention gets no gradient, which plain DDP refuses.
    run_train(tmp_path, "arch=bart", "head=causal_lm", f"hydra.run.dir={tmp_path / 'run'}", "optim.lr=3e-3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing else, nothing in the cwd
    run = tmp_path / "run"
    assert_ranks(run, 3e-3)
    assert (run / ".hydra" / "replica.yaml").is_file() and (run / "curves.png").is_file()


@pytest.mark.slow
def test_fsdp2_run_on_two_cpu_ranks_exports_the_whole_model(tmp_path):
    """trainer=fsdp2 on CPU: GPT-2's blocks sharded over two gloo ranks (its lm_head tied to the sharded
    embedding); the checkpoint and the exported folder hold the whole model, which loads without FSDP."""
    run = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *TINY, "trainer=fsdp2", "trainer.accelerator=cpu"]
    cmd += ["trainer.devices=2", "arch=gpt2", "head=causal_lm", f"hydra.run.dir={run}", "optim.lr=3e-3"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [r["rank"] for r in json.loads((run / "ranks.json").read_text())] == [0, 1]
    assert json.loads((run / "results.json").read_text())["global_step"] == 3
    model = factory.AutoModelForCausalLM.from_pretrained(run / "model")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    for key, value in model.state_dict().items():
        assert isinstance(state[key], torch.Tensor) and state[key].shape == value.shape, key
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)


@pytest.mark.slow
def test_ddp_grid_sweep_each_trial_one_dir_same_values(tmp_path):
    sweep = tmp_path / "sweep"
    run_train(tmp_path, "optim.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}", multirun=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    summary = ["summary.csv", "summary.md", "summary.png"]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml", *summary]  # one sweep
    for trial, lr in (("0", 1e-3), ("1", 2e-3)):
        assert_ranks(sweep / trial, lr)
    assert_two_trials(sweep)


@pytest.mark.slow
def test_ddp_optuna_sweep_ranks_of_a_trial_use_its_values(tmp_path):
    pytest.importorskip("optuna")
    sweep = tmp_path / "sweep"
    run_train(
        tmp_path,
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.pruner=none",
        "optim.lr=interval(1e-4,1e-2)",
        f"hydra.sweep.dir={sweep}",
        multirun=True,
    )
    summary = ["summary.csv", "summary.md", "summary.png"]
    plots = ["optimization_history.png", "param_importances.png"]
    assert sorted(p.name for p in sweep.iterdir()) == sorted(["0", "1", *plots, "optuna.journal", *summary])
    assert_two_trials(sweep)
    chosen = []
    for trial in ("0", "1"):
        overrides = (sweep / trial / ".hydra" / "overrides.yaml").read_text()
        lr = float(next(o for o in overrides.split() if o.startswith("optim.lr=")).split("=")[1])
        assert_ranks(sweep / trial, lr)
        chosen.append(lr)
    assert chosen[0] != chosen[1]  # the sampler's values, one per trial, shared by the trial's ranks


@pytest.mark.slow
def test_ddp_pruned_trial_stops_every_rank_at_the_same_step(tmp_path):
    pytest.importorskip("optuna")
    sweep = tmp_path / "sweep"
    run_train(
        tmp_path,
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=1",
        "hydra.sweeper.direction=minimize",
        "hydra.sweeper.pruner=median",
        "hydra.sweeper.pruners.median.n_startup_trials=1",
        "head.monitor=val/loss",
        "head.mode=min",
        "optim.lr=choice(3.0,1e-5)",  # seed 1: trial 0 learns slowly, trial 1 jumps far at every step
        "optim.warmup_ratio=0",
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        f"hydra.sweep.dir={sweep}",
        multirun=True,
    )
    records = {n: json.loads((sweep / n / "trial.json").read_text()) for n in ("0", "1")}
    assert records["0"]["status"] == "ok" and records["1"]["status"] == "pruned", records
    step = records["1"]["pruned_step"]
    assert step < 6 and json.loads((sweep / "1" / "results.json").read_text())["global_step"] == step
    assert f"Trial 1 pruned at step {step} (rank 0)" in (sweep / "1" / "train.log").read_text()
    assert f"Trial 1 pruned at step {step} (rank 1)" in (sweep / "1" / "train_rank1.log").read_text()
    assert_ranks(sweep / "1", 3.0, steps=step)


# ---- data parallelism is one big batch ----------------------------------------------------------------
ARCH = dict(
    model_type="bert",
    num_hidden_layers=2,
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=37,
    vocab_size=99,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def rows(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 99, (n, 12), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": labels[i]} for i in range(n)]  # fmt: skip


class FixedOrder(pl.LightningDataModule):
    """The rows in their order; with several ranks, rank r takes rows r, r + world, ... (Lightning's own
    DistributedSampler would shuffle: it always does for training)."""

    def __init__(self, n: int, batch: int) -> None:
        super().__init__()
        self.data, self.batch = rows(n), batch

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = (
            torch.utils.data.DistributedSampler(self.data, world, rank, shuffle=False) if world > 1 else None
        )
        return torch.utils.data.DataLoader(self.data, batch_size=self.batch, sampler=sampler)


def train_weights(
    out: Path, devices: int, batch: int, steps: int, accumulate: int = 1, strategy: str = "ddp"
) -> None:
    """`steps` AdamW steps of a tiny BERT classifier (no dropout) on rows in a fixed order; rank 0 saves
    the weights to `out`. Per step, `devices` ranks of `batch` rows see the rows one process with a batch of
    `batch * devices` would see, and the loss is a mean over rows, so the averaged gradients are equal.
    `strategy`: "ddp", or "fsdp2" (the `trainer=fsdp2` preset's strategy: each rank holds a shard)."""
    module = FactoryModule(
        ARCH, "seqcls", {"lr": 1e-2, "scheduler": "constant", "weight_decay": 0.01}, seed=0
    )
    if devices > 1 and strategy == "fsdp2":
        preset = compose_cfg("trainer=fsdp2", "trainer.accelerator=cpu", f"trainer.devices={devices}").trainer
        strategy = distributed.trainer_arguments(distributed.check_trainer(preset), module.model)["strategy"]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy if devices > 1 else "auto",
        use_distributed_sampler=False,
        max_steps=steps,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=0.05,  # small enough to clip: clipping acts on the averaged gradient
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out.parent),
    )
    trainer.fit(module, datamodule=FixedOrder(devices * batch * steps * accumulate, batch))
    state = trainer.strategy.lightning_module_state_dict()  # sharded: every rank sends its shards
    if trainer.is_global_zero:
        torch.save({k.removeprefix("model."): v for k, v in state.items()}, out)


@pytest.mark.slow
def test_two_ranks_of_batch_b_train_as_one_process_of_batch_2b(tmp_path):
    """DDP and FSDP2 (two CPU ranks through gloo, each holding half of every block) give the weights of
    one process with the whole batch, and of one process accumulating two batches."""
    b, steps = 4, 3
    for strategy in ("ddp", "fsdp2"):
        script = [
            sys.executable,
            __file__,
            str(tmp_path / f"{strategy}.pt"),
            "2",
            str(b),
            str(steps),
            strategy,
        ]
        proc = subprocess.run(script, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
    train_weights(tmp_path / "one.pt", devices=1, batch=2 * b, steps=steps)
    train_weights(tmp_path / "accumulated.pt", devices=1, batch=b, steps=steps, accumulate=2)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    start = FactoryModule(ARCH, "seqcls", seed=0).model.state_dict()
    assert max((one[k] - start[k]).abs().max() for k in one) > 1e-2  # far more than the tolerance below
    for other in ("ddp.pt", "fsdp2.pt", "accumulated.pt"):
        weights = torch.load(tmp_path / other, weights_only=True)
        assert sorted(weights) == sorted(one), other
        for key in one:
            torch.testing.assert_close(weights[key], one[key], atol=1e-5, rtol=1e-4, msg=f"{other}: {key}")


if (
    __name__ == "__main__"
):  # the two-rank side of the test above; Lightning starts rank 1 with this command line
    train_weights(
        Path(sys.argv[1]),
        devices=int(sys.argv[2]),
        batch=int(sys.argv[3]),
        steps=int(sys.argv[4]),
        strategy=sys.argv[5],
    )


def test_child_ranks_read_the_hub_cache_rank_0_filled(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from lightning_fabric.plugins.environments import LightningEnvironment

    started = []
    monkeypatch.setattr(distributed.subprocess, "Popen", lambda cmd, env, cwd: started.append((cmd, env)))
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(key, "0")  # recorded, so that what the launcher sets is undone after the test
        monkeypatch.delenv(key)
    lightning = SimpleNamespace(cluster_environment=LightningEnvironment(), num_processes=3, num_nodes=1)
    launcher = distributed.ReplicaLauncher(lightning, {"optim": {"lr": 1e-3}}, tmp_path)
    launcher._call_children_scripts()
    assert [env["LOCAL_RANK"] for _, env in started] == ["1", "2"]
    # Rank 0 fetched the checkpoint before the Trainer started them: the others never reach the network.
    assert all(env["HF_HUB_OFFLINE"] == "1" for _, env in started)
    assert "HF_HUB_OFFLINE" not in os.environ  # rank 0 itself stays as the user set it
    assert started[0][0][-1] == str(tmp_path.resolve() / ".hydra" / "replica.yaml")

# python -m pytest tests/test_resume.py
"""Exact resume: a run killed mid-epoch, or on an epoch's last batch, continues to bit-identical weights
and history; checkpoints are renamed into place; and the guards: a non-finite loss or non-finite weights
stop the run without a checkpoint of them, empty data is an error, a process that fails or hangs under
DDP ends the whole run in bounded time."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import factory.training.resume as resume
from factory.checkpoints.atomic import atomic_save
from factory.config import ConfigError
from factory.data.files import DataError, default_data_files
from factory.training.lightning.failures import NonFiniteError
from factory.training.run import train

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
STEPS = 8  # 3 batches an epoch (8 + 8 + 4 rows): epochs end at steps 3 and 6


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> list[str]:
    """20 training rows and 8 validation rows of the shipped data: 3 batches of 8 an epoch."""
    folder = tmp_path_factory.mktemp("data")
    for split, path, rows in zip(("train", "validation"), default_data_files("seqcls"), (20, 8)):
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        (folder / f"{split}.csv").write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
    return [f"data.train_file={folder / 'train.csv'}", f"data.validation_file={folder / 'validation.csv'}"]


def overrides(small_data: list[str], *more: str) -> list[str]:
    """A tiny GPT-2 with dropout on (so the random generators matter), last.ckpt at every step."""
    return [
        "arch=gpt2",
        "head=seqcls",
        "arch.num_hidden_layers=1",
        "arch.hidden_size=32",
        "arch.num_attention_heads=2",
        "arch.intermediate_size=37",
        "arch.vocab_size=1000",
        "arch.resid_pdrop=0.3",
        "arch.embd_pdrop=0.3",
        "arch.attn_pdrop=0.3",
        "data.batch_size=8",
        "data.max_length=32",
        *small_data,
        f"trainer.max_steps={STEPS}",
        "trainer.val_check_interval=1.0",
        "trainer.log_every_n_steps=1",
        "+trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar.refresh_rate=0",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        *more,
    ]


def compose_cfg(items: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=items)


class Killed(RuntimeError):
    """Stands for the process dying right after a checkpoint was written."""


def train_killed_after(cfg, run: Path, step: int, monkeypatch) -> None:
    save = resume.AtomicCheckpointIO.save_checkpoint

    def save_then_die(self, checkpoint, path, storage_options=None):
        save(self, checkpoint, path, storage_options)
        if checkpoint["global_step"] == step and Path(path).name == "last.ckpt":
            raise Killed(step)

    with monkeypatch.context() as m:
        m.setattr(resume.AtomicCheckpointIO, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            train(cfg, run_dir=run)
    assert last(run)["global_step"] == step


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_run(a: dict, b: dict) -> None:
    """Same weights, optimizer state, step and history (losses and validation metrics at every step)."""
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["callbacks"]["_History"] == b["callbacks"]["_History"]


# Where the kill falls: mid-epoch, on an epoch's last batch (3, 6), on an epoch's first batch (4).
SCENARIOS = {
    "validate_each_epoch": ([], [2, 3, 4, 6]),
    "validate_mid_epoch": (["trainer.val_check_interval=2"], [2, 5]),
    "epoch_cut_by_limit": (["trainer.limit_train_batches=2"], [2, 3]),  # the loader is not exhausted
    "accumulate_2": (["trainer.accumulate_grad_batches=2", "trainer.max_steps=5"], [2, 3]),
    "persistent_workers": (["data.num_workers=2"], [4]),
}
_references: dict[str, dict] = {}


def reference(name: str, small_data, tmp_path_factory) -> dict:
    if name not in _references:
        run = tmp_path_factory.mktemp(f"reference_{name}")
        train(compose_cfg(overrides(small_data, *SCENARIOS[name][0])), run_dir=run)
        _references[name] = last(run)
    return _references[name]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "step"), [(name, step) for name, (_, steps) in SCENARIOS.items() for step in steps]
)
def test_killed_run_resumes_to_the_same_weights(
    name, step, small_data, tmp_path, tmp_path_factory, monkeypatch
):
    want = reference(name, small_data, tmp_path_factory)
    cfg = compose_cfg(overrides(small_data, *SCENARIOS[name][0]))
    train_killed_after(cfg, tmp_path, step, monkeypatch)
    train(resume.run_config(tmp_path))  # the run's own .hydra/config.yaml, resume=<run dir>
    assert_same_run(last(tmp_path), want)


@pytest.mark.parametrize("sampler", ["random", "distributed"])
@pytest.mark.parametrize("stop", [(1, 1), (1, 4)])  # (epoch, batches into it): mid-epoch, at its end
def test_loader_continues_where_it_stopped(sampler, stop):
    """The loader alone, driven as Lightning drives it (set_epoch, then a pass per epoch)."""
    from torch.utils.data import DistributedSampler, TensorDataset

    data = TensorDataset(torch.arange(11))

    def loader() -> resume.ResumableDataLoader:
        if sampler == "random":
            return resume.ResumableDataLoader(
                data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(0)
            )
        ranks = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=0)
        return resume.ResumableDataLoader(data, batch_size=2, sampler=ranks)

    def batches(dl, epoch: int, n: int | None = None) -> list[list[int]]:
        if hasattr(dl.sampler, "set_epoch"):
            dl.sampler.set_epoch(epoch)
        return [b[0].tolist() for _, b in zip(range(len(dl) if n is None else n), dl)]  # n, not n + 1

    dl = loader()
    want = [batches(dl, epoch) for epoch in range(3)]
    dl = loader()
    epoch, n = stop
    seen = [batches(dl, e) for e in range(epoch)] + [batches(dl, epoch, n)]
    state = dl.state_dict()
    dl = loader()  # a new process
    dl.load_state_dict(state)
    if state["finished"]:
        seen += [batches(dl, e) for e in range(epoch + 1, 3)]
    else:
        seen[-1] += batches(dl, epoch)
        seen += [batches(dl, e) for e in range(epoch + 1, 3)]
    assert seen == want


@pytest.mark.slow
def test_last_ckpt_holds_plain_resume_state(small_data, tmp_path, monkeypatch):
    train_killed_after(compose_cfg(overrides(small_data)), tmp_path, 4, monkeypatch)
    state = last(tmp_path)["callbacks"]["ResumeState"]  # loaded with weights_only=True
    (rng,) = state["rng"]
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["python"]["state"], list)
    assert isinstance(rng["numpy"]["key"], list) and len(rng["numpy"]["key"]) == 624
    position = state["loader"]
    assert position["batches"] == 1 and position["finished"] is False  # step 4: epoch 1's first batch
    assert isinstance(position["epoch_generator"], torch.Tensor)


@pytest.mark.slow
def test_train_py_killed_by_a_signal_continues_with_resume(small_data, tmp_path, tmp_path_factory):
    """The real entry point: SIGKILL right after last.ckpt of step 5 (mid-epoch), then resume=<run dir>."""
    run = tmp_path / "run"
    die = textwrap.dedent(
        """
        import os, runpy, signal, sys
        import factory.training.resume as resume
        save = resume.AtomicCheckpointIO.save_checkpoint
        def save_then_die(self, checkpoint, path, storage_options=None):
            save(self, checkpoint, path, storage_options)
            if checkpoint["global_step"] == 5 and path.endswith("last.ckpt"):
                os.kill(os.getpid(), signal.SIGKILL)
        resume.AtomicCheckpointIO.save_checkpoint = save_then_die
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
        """
    )
    train_py = str(REPO / "train.py")
    cmd = [sys.executable, "-c", die, train_py, *overrides(small_data), f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert last(run)["global_step"] == 5
    overrides_yaml = (run / ".hydra" / "overrides.yaml").read_text()

    proc = subprocess.run(
        [sys.executable, train_py, f"resume={run}"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the same run dir, nothing else
    assert (run / ".hydra" / "overrides.yaml").read_text() == overrides_yaml  # the run's record is kept
    assert_same_run(last(run), reference("validate_each_epoch", small_data, tmp_path_factory))
    assert (run / "model" / "model.safetensors").is_file() and (run / "results.json").is_file()
    record = json.loads((run / "provenance.json").read_text())
    assert record["resumes"][0]["command"]["argv"][-1] == "hydra.output_subdir=null"


def test_resume_argv_uses_the_runs_own_config(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("resume: null\n")
    with pytest.raises(ConfigError, match=r"last\.ckpt does not exist"):
        resume.resume_argv([f"resume={tmp_path}"])
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    argv = resume.resume_argv([f"resume={tmp_path}", "trainer.max_epochs=10"])
    assert argv[:4] == ["--config-dir", str(tmp_path / ".hydra"), "--config-name", "config"]
    assert "trainer.max_epochs=10" in argv and f'hydra.run.dir="{tmp_path}"' in argv
    assert resume.resume_argv(argv) == argv  # as Lightning passes it on to the other DDP processes
    assert resume.resume_argv(["arch=gpt2"]) == ["arch=gpt2"]
    with pytest.raises(ConfigError, match="presets are already merged"):
        resume.resume_argv([f"resume={tmp_path}", "arch=bert"])
    with pytest.raises(ConfigError, match="no such run directory"):
        resume.resume_argv([f"resume={tmp_path / 'nothing'}"])


# ---- atomic checkpoints ---------------------------------------------------------------------------------
def _partial_write_then_enospc(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_save({"step": torch.tensor(1)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _partial_write_then_enospc)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"step": torch.tensor(2)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_full_disk_during_training_keeps_the_last_good_checkpoint(small_data, tmp_path, monkeypatch):
    save = torch.save

    def full_at_step_3(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step") == 3:
            return _partial_write_then_enospc(obj, f)
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_step_3)
    with pytest.raises(OSError, match="No space left"):
        train(compose_cfg(overrides(small_data)), run_dir=tmp_path)
    assert last(tmp_path)["global_step"] == 2  # loads with weights_only=True
    assert not [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]


# ---- guards ---------------------------------------------------------------------------------------------
def test_non_finite_loss_stops_at_that_step_and_writes_no_checkpoint_of_it(small_data, tmp_path, monkeypatch):
    from factory.training.lightning.module import FactoryModule

    step = FactoryModule.training_step

    def nan_at_step_4(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == 3 else loss

    monkeypatch.setattr(FactoryModule, "training_step", nan_at_step_4)
    with pytest.raises(NonFiniteError, match=r"The training loss is nan at global step 3 \(epoch 1, batch 1"):
        train(compose_cfg(overrides(small_data)), run_dir=tmp_path)
    ckpt = last(tmp_path)
    assert ckpt["global_step"] == 3  # nothing after the last good step
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "model").exists()


def test_non_finite_weights_are_never_written(small_data, tmp_path, monkeypatch):
    def poison_at_step_2(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2:  # after the optimizer step, before the checkpoint of step 2
            with torch.no_grad():
                pl_module.model.score.weight[0, 0] = float("inf")

    # ResumeState runs before the checkpoint callbacks (Lightning moves those last).
    monkeypatch.setattr(resume.ResumeState, "on_train_batch_end", poison_at_step_2, raising=False)
    with pytest.raises(
        NonFiniteError, match=r"Not writing a checkpoint at global step 2 .*model\.score\.weight"
    ):
        train(compose_cfg(overrides(small_data)), run_dir=tmp_path)
    assert last(tmp_path)["global_step"] == 1


def test_empty_training_data_is_an_error_naming_the_file(tmp_path):
    # BERT's normaliser strips a lone combining accent: the text encodes to nothing but a [SEP].
    empty = tmp_path / "train.txt"
    empty.write_text("\u0301\n\u0301\n", encoding="utf-8")
    _, validation = default_data_files("causal_lm")
    cfg = compose_cfg(
        [
            "head=causal_lm",
            "arch.num_hidden_layers=1",
            "arch.hidden_size=32",
            "arch.num_attention_heads=2",
            "arch.intermediate_size=37",
            "arch.vocab_size=200",
            "data.max_length=32",
            f"data.train_file={empty}",
            f"data.validation_file={validation}",
        ]
    )
    with pytest.raises(DataError, match=rf"{empty}: the training split has 0 rows after encoding"):
        train(cfg, run_dir=tmp_path / "run")


DDP_SCRIPT = """
import os, sys, time
from datetime import timedelta
import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from factory.training.lightning.failures import ProcessGuard, process_group_timeout

MODE, OUT = sys.argv[1], sys.argv[2]

class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def on_fit_start(self):
        # Both processes have joined: from here a collective waits 15 s for the other, however long the
        # start (imports, the rendezvous) took on a busy machine.
        torch.distributed.distributed_c10d._set_pg_timeout(timedelta(seconds=15))
        # Once, and atomically: a process killed mid-write must not leave an empty pid file.
        path = os.path.join(OUT, f"pid{self.global_rank}")
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)

    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            if MODE == "rank1_raises" and self.global_rank == 1:
                raise RuntimeError("rank 1 failed on purpose at step 3")
            if MODE == "rank1_hangs" and self.global_rank == 1:
                time.sleep(3600)
            if MODE == "rank0_killed" and self.global_rank == 0:
                os.kill(os.getpid(), 9)
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

# The start is bounded generously (the other process may still be importing on a loaded machine);
# on_fit_start narrows the timeout once both have joined.
strategy = DDPStrategy(process_group_backend="gloo", timeout=process_group_timeout(600))
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=50, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=[ProcessGuard()])
trainer.fit(Model(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 4)), batch_size=4))
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mode", ["rank1_raises", "rank1_hangs", "rank0_killed"])
def test_a_failing_or_hanging_process_ends_the_whole_ddp_run(mode, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, str(script), mode, str(tmp_path)]
    # A safety net only: the run ends by itself, and a loaded machine may take minutes to start it.
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert all((tmp_path / f"pid{r}").is_file() for r in (0, 1)), proc.stderr[-3000:]
    pids = [int((tmp_path / f"pid{r}").read_text()) for r in (0, 1)]
    deadline = time.monotonic() + 120  # polled: only a machine this slow waits that long
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(p) for p in pids), "a process outlived the run"
    if mode == "rank1_raises":
        assert "rank 1 failed on purpose at step 3" in proc.stderr  # the error is shown
    if mode == "rank1_hangs":  # rank 0 gave up after the timeout and ended rank 1
        assert "Timed out" in proc.stderr and "ending the 1 other process" in proc.stderr


# ---- preemption -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_writes_last_ckpt_exits_143_and_resumes(small_data, tmp_path):
    """What SLURM and Kubernetes send before taking the machine back: last.ckpt, status 143, resumable."""
    run = tmp_path / "run"
    # Long enough that the signal always lands in training, however slow or fast the machine.
    more = ["trainer.max_steps=100000", "trainer.max_epochs=100000"]
    more += ["callbacks.last_checkpoint.every_n_train_steps=100000"]
    more += ["+logger.csv.flush_logs_every_n_steps=1"]  # metrics.csv appears once training has started
    cmd = [sys.executable, str(REPO / "train.py"), *overrides(small_data, *more), f"hydra.run.dir={run}"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not (run / "logs" / "metrics.csv").is_file() and proc.poll() is None:
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert "resume=" in stderr and "Traceback" not in stderr
    step = last(run)["global_step"]
    assert step >= 1
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"resume={run}", f"trainer.max_steps={step + 2}"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["global_step"] == step + 2


@pytest.mark.slow
def test_last_ckpt_is_written_at_the_end_and_orphaned_temps_are_removed(small_data, tmp_path):
    """max_epochs=2 ends at step 6, not a multiple of every_n_train_steps=4; a killed save's temp goes."""
    orphan = tmp_path / "checkpoints" / ".last.ckpt.12345.0123abcd.tmp"
    orphan.parent.mkdir()
    orphan.write_bytes(b"half a checkpoint")
    kept = tmp_path / "checkpoints" / "notes.tmp"  # not the atomic writer's
    kept.write_text("mine")
    more = ["trainer.max_steps=-1", "trainer.max_epochs=2", "callbacks.last_checkpoint.every_n_train_steps=4"]
    train(compose_cfg(overrides(small_data, *more)), run_dir=tmp_path)
    assert last(tmp_path)["global_step"] == 6
    assert not orphan.exists() and kept.exists()
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def metric_rows(run: Path) -> list[dict]:
    import csv

    with open(run / "logs" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if v} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_resume_keeps_the_metrics_rows_logged_before_the_kill(small_data, tmp_path, monkeypatch):
    cfg = compose_cfg(overrides(small_data))
    train_killed_after(cfg, tmp_path, 5, monkeypatch)
    before = [r for r in metric_rows(tmp_path) if int(r["step"]) < 5]
    assert before
    train(resume.run_config(tmp_path))
    after = metric_rows(tmp_path)
    assert [r for r in after if int(r["step"]) < 5] == before  # the history as it was, not repeated
    losses = [int(r["step"]) for r in after if "train/loss" in r]
    # Every step once; step 4's row (the loss of the 5th step) was due after the save the kill followed.
    assert losses == [0, 1, 2, 3, 5, 6, 7]

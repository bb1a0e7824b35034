"""The LightningModule: a factory model, its loss, its metrics per head, and AdamW with a warmup schedule.

`FactoryModule` takes plain config data (the arch values, the head name, the optim values) and builds the
model through `factory.build` itself, so a checkpoint holds only plain hyperparameters and reloads with
`FactoryModule.load_from_checkpoint(path, weights_only=True)` and no other argument.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from factory.build import build_model
from factory.config import ConfigError, did_you_mean, plain_data
from factory.models.losses import IGNORE_INDEX

logger = logging.getLogger(__name__)

SCHEDULERS = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw",)
OPTIM_DEFAULTS: dict[str, Any] = {
    "name": "adamw",
    "lr": 5e-5,
    "weight_decay": 0.01,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "scheduler": "linear",
    "warmup_steps": 0,
    "warmup_ratio": 0.0,
}


# ---- config checks --------------------------------------------------------------------------------------
def check_optim(optim: Mapping[str, Any], path: str = "optim") -> dict[str, Any]:
    """The optimizer settings with defaults filled in; a bad key or value raises `ConfigError`."""
    values = dict(plain_data(optim))
    for key in values:
        if key not in OPTIM_DEFAULTS:
            valid = sorted(OPTIM_DEFAULTS)
            raise ConfigError(
                f"Unknown key {path}.{key}.{did_you_mean(key, valid)} Valid keys: {valid}.", key=key
            )
    values = {**OPTIM_DEFAULTS, **values}

    def fail(key: str, valid: str, hint: str = "") -> None:
        raise ConfigError(f"{path}.{key}={values[key]!r} is not valid: expected {valid}.{hint}", key=key)

    def number(key: str) -> bool:
        return isinstance(values[key], (int, float)) and not isinstance(values[key], bool)

    if values["name"] not in OPTIMIZERS:
        fail("name", f"one of {list(OPTIMIZERS)}", did_you_mean(str(values["name"]), OPTIMIZERS))
    if values["scheduler"] not in SCHEDULERS:
        fail("scheduler", f"one of {list(SCHEDULERS)}", did_you_mean(str(values["scheduler"]), SCHEDULERS))
    if not number("lr") or not values["lr"] > 0:
        fail("lr", "a positive number")
    if not number("weight_decay") or values["weight_decay"] < 0:
        fail("weight_decay", "a number >= 0")
    if not number("eps") or not values["eps"] > 0:
        fail("eps", "a positive number")
    betas = values["betas"]
    if (
        not isinstance(betas, list)
        or len(betas) != 2
        or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas)
    ):
        fail("betas", "two numbers in [0, 1), such as [0.9, 0.999]")
    warmup_steps = values["warmup_steps"]
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        fail("warmup_steps", "an integer >= 0")
    if not number("warmup_ratio") or not 0.0 <= values["warmup_ratio"] < 1.0:
        fail("warmup_ratio", "a fraction in [0, 1)")
    return values


def lr_factor(scheduler: str, warmup: int, total: int):
    """The multiplier of the base learning rate at each optimizer step: linear warmup, then `scheduler`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights, none on biases and LayerNorm weights (transformers' Trainer does this)."""
    no_decay: set[str] = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, nn.LayerNorm) or name == "bias":
                no_decay.add(full)
    decay, rest = [], []
    for name, p in model.named_parameters():  # tied weights appear once
        if p.requires_grad:
            (rest if name in no_decay else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


# ---- metrics --------------------------------------------------------------------------------------------
def accuracy_and_macro_f1(preds: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Accuracy and macro-F1 over the classes seen in labels or predictions (scikit-learn's convention)."""
    if labels.numel() == 0:
        return float("nan"), float("nan")
    n = int(max(preds.max(), labels.max())) + 1
    confusion = torch.bincount(labels * n + preds, minlength=n * n).reshape(n, n).double()
    tp = confusion.diag()
    predicted, actual = confusion.sum(0), confusion.sum(1)
    seen = (predicted + actual) > 0
    f1 = torch.where(seen, 2 * tp / (predicted + actual).clamp(min=1), torch.zeros_like(tp))
    return float(tp.sum() / labels.numel()), float(f1[seen].mean())


# ---- the module -----------------------------------------------------------------------------------------
class FactoryModule(pl.LightningModule):
    """Training and validation of one factory model for one head.

    `arch` holds the model's config values (`model_type` and fields or common names, as `factory.build`
    reads them, including vocab size, special token ids and label maps); `optim` the optimizer settings
    (see `check_optim`). `model`, when given (pretrained weights), is used instead of a fresh one; it is
    not a hyperparameter: its config is stored as `arch`, and its weights are in the checkpoint.
    """

    def __init__(
        self,
        arch: Mapping[str, Any],
        head: str,
        optim: Mapping[str, Any] | None = None,
        seed: int | None = None,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        optim = check_optim(optim or {})
        if model is None:
            with torch.random.fork_rng(devices=[]):  # seeding the init must not reseed the caller's RNG
                _, model = build_model(plain_data(arch, "arch"), head, seed=seed)
        self.model = model
        self.head = head
        # The model's typed config written back as plain values: reloading builds exactly this model.
        arch = config_values(model.config)
        self.save_hyperparameters({"arch": arch, "head": head, "optim": optim, "seed": seed})
        self._forward_args = set(inspect.signature(model.forward).parameters)
        self._outputs: list[dict[str, Any]] = []
        self.train_tokens = 0
        self.train_time = 0.0
        self._step_start: float | None = None

    def forward(self, **inputs: torch.Tensor):
        return self.model(**{k: v for k, v in inputs.items() if k in self._forward_args})

    def _labelled(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = dict(batch)
        if self.head == "causal_lm" and "labels" in batch and not self.model.labels_shifted_inside:
            # This model's labels are the next tokens (HF's BartForCausalLM): shift them left here.
            batch["labels"] = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)
        return batch

    # ---- training -----------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(**self._labelled(batch))
        size = batch["input_ids"].size(0)
        self.log("train/loss", out.loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        mask = batch.get("attention_mask")
        self.train_tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        return out.loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._step_start is not None:
            self.train_time += time.perf_counter() - self._step_start

    # ---- validation ---------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        batch = self._labelled(batch)
        out = self(**batch)
        size = batch["input_ids"].size(0)
        if self.head == "seqcls":
            self.log("val/loss", out.loss, on_epoch=True, batch_size=size)
            self._outputs.append({"preds": out.logits.argmax(-1).cpu(), "labels": batch["labels"].cpu()})
        elif self.head == "qa":
            self.log("val/loss", out.loss, on_epoch=True, batch_size=size)
            # Rows as lists: batches are padded to different lengths (best_spans reads each window's length).
            keep = {
                "start_logits": out.start_logits.float().cpu().tolist(),
                "end_logits": out.end_logits.float().cpu().tolist(),
                "window_index": batch["window_index"].tolist(),  # rows of the datamodule's val_windows
            }
            self._outputs.append(keep)
        elif self.head == "causal_lm":
            labels = batch["labels"][:, 1:] if self.model.labels_shifted_inside else batch["labels"]
            tokens = int((labels != IGNORE_INDEX).sum())
            self._outputs.append({"loss_sum": out.loss.detach().float().cpu() * tokens, "tokens": tokens})
        else:
            self.log("val/loss", out.loss, on_epoch=True, batch_size=size)

    def on_validation_epoch_end(self) -> None:
        outputs, self._outputs = self._outputs, []
        if not outputs:
            return
        if self.head == "seqcls":
            preds = torch.cat([o["preds"] for o in outputs])
            labels = torch.cat([o["labels"] for o in outputs])
            accuracy, f1 = accuracy_and_macro_f1(preds, labels)
            self.log_dict({"val/accuracy": accuracy, "val/f1": f1}, prog_bar=True)
        elif self.head == "qa":
            em, f1 = self._qa_scores(outputs)
            self.log_dict({"val/exact_match": em, "val/f1": f1}, prog_bar=True)
        elif self.head == "causal_lm":
            tokens = sum(o["tokens"] for o in outputs)
            loss = float(sum(o["loss_sum"] for o in outputs) / max(tokens, 1))
            self.log_dict({"val/loss": loss, "val/perplexity": math.exp(min(loss, 50.0))}, prog_bar=True)

    def _qa_scores(self, outputs: list[dict[str, Any]]) -> tuple[float, float]:
        """SQuAD exact match and F1 (fractions) of the best span over each example's windows.

        Only examples whose every window was seen are scored, so a sanity check or `limit_val_batches`
        gives the score of the examples it covered rather than zeros for the rest.
        """
        from factory.heads.qa import best_spans, squad_em_f1

        datamodule = getattr(self.trainer, "datamodule", None)
        windows = getattr(datamodule, "val_windows", None)
        if windows is None:
            logger.warning("No val_windows on the datamodule: QA exact match and F1 are not computed.")
            return float("nan"), float("nan")
        rows = [r for o in outputs for r in o["window_index"]]
        seen = {k: [windows[k][r] for r in rows] for k in ("offset_mapping", "context_mask", "example_index")}
        examples = datamodule.val_examples
        spans = best_spans(
            [row for o in outputs for row in o["start_logits"]],
            [row for o in outputs for row in o["end_logits"]],
            seen,
            [e["context"] for e in examples],
        )
        total, covered = Counter(windows["example_index"]), Counter(seen["example_index"])
        done = sorted(e for e, n in covered.items() if n == total[e])
        if not done:
            return float("nan"), float("nan")
        return squad_em_f1([spans[e]["text"] for e in done], [examples[e]["answers"]["text"] for e in done])

    # ---- optimizer ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        optim = self.hparams["optim"]
        optimizer = torch.optim.AdamW(
            parameter_groups(self.model, optim["weight_decay"]),
            lr=optim["lr"],
            betas=tuple(optim["betas"]),
            eps=optim["eps"],
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = optim["warmup_steps"] or int(optim["warmup_ratio"] * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(optim["scheduler"], warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def config_values(config) -> dict[str, Any]:
    """A typed config as the plain values `factory.build` reads back (`model_type` plus its fields)."""
    values = {"model_type": config.model_type}
    for name in config.field_names():
        values[name] = getattr(config, name)
    return plain_data(values, "arch")

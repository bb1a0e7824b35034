"""Helpers shared by the bench scripts: timing, the matmul peak, tables, random HF checkpoints.

Run the scripts from the repository root (`python bench/forward.py`); this folder is then on `sys.path`.
Nothing here is imported by `factory` or by the tests.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Benchmark this checkout's `factory`, whatever an editable install elsewhere points at.
ROOT = Path(__file__).resolve().parent.parent
if sys.path[0] != str(ROOT):
    sys.path.insert(0, str(ROOT))
# Our checkpoints and HF's live in temporary folders; never let transformers look at the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class OtherLoad:
    """How busy the machine was with other processes while the block ran (a noisy-neighbour check).

    Reads the kernel's busy CPU time over the block and subtracts this process's and its waited
    children's; `share` is the rest as a fraction of all cores.
    """

    def __enter__(self) -> OtherLoad:
        self._start = (self._busy(), self._ours(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        busy0, ours0, t0 = self._start
        wall = time.perf_counter() - t0
        others = (self._busy() - busy0) - (self._ours() - ours0)
        self.share = max(0.0, others) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0

    @staticmethod
    def _busy() -> float:
        return _cpu_counters()[0] / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def note(self) -> str:
        warn = "  (busy machine: ratios are less reliable)" if self.share > 0.1 else ""
        return f"other processes used {self.share:.0%} of the CPUs during the run{warn}"


def busy_share(interval: float = 0.5) -> float:
    """Fraction of all CPUs busy (with any process) over `interval` seconds."""
    before = _cpu_counters()
    time.sleep(interval)
    after = _cpu_counters()
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def _cpu_counters() -> tuple[int, int]:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0, 0
    return sum(fields) - fields[3] - fields[4], sum(fields)


def wait_until_quiet(max_wait: float, threshold: float = 0.15) -> None:
    """On a shared machine: wait (at most `max_wait` s) until other processes leave the CPUs idle."""
    deadline = time.perf_counter() + max_wait
    while time.perf_counter() < deadline and busy_share() > threshold:
        time.sleep(1.0)


def add_quiet_wait(parser) -> None:
    """The `--quiet-wait S` option every script takes (see `wait_until_quiet`)."""
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="on a shared machine, wait up to S seconds before each round for the CPUs to be idle",
    )


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(
    fns: dict[str, Callable[[], object]],
    runs: int,
    warmup: int,
    cpu: dict[str, list[float]] | None = None,
    quiet_wait: float = 0.0,
) -> dict[str, list[float]]:
    """Wall seconds of each of `fns`, `runs` times, interleaved so that machine noise hits every side alike.

    With `cpu`, also the process CPU seconds of each call (all threads, user + system), which waiting
    for a core that another process holds does not inflate. `quiet_wait` > 0 waits up to that many
    seconds before each round for the machine to be idle (see `wait_until_quiet`).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        if quiet_wait:
            wait_until_quiet(quiet_wait)
        for name, fn in fns.items():
            c = time.process_time()
            times[name].append(timed(fn))
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - c)
    return times


def matmul_peak_gflops(n: int = 2048, runs: int = 5) -> float:
    """fp32 GFLOP/s of one big square matmul on the current torch threads (the practical peak).

    The best run of the better of `a @ b` and `a @ b.T` (with torch's CPU BLAS the two layouts can
    differ by 2x, and nn.Linear multiplies by the transposed weight); the best run, because a peak is
    what the machine can do when nothing else runs on it.
    """
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    with torch.inference_mode():
        for rhs in (b, b.t()):
            a @ rhs  # warm up the BLAS threads
            t = min(timed(lambda rhs=rhs: a @ rhs) for _ in range(runs))
            best = max(best, 2 * n**3 / t / 1e9)
    return best


def paired_ratio(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """Median of per-round ratios: each pair ran back to back, so a noisy stretch hits both alike."""
    return median([a / b for a, b in zip(ours, theirs)])


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table; floats are formatted by the caller."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ratio: float, goal: float) -> str:
    return "ok" if ratio <= goal else "MISSED"


# ---- random checkpoints of the standard sizes -------------------------------------------------------
def hf_config(model_type: str):
    """transformers' config of `model_type` with its default (base) sizes."""
    import transformers

    if model_type == "bert":
        return transformers.BertConfig()  # bert-base-uncased
    if model_type == "gpt2":
        return transformers.GPT2Config()  # gpt2 (124M)
    if model_type == "bart":
        # BartConfig's defaults are bart-large; bart-base is 6+6 layers, 768 wide, 12 heads.
        return transformers.BartConfig(
            d_model=768,
            encoder_layers=6,
            decoder_layers=6,
            encoder_attention_heads=12,
            decoder_attention_heads=12,
            encoder_ffn_dim=3072,
            decoder_ffn_dim=3072,
        )
    if model_type == "roberta":  # roberta-base: 514 positions, one token type, eps 1e-5
        return transformers.RobertaConfig(max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5)
    if model_type == "distilbert":
        return transformers.DistilBertConfig()  # distilbert-base-uncased
    if model_type == "llama":
        # SmolLM-135M (HuggingFaceTB/SmolLM-135M): grouped-query attention, tied embeddings.
        return transformers.LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=0,
        )
    raise ValueError(
        f"No bench config for model_type {model_type!r}; valid: bert, gpt2, bart, roberta, distilbert, llama."
    )


def save_random_hf_model(model_type: str, folder: Path, seed: int = 0) -> Path:
    """A randomly initialised HF base model of `model_type`'s default size, saved with save_pretrained."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(hf_config(model_type))
    model.save_pretrained(folder)
    return folder


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin"))

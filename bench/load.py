"""Loading a bert-base-sized checkpoint: time in a warm process, and peak memory in fresh ones.

    python bench/load.py            # 7 timed loads per side, 3 fresh processes per side for memory
    python bench/load.py --quick    # 3 timed loads, 1 process per side

The checkpoint is a randomly initialised `transformers.BertModel(BertConfig())` saved with
`save_pretrained` (one `model.safetensors`, about 440 MB) in a temporary folder. Both sides load it with
their `BertModel.from_pretrained`, fp32. Time: medians of interleaved loads in this process after one
warm-up each (the file is then in the page cache, as for any second load). Memory: each side in a fresh
process; the baseline is the resident set after the imports, the peak is the kernel's high-water mark
(VmHWM, reset after the imports through /proc/self/clear_refs) during `from_pretrained`. Weights that stay
mapped from the file are resident only once read, so `touched` is the high-water mark again after reading
every parameter once (as a first forward does): what the loaded model really holds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as common

TIME_GOAL = 1.0
MEMORY_GOAL = 1.1

_CHILD = """
import json, sys
{imports}
def status():
    out = {{}}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out
base = status()["VmRSS"]
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    reset = True
except OSError:
    reset = False
model = cls.from_pretrained(sys.argv[1])
after = status()
for p in model.parameters():  # read every weight once, as a first forward would
    p.sum()
touched = status()
print(json.dumps({{
    "base": base, "peak": after["VmHWM"], "after": after["VmRSS"], "touched": touched["VmHWM"], "reset": reset
}}))
"""
IMPORTS = {
    "ours": "import torch\nfrom factory import BertModel as cls",
    "hf": "import torch\nimport transformers\ncls = transformers.BertModel\ncls.__name__  # the lazy import",
}


def memory_child(side: str, folder: Path) -> dict:
    code = _CHILD.format(imports=IMPORTS[side])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(common.ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder)],
        cwd=common.ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{side} child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_loads(loaders: dict, folder: Path, runs: int, quiet_wait: float = 0.0) -> dict[str, list[float]]:
    """Interleaved load times after one warm-up each; the model and garbage collection are not timed."""
    times: dict[str, list[float]] = {side: [] for side in loaders}
    for i in range(runs + 1):
        if quiet_wait:
            common.wait_until_quiet(quiet_wait)
        for side, load in loaders.items():
            gc.collect()
            t = time.perf_counter()
            model = load(folder)
            elapsed = time.perf_counter() - t
            del model
            if i:
                times[side].append(elapsed)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=None, help="timed loads per side (default 7, quick 3)")
    parser.add_argument(
        "--procs", type=int, default=None, help="memory processes per side (default 3, quick 1)"
    )
    parser.add_argument("--quick", action="store_true")
    common.add_quiet_wait(parser)
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 7)
    procs = args.procs or (1 if args.quick else 3)

    import torch
    import transformers

    import factory

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        common.save_random_hf_model("bert", folder)
        size = common.dir_bytes(folder)

        loaders = {"ours": factory.BertModel.from_pretrained, "hf": transformers.BertModel.from_pretrained}
        with common.OtherLoad() as load:
            times = time_loads(loaders, folder, runs, args.quiet_wait)
            mem = {side: [memory_child(side, folder) for _ in range(procs)] for side in ("ours", "hf")}

    t = {k: common.median(v) for k, v in times.items()}
    rows = []
    for side in ("ours", "hf"):
        peaks = [m["peak"] - m["base"] for m in mem[side]]
        touched = [m["touched"] - m["base"] for m in mem[side]]
        peak = max(common.median(peaks), common.median(touched))
        rows.append(
            [
                side,
                f"{t[side]:.3f}",
                f"{common.paired_ratio(times[side], times['hf']):.2f}",
                f"{common.median([m['base'] for m in mem[side]]) / 2**20:.0f}",
                f"{common.median(peaks) / 2**20:.0f}",
                f"{common.median(touched) / 2**20:.0f}",
                f"{peak / size:.2f}",
            ]
        )
    print(
        f"bert-base checkpoint {size / 2**20:.0f} MiB; {runs} warm loads per side (medians), "
        f"{procs} fresh process(es) per side for memory; {load.note()}\n"
    )
    headers = ["side", "load s", "vs hf", "base MiB", "peak-base MiB", "touched-base MiB", "max/ckpt"]
    print(common.table(headers, rows))
    time_ratio = common.paired_ratio(times["ours"], times["hf"])
    mem_ratio = (
        max(common.median([m[k] - m["base"] for m in mem["ours"]]) for k in ("peak", "touched")) / size
    )
    print(
        f"\nours/hf load time: {time_ratio:.2f} (goal <= {TIME_GOAL}: {common.verdict(time_ratio, TIME_GOAL)})"
    )
    print(
        f"our peak / checkpoint: {mem_ratio:.2f} (goal <= {MEMORY_GOAL}: {common.verdict(mem_ratio, MEMORY_GOAL)})"
    )
    if not all(m["reset"] for ms in mem.values() for m in ms):
        print("note: /proc/self/clear_refs was not writable; peaks include the imports' own high-water mark")
    return 0


if __name__ == "__main__":
    sys.exit(main())

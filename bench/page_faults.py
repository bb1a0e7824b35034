"""Page faults of a training step's temporaries, with glibc's default and with train.py's setting.

    python bench/page_faults.py                  # a 64 MiB temporary, 4 warm-up steps, 3 measured
    python bench/page_faults.py --mib 256 --steps 5

`train.py` calls `factory.training.run.keep_freed_memory()` so that glibc keeps freed blocks in the heap:
a step's large temporaries (activations, logits, gradients) are then reused warm by the next step instead
of being unmapped and page-faulted in again. Each setting runs in a fresh process (the setting cannot be
undone): a "step" writes a `--mib` MiB tensor and frees it; after the warm-up steps (the heap grows once)
the table gives the most minor page faults of one measured step, against the block's page count.
Goal: with the setting, under a tenth of the block's pages (without it, about all of them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import _common as common

GOAL = 0.1  # faults per page of the block, at most, with keep_freed_memory


def child(keep: bool, mib: int, warmup: int, steps: int) -> None:
    import resource

    import torch

    took = False
    if keep:
        from factory.training.run import keep_freed_memory

        took = keep_freed_memory()

    def faults_of_a_step() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(mib << 18).fill_(1.0)  # mib MiB of float32 written, then freed
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    for _ in range(warmup):
        faults_of_a_step()
    worst = max(faults_of_a_step() for _ in range(steps))
    pages = (mib << 20) // resource.getpagesize()
    print(json.dumps({"took": took, "faults": worst, "pages": pages}))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="size of a step's temporary")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", choices=["default", "keep"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child == "keep", args.mib, args.warmup, args.steps)
        return 0
    if not sys.platform.startswith("linux"):
        print("glibc's mallopt: Linux only")
        return 0
    rows = []
    for mode in ("default", "keep"):
        cmd = [sys.executable, __file__, "--child", mode, *argv]
        out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        share = out["faults"] / out["pages"]
        setting = "keep_freed_memory" + ("" if out["took"] else " (refused)") if mode == "keep" else "default"
        goal, ok = (f"< {GOAL:.0%}", "ok" if share < GOAL else "MISSED") if mode == "keep" else ("", "")
        rows.append(
            [setting, f"{args.mib} MiB", str(out["pages"]), str(out["faults"]), f"{share:.0%}", goal, ok]
        )
    print(common.table(["glibc", "temporary", "pages", "faults/step", "share", "goal", ""], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

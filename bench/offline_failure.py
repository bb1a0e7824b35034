"""How long a hub id that is not in the cache takes to fail offline, ours against transformers'.

    python bench/offline_failure.py               # 10 rounds
    python bench/offline_failure.py --quick       # 3 rounds
    nice -n -10 python bench/offline_failure.py --quiet-wait 30   # on a shared machine

With `HF_HUB_OFFLINE=1` and an empty cache folder, `factory.AutoModel.from_pretrained("org/nothing")` must
fail at once with an error that names the repo, the revision and the way out, not after retries or
timeouts (tests/test_hub.py checks the error). Both sides run in this warm process (imports done), rounds
alternating after one warm-up call each; the table gives the median seconds per failure and the ratio.
Goal: ours under 0.1 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import _common as common

GOAL_S = 0.1


def failure(load, name: str, cache: Path):
    def call() -> None:
        try:
            load(name, cache_dir=cache)
        except OSError:  # ours: FileNotFoundError; transformers: OSError
            return
        raise AssertionError(f"{name} loaded from an empty cache")

    return call


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    common.add_quiet_wait(parser)
    args = parser.parse_args(argv)
    import transformers

    import factory

    runs = 3 if args.quick else args.runs
    with tempfile.TemporaryDirectory() as tmp, common.OtherLoad() as load:
        cache = Path(tmp) / "empty"
        sides = {
            "ours": failure(factory.AutoModel.from_pretrained, "org/nothing", cache),
            "hf": failure(transformers.AutoModel.from_pretrained, "org/nothing", cache),
        }
        times = common.alternate(sides, runs, warmup=1, quiet_wait=args.quiet_wait)
    ours, hf = common.median(times["ours"]), common.median(times["hf"])
    row = [
        "org/nothing, empty cache",
        f"{ours * 1e3:.1f}",
        f"{hf * 1e3:.1f}",
        f"{common.paired_ratio(times['ours'], times['hf']):.2f}",
        f"< {GOAL_S * 1e3:.0f} ms",
        "ok" if ours < GOAL_S else "MISSED",
    ]
    print(common.table(["case", "ours ms", "hf ms", "ours/hf", "goal", ""], [row]))
    print(load.note())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

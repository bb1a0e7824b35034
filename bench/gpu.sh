#!/usr/bin/env bash
# GPU readiness: a gpt2-124M-shaped causal LM trained through train.py in bf16-mixed, with SDPA (flash
# attention on GPUs that have it), fused AdamW and trainer.compile=true, for a fixed number of steps on
# one GPU, then on every GPU of the machine with DDP; prints tokens per second and MFU (the fraction of
# the GPUs' dense bf16 peak, from factory.training.lightning.performance's table) from each run's results.json.
#
#   bash bench/gpu.sh                      # 300 steps, 16 x 1024 tokens per GPU
#   STEPS=100 BATCH=8 bash bench/gpu.sh
#
# Goal on an H100/H200-class GPU: MFU of 45% or more (llm-foundry reports 43-45% for a 125M model on
# A100s). tokens/s counts every step, compilation included; longer runs approach the steady state.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-300}
BATCH=${BATCH:-16}
OUT=${OUT:-runs/gpu-bench-$(date +%Y%m%d-%H%M%S)}
common=(
  arch=gpt2 head=causal_lm
  # gpt2's own dimensions, not the small default experiment's (the vocabulary is the tokenizer trained
  # on the shipped text, so the embedding is smaller than gpt2's 50,257 rows)
  arch.vocab_size=50257 arch.num_hidden_layers=12 arch.hidden_size=768 arch.num_attention_heads=12
  arch.intermediate_size=3072 optim.lr=6e-4
  trainer.precision=bf16-mixed trainer.compile=true optim.fused=true
  arch.max_position_embeddings=1024 data.max_length=1024 "data.batch_size=$BATCH"
  "trainer.max_steps=$STEPS" trainer.max_epochs=-1 "trainer.val_check_interval=$STEPS" trainer.limit_val_batches=2
  callbacks.progress_bar.refresh_rate=0
)
python train.py trainer=gpu "${common[@]}" "hydra.run.dir=$OUT/one-gpu"
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -gt 1 ]; then
  python train.py trainer=ddp trainer.accelerator=gpu trainer.strategy.find_unused_parameters=false \
    "${common[@]}" "hydra.run.dir=$OUT/ddp"
fi
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path

for run in sorted(Path(sys.argv[1]).iterdir()):
    r = json.loads((run / "results.json").read_text())
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "unknown"
    print(f"{run.name:<8} {r['tokens_per_second']:>12,.0f} tokens/s  MFU {mfu}  ({r['peak_source']})")
PY

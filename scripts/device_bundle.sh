#!/usr/bin/env bash
# Pack what scripts/gpu_table.sh needs on a bare GPU machine reached through a tree-copying tool
# whose calls carry at most 64 MiB each, the tracked tree included (this workplace's `device`;
# the tree is ~17 MiB since results/cf-weights): the SmolLM2 GGUF (94 MiB) is split in three
# parts, one folder each, each carried by one call while the machine stays warm.
#   bash scripts/device_bundle.sh         # after `make install` and the ml1m-cpu CF runs exist here
# .dev1/: GGUF part 1, the imported data (runs/ml1m), the MF run, wheels of gguf and peft (the GPU
#         image has neither, or another peft). .dev2/: GGUF part 2. .dev3/: GGUF part 3 and the
#         SmolLM2 tokenizer (for benchmarks/gpu_check.sh). Calls 1 and 2 copy theirs to /tmp/dev
#         there; call 3 copies it and runs: DEV=/tmp/dev bash scripts/gpu_table.sh DEADLINE_MIN JOBS
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GGUF=$($PY -c "from cora.llm.backbone import smollm2_gguf_path; print(smollm2_gguf_path())")
TOK=$($PY -c "from cora.llm.backbone import DEFAULT_BACKBONE, gguf_cache_dir, smollm2_gguf_path; print(gguf_cache_dir(smollm2_gguf_path(), DEFAULT_BACKBONE))")
[ -d runs/ml1m ] && [ -f runs/experiments/ml1m-cpu/cf-mf/model.safetensors ] || {
  echo "runs/ml1m or runs/experiments/ml1m-cpu/cf-mf missing: run 'cora experiment experiments/ml1m-cpu.yaml --only MF' first" >&2; exit 1; }
[ -f "$TOK/tokenizer.json" ] || $PY -c "from cora.llm.backbone import load_backbone; load_backbone('smollm2-135m')"
rm -rf .dev1 .dev2 .dev3
mkdir -p .dev1/wheels .dev1/cf-mf .dev2 .dev3
# 30 + 32 + the rest (~32) MiB: each call's carry stays under 64 MiB with the tree beside it.
dd if="$GGUF" of=.dev1/part1 bs=1M count=30 status=none
dd if="$GGUF" of=.dev2/part2 bs=1M skip=30 count=32 status=none
dd if="$GGUF" of=.dev3/part3 bs=1M skip=62 status=none
cp -r runs/ml1m .dev1/ml1m
cp runs/experiments/ml1m-cpu/cf-mf/{config.yaml,log.jsonl,metrics.json,model.safetensors,predictions-test-limit*.parquet} .dev1/cf-mf/
ver() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
$PY -m pip download -q --no-deps -d .dev1/wheels "gguf==$(ver gguf)" "peft==$(ver peft)"
tar czf .dev3/tok.tgz -C "$TOK" tokenizer.json tokenizer_config.json config.json
du -sh .dev1 .dev2 .dev3
echo "GGUF sha256 $(sha256sum "$GGUF" | cut -c1-16) (gpu_table.sh prints the reassembled one's)"

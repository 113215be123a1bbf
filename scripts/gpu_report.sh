#!/usr/bin/env bash
# The GPU evidence in one prepared command: the GPU test lane and the bench (eager and compiled, ours beside
# transformers' eager and compiled greedy) on a pair where model time matters, written to $OUT as JSON and PNG.
#
#   scripts/gpu_report.sh                      # on a CUDA machine: ~200M-parameter target, bf16, batch 1..64
#   DEVICE=cpu SIZE=tiny scripts/gpu_report.sh # the same steps on a CPU with a tiny pair (to test the script)
#
# Environment: DEVICE (cuda), SIZE (full | tiny), OUT (gpu_report), PYTHON (python), BATCH_SIZES (1,8,64).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-full}
OUT=${OUT:-gpu_report}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"

if [ "$SIZE" = tiny ]; then
    PAIR=(--layers 2 --width 64 --draft-layers 1); BENCH=(--batch-sizes 1,4 --num-prompts 4 --max-new-tokens 8 --repeats 1)
else
    # Not yet run on a GPU: compile warm-ups (3 compiled methods per batch size) dominate the time, so three
    # batch sizes by default; BATCH_SIZES=1,2,4,8,16,32,64 for the full sweep when the budget allows.
    PAIR=(--layers 16 --width 1024 --draft-layers 2)
    BENCH=(--batch-sizes "${BATCH_SIZES:-1,8,64}" --num-prompts 64 --max-new-tokens 64 --repeats 1)
fi

echo "== environment" | tee "$OUT/report.txt"
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee -a "$OUT/report.txt"

echo "== pair" | tee -a "$OUT/report.txt"
"$PYTHON" scripts/build_layer_skip_pair.py --out "$OUT/pair" "${PAIR[@]}" | tee -a "$OUT/report.txt"

echo "== gpu test lane (skipped without CUDA)" | tee -a "$OUT/report.txt"
"$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -s 2>&1 | tail -15 | tee -a "$OUT/report.txt" || true

echo "== bench" | tee -a "$OUT/report.txt"
DTYPE=bfloat16; [ "$DEVICE" = cpu ] && DTYPE=float32
"$PYTHON" -m hf_batchspec bench --device "$DEVICE" --dtype "$DTYPE" --target "$OUT/pair/target" \
    --draft "$OUT/pair/draft" --compile --methods "" --quiet "${BENCH[@]}" \
    --json "$OUT/bench.json" --plot "$OUT/bench.png" 2>&1 | grep -v "Loading weights" | tee -a "$OUT/report.txt"
echo "written: $OUT/report.txt $OUT/bench.json $OUT/bench.png"

#!/usr/bin/env bash
# The GPU evidence in one prepared command: the GPU test lane and the bench (eager and compiled, ours beside
# transformers' eager and compiled greedy) on a pair where model time matters, written to $OUT as text, JSON, PNG.
#
#   scripts/gpu_report.sh                      # on a CUDA machine: a ~270M-parameter target, bf16
#   DEVICE=cpu SIZE=tiny scripts/gpu_report.sh # the same steps on a CPU with a tiny pair (to test the script)
#
# Environment: DEVICE (cuda), SIZE (full | tiny), OUT (gpu_report), PYTHON (python), BATCH_SIZES (8,64),
# PAIR_DIR (a scratch folder for the pair's weights), STAGES (which of lane,bench,exact,profile to run; all by
# default), BUDGET_S (560: the whole script's seconds). Each stage stops at its own cap (LANE_S 180, BENCH_S 300,
# EXACT_S 120, PROFILE_S 75 per profile run) or when the budget runs out, keeping what it wrote (the bench's JSON
# after every batch size).
#
# Measured on an H200 (torch 2.11, transformers 5.17): pair 20 s, lane 110 s, bench 210 s, exact 75 s, profile
# ~45 s per compiled run. All stages take ~8 min: under a 10-minute limit per command, run STAGES=lane,bench and
# STAGES=exact,profile as two calls.
# Every stage runs even if an earlier one failed; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-full}
OUT=${OUT:-gpu_report}
PYTHON=${PYTHON:-python}
BUDGET_S=${BUDGET_S:-560}
PAIR_DIR=${PAIR_DIR:-$(mktemp -d)/pair}
STAGES=${STAGES:-lane,bench,exact,profile}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts/ import the package
mkdir -p "$OUT"
START=$SECONDS
STATUS=0
# seconds for a stage: its cap, or what is left of the budget (at least 30 s)
left() { local s=$((BUDGET_S - (SECONDS - START))); s=$((s < $1 ? s : $1)); echo $((s > 30 ? s : 30)); }
stage() { echo "== $1 (at $((SECONDS - START)) s)" | tee -a "$OUT/report.txt"; }
check() { local rc=$?; [ $rc -ne 0 ] && { echo "stage failed: rc $rc" | tee -a "$OUT/report.txt"; [ $STATUS -eq 0 ] && STATUS=$rc; }; return 0; }

if [ "$SIZE" = tiny ]; then
    PAIR=(--layers 2 --width 64 --draft-layers 1)
    BENCH=(--batch-sizes "${BATCH_SIZES:-4}" --num-prompts 4 --max-new-tokens 8 --repeats 1)
else
    # 8 layers x 1536 (~270M parameters, bf16): large enough that the GPU's own time shows, few enough layers
    # that compiling each shape (dynamo traces every layer) fits the lease. One timed repeat: on a GPU the
    # spread between repeats is small next to the compile warm-ups, which dominate this script's time.
    PAIR=(--layers 8 --width 1536 --draft-layers 1)
    BENCH=(--batch-sizes "${BATCH_SIZES:-8,64}" --num-prompts 64 --max-new-tokens 64 --repeats 1)
fi
: > "$OUT/report.txt"
DTYPE=bfloat16; [ "$DEVICE" = cpu ] && DTYPE=float32

stage "environment"
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>&1 | tee -a "$OUT/report.txt"; check
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee -a "$OUT/report.txt"

stage "pair"
"$PYTHON" scripts/build_layer_skip_pair.py --out "$PAIR_DIR" "${PAIR[@]}" 2>&1 | tee -a "$OUT/report.txt"; check

wanted() { [[ ",$STAGES," == *",$1,"* ]]; }

if wanted lane; then
stage "gpu test lane (skipped without CUDA)"
timeout "$(left "${LANE_S:-180}")" "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -s -W ignore 2>&1 | tail -20 | tee -a "$OUT/report.txt"; check

fi

if wanted bench; then
stage "bench"
timeout "$(left "${BENCH_S:-300}")" "$PYTHON" -m hf_batchspec bench --device "$DEVICE" --dtype "$DTYPE" --target "$PAIR_DIR/target" \
    --draft "$PAIR_DIR/draft" --compile --methods "" --ours exspec,exspec-auto --quiet "${BENCH[@]}" \
    --json "$OUT/bench.json" --plot "$OUT/bench.png" 2>&1 | grep -v "Loading weights" | tee -a "$OUT/report.txt"; check
if [ ! -f "$OUT/bench.png" ] && [ -f "$OUT/bench.json" ]; then  # cut short: the batch sizes it finished
    stage "bench, as far as it got"
    "$PYTHON" -m hf_batchspec bench --methods "" --from-json "$OUT/bench.json" --plot "$OUT/bench.png" 2>&1 | tee -a "$OUT/report.txt"
fi
fi
if wanted profile; then  # per round: wall time, launches outside the CUDA graphs, host syncs, GPU busy time
stage "per-round profile"
for args in "--batch 8 --compile" "--batch 64 --compile" "--batch 8"; do
    [ "$SIZE" = tiny ] && args="${args/64/4} --long 12 --short 4"
    timeout "$(left "${PROFILE_S:-75}")" "$PYTHON" scripts/profile_round.py --device "$DEVICE" --dtype "$DTYPE" --target "$PAIR_DIR/target" \
        --draft "$PAIR_DIR/draft" $args 2>&1 | grep -v -E "Loading weights|USDT|warn" | tee -a "$OUT/report.txt"; check
done
fi

if wanted exact; then  # in bf16 every batched method (transformers' too) drifts from batch 1 at near-ties: fp32 shows
stage "exactness in float32 (ours eager and compiled against batch-1 greedy)"
timeout "$(left "${EXACT_S:-120}")" "$PYTHON" -m hf_batchspec bench --device "$DEVICE" --dtype float32 --target "$PAIR_DIR/target" \
    --draft "$PAIR_DIR/draft" --compile --methods "" --ours exspec --quiet --batch-sizes 8 --num-prompts 16 \
    --max-new-tokens 64 --repeats 1 --json "$OUT/bench_fp32.json" 2>&1 | grep -v "Loading weights" | tee -a "$OUT/report.txt"; check
fi

echo "done in $((SECONDS - START)) s, status $STATUS; written: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$OUT/report.txt"
exit $STATUS

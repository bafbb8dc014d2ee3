#!/usr/bin/env bash
# The checks for the first GPU, in one command (issue #17, section 5).
#
#   bash benchmarks/gpu_checks.sh             # on a CUDA machine: about 6 minutes (estimated), never more than
#                                             # GPU_CHECKS_BUDGET seconds (default 690) of steps
#   bash benchmarks/gpu_checks.sh --dry-run   # anywhere, no GPU: checks that every command parses
#
# Runs these steps in order, the most important numbers first, each under its own `timeout`; a step
# that fails or runs out of time is recorded and the next one runs. One table at the end:
#   1. pipeline      bench_pipeline.py, fp16, 512 px, lfo_steps 0/1/2 and one one-step pass
#                    (goal: lfo_steps=0 at most 2.2x one pass)
#   2. train-b1      bench_train_step.py, bf16, gradient checkpointing, 512 px, batch 1, ours and
#                    OSEDiff's three-UNet layout (goals: ours under 20 GB; at most 0.8x OSEDiff's peak)
#   3. cuda-tests    the tests that skip without CUDA (tests/, "needs CUDA", named *cuda*)
#   4. degradations  bench_degradations.py --compare-unet (goal: a batch under 5% of a UNet step)
#   5. train-b4      as 2, batch 4
#   6-8. xformers, adam8bit, offload: benchmarks/smoke_cuda.py (SD2.1-base if on disk, else the tiny
#                    pipeline; the table says which)
# The benchmarks build SD2.1-base's architecture with random weights: nothing is downloaded
# (HF_HUB_OFFLINE=1 unless set). Every step's output is in $GPU_CHECKS_LOGS (default
# /tmp/irib-gpu-checks), the table also in summary.md there. PYTHON picks the interpreter.
# Exit status: 0 when every step passed or was skipped (a feature's package not installed), else 1.
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help)
            sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "gpu_checks.sh: unknown argument '$arg' (use --dry-run or --help)" >&2
            exit 2
            ;;
    esac
done

PY=${PYTHON:-$(command -v python || command -v python3)}
if [ -z "$PY" ]; then
    echo "gpu_checks.sh: no python or python3 on PATH (set PYTHON)" >&2
    exit 1
fi
BUDGET=${GPU_CHECKS_BUDGET:-690}
MIN_STEP=${GPU_CHECKS_MIN_STEP:-15}  # a step is not started with less time than this left in the budget
LOGS=${GPU_CHECKS_LOGS:-${TMPDIR:-/tmp}/irib-gpu-checks}
export PYTHONPATH="$ROOT/src:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
mkdir -p "$LOGS" || exit 1

# The tests that skip without CUDA; -k cuda picks them (their names say cuda) out of their files.
CUDA_TEST_FILES=$(grep -l "skipif(not torch.cuda.is_available()" tests/test_*.py | tr '\n' ' ')
[ -z "$CUDA_TEST_FILES" ] && CUDA_TEST_FILES="tests/no-test-skips-without-cuda-found "  # pytest: file not found

# name | time limit (s) | goal | command (arguments to $PY; no spaces inside an argument)
STEPS=(
    "pipeline|100|lfo 0 <= 2.2x one pass|benchmarks/bench_pipeline.py --device cuda --dtype fp16 --size 512 --lfo-steps 0 1 2 --repeats 3"
    "train-b1|170|ours < 20 GB, <= 0.8x OSEDiff|benchmarks/bench_train_step.py --device cuda --dtype bf16 --size 512 --gradient-checkpointing --batch-size 1 --steps 2"
    "cuda-tests|60|all pass|-m pytest $CUDA_TEST_FILES-k cuda -q -rs -p no:cacheprovider"
    "degradations|90|< 5% of a UNet step|benchmarks/bench_degradations.py --device cuda --compare-unet --unet-batch 16 --unet-dtype bf16"
    "train-b4|150|ours <= 0.8x OSEDiff|benchmarks/bench_train_step.py --device cuda --dtype bf16 --size 512 --gradient-checkpointing --batch-size 4 --steps 2"
    "xformers|40|same as SDPA|benchmarks/smoke_cuda.py xformers"
    "adam8bit|40|close to AdamW|benchmarks/smoke_cuda.py adam8bit"
    "offload|40|same as on GPU|benchmarks/smoke_cuda.py offload"
)

if [ "$DRY_RUN" = 0 ]; then
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >"$LOGS/00-preflight.log" 2>&1; then
        echo "gpu_checks.sh: CUDA is not available to $PY (see $LOGS/00-preflight.log); on a CPU, use --dry-run" >&2
        exit 1
    fi
    # One line up front for what a bare machine lacks (each step that needs it will fail on its own).
    "$PY" - <<'PYTHON' 2>&1 | tee -a "$LOGS/00-preflight.log"
import importlib.util, torch
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
missing = [m for m in ("diffusers", "transformers", "accelerate", "peft", "lpips", "pytest") if not importlib.util.find_spec(m)]
optional = [m for m in ("xformers", "bitsandbytes") if not importlib.util.find_spec(m)]
if missing:
    print(f"warning: not installed: {', '.join(missing)} (pip install -e '.[train,dev]'): the steps that need them fail")
if optional:
    print(f"note: not installed: {', '.join(optional)}: their smoke steps are skipped")
PYTHON
fi

ROWS=()
FAILED=0
START=$SECONDS
i=0
for step in "${STEPS[@]}"; do
    i=$((i + 1))
    IFS='|' read -r name limit goal command <<<"$step"
    read -r -a argv <<<"$command"
    log=$(printf '%s/%02d-%s.log' "$LOGS" "$i" "$name")
    if [ "$DRY_RUN" = 1 ]; then
        # Parse only, against the parsers in bench_args.py (no torch to import: a second in all); for
        # pytest, that its files exist and -k selects tests in them.
        if [ "${argv[0]}" = "-m" ]; then
            argv=(benchmarks/bench_args.py "${argv[@]:1}")
        else
            argv=(benchmarks/bench_args.py "$(basename "${argv[0]}")" "${argv[@]:1}")
        fi
    else
        left=$((BUDGET - (SECONDS - START)))
        if [ "$left" -lt "$MIN_STEP" ]; then
            ROWS+=("| $i | $name | SKIP | 0 | no time left in the ${BUDGET} s budget | $goal |")
            FAILED=1
            continue
        fi
        [ "$limit" -gt "$left" ] && limit=$left
    fi
    echo "== [$i/${#STEPS[@]}] $name (limit ${limit} s): $PY ${argv[*]}"
    t0=$SECONDS
    timeout -k 10 "$limit" "$PY" "${argv[@]}" >"$log" 2>&1
    rc=$?
    took=$((SECONDS - t0))
    result=$(grep '^SUMMARY ' "$log" | tail -n 1 | sed 's/^SUMMARY //')
    [ -z "$result" ] && result=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1)
    result=$(printf '%s' "$result" | tr '|' '/' | cut -c 1-220)
    case "$rc" in
        0) status=ok ;;
        3) status=SKIP ;;
        124 | 137) status="TIMEOUT (${limit} s)" FAILED=1 ;;
        *) status="FAIL (exit $rc)" FAILED=1 ;;
    esac
    [ "$DRY_RUN" = 1 ] && [ "$rc" = 0 ] && status=parses
    [ "$DRY_RUN" = 1 ] && [ "$rc" != 0 ] && status="DOES NOT PARSE (exit $rc)" FAILED=1
    echo "   $status, ${took} s: $result"
    ROWS+=("| $i | $name | $status | $took | $result | $goal |")
done

{
    echo
    if [ "$DRY_RUN" = 1 ]; then
        echo "gpu_checks.sh --dry-run: every command parsed against its script's parser (nothing ran)"
    else
        echo "gpu_checks.sh: $((SECONDS - START)) s of steps (budget ${BUDGET} s); logs in $LOGS"
    fi
    echo
    echo "| # | check | status | s | result | goal |"
    echo "|---|---|---|---:|---|---|"
    printf '%s\n' "${ROWS[@]}"
} | tee "$LOGS/summary.md"
exit "$FAILED"

#!/usr/bin/env bash
# The one prepared script for a GPU session (issue 15: the eNTK engine on an NVIDIA H200).
#
# Run from the repository root on the device machine, with $OUT set to the folder that comes back:
#
#     bash benchmarks/gpu_session.sh
#
# It installs the project, prints the device and torch version, then runs, in this order, each
# under `timeout` within one overall budget (TOTAL seconds, default 540 = 9 minutes):
#   1. the CUDA tests (tests/test_ntk_cuda.py and the *cuda* tests elsewhere:  -> $OUT/tests.txt,
#      nn.PReLU/GRU/LSTM/RNN in tests/test_recurrent_devices.py, a `conetool
#      kernels --device cuda` run of a GRU in tests/test_byo_models.py), each
#      test's outcome and any failure's traceback the moment it is known     -> $OUT/tests_live.txt
#   2. cuda_accuracy_diag.py: the float32 error of the test's ResNet-20 case, -> $OUT/diag.txt
#      the rows' against the contraction's, and the schedule's waits
#   3. bench_ntk.py --device cuda for the issue's rows (baseline vs engine;    -> $OUT/bench_ntk.txt
#      auto alone and with the set-up done before, auto+memo; on resnet20 also
#      auto+square, the Gram matrix of wide rows without the triangle, the A/B;
#      on mlp and resnet20 each kernel's difference from the float64 kernel, --exact)
#   4. bench_kernels_run.py: a whole `conetool kernels` run                   -> $OUT/kernels_run.txt
#   5. torch.profiler counts and top-20 kernels, resnet20 n = 1024            -> $OUT/profile.txt
# and writes what ran, each part's exit code and seconds to $OUT/summary.txt (7 files in all).
# A failing or timed-out part does not stop the later ones; a part is skipped when the overall
# budget has less than 20 s left. PARTS chooses the parts. On 2026-12-01 (f9e2ea8) the CUDA tests
# took 188 s with 8 workers, the rows up to vgg16 n = 500 254 s, the whole run 18 s, the machine's
# start about 30 s: in a 15-minute lease, PARTS="tests diag rows" TOTAL=600 and then, while the
# machine is still warm, PARTS="kernels profile" TOTAL=150. The 159 cases of nn.PReLU and the
# recurrent layers (tests/test_recurrent_devices.py, one in tests/test_byo_models.py), added on
# 2026-12-02, have not run on a GPU yet: their "cpu" twins take 15 s in all, in one process on a
# shared 2-core CPU.
#
# Environment overrides:
#   DEVICE=cpu     a dry run on a CPU: tiny sizes everywhere (the CUDA tests then skip)
#   PYTHON         the interpreter (default python3)
#   INSTALL=0      skip `pip install -e .` (e.g. when PYTHONPATH already points at the checkout)
#   TOTAL          overall budget in seconds (default 540)
#   PARTS          the parts to run, of "tests diag rows kernels profile" (default all five)
#   KCKPTS, KN     checkpoints and probe size of the whole run (default 20 and 1024)
#   XDIST          pytest-xdist workers for the tests (default 8; 0: none)
# Example dry run here: DEVICE=cpu INSTALL=0 PYTHON=.venv/bin/python OUT=/tmp/out bash benchmarks/gpu_session.sh

set -u
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
INSTALL=${INSTALL:-1}
TOTAL=${TOTAL:-540}
XDIST=${XDIST:-8}
PARTS=${PARTS:-tests diag rows kernels profile}
: "${OUT:?set OUT to the folder whose files come back}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ "$DEVICE" = cpu ]; then  # dry run: the same steps at sizes a laptop does in a few minutes
    KCKPTS=${KCKPTS:-3}; KN=${KN:-32}; KMODEL=lenet5
    ROWS=("mlp 16" "lenet5 16" "resnet20 8 --profile" "vgg16 2" "vgg16 4" "resnet20 16 --no-baseline")
    PROFILE_N=8
    PROFILE_METHODS=auto
    BIG=(--repeat 1)
else
    KCKPTS=${KCKPTS:-20}; KN=${KN:-1024}; KMODEL=resnet20
    # model, n, extra arguments. vgg16 at n = 500: the baseline skips itself ("would need ...").
    # Rows of a few tens of ms take the median of 5 calls (the first run's mlp memo calls: 26 and 45 ms).
    ROWS=("mlp 1024 --exact --repeat 5" "lenet5 1024 --repeat 5" "resnet20 1024 --profile --exact" "vgg16 64 --repeat 5" "vgg16 500" "resnet20 4096 --no-baseline"
          "resnet20 1024 --no-baseline --max-memory 8GiB")  # a budget that limits the schedule
    PROFILE_N=1024
    PROFILE_METHODS=auto,auto+memo
    BIG=()
fi
METHODS=auto,structured,jacobian
# auto+memo: a kernel as `conetool kernels` computes each after the first (set-up once per run).
# On a GPU `auto` always takes the structured engine, so a structured row would repeat it. The
# reference engine was timed on resnet20 n = 1024 in the first H200 run (1.07 x the baseline).
[ "$DEVICE" = cpu ] || METHODS=auto,auto+memo

SUMMARY="$OUT/summary.txt"
START=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - START) )); }

# run_part NAME FILE BUDGET COMMAND...: COMMAND under `timeout` (at most BUDGET seconds and what is
# left of TOTAL), stdout and stderr appended to FILE, its exit code and seconds to the summary.
run_part() {
    local name=$1 file=$2 budget=$3; shift 3
    local remaining; remaining=$(left)
    if [ "$remaining" -lt 20 ]; then
        echo "$name: SKIPPED (${remaining}s of the ${TOTAL}s budget left)" | tee -a "$SUMMARY"
        return
    fi
    [ "$budget" -gt "$remaining" ] && budget=$remaining
    echo "=== $name (limit ${budget}s): $*" >> "$file"
    local began; began=$(date +%s)
    timeout --kill-after=10 "$budget" "$@" >> "$file" 2>&1
    local rc=$?
    local took=$(( $(date +%s) - began ))
    local note=""
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note=" (TIMED OUT)"
    echo "=== $name: exit $rc in ${took}s$note" >> "$file"
    echo "$name: exit $rc in ${took}s$note -> $(basename "$file")" | tee -a "$SUMMARY"
}

{
    echo "gpu_session.sh, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), DEVICE=$DEVICE, TOTAL=${TOTAL}s, PARTS=$PARTS"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l | tr -d ' ') changed file(s)"
    if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi
} > "$SUMMARY"

if [ "$INSTALL" = 1 ]; then
    "$PYTHON" -m pip install --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1
    rc=$?
    echo "install: exit $rc" >> "$SUMMARY"
    if [ "$rc" -ne 0 ]; then tail -5 "$OUT/install.log" >> "$SUMMARY"; fi
    rm -f "$OUT/install.log"
fi
"$PYTHON" - >> "$SUMMARY" 2>&1 <<'EOF'
import sys
import torch
cuda = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), {name}")
try:
    import conetool
    print(f"conetool {conetool.__version__} from {conetool.__file__}")
except Exception as exc:
    print(f"conetool does not import: {exc!r}")
EOF
echo >> "$SUMMARY"

# 1. The CUDA tests (they skip on a machine without CUDA), each outcome written as it happens.
wants() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if wants tests; then
    TESTS="$OUT/tests.txt"
    : > "$TESTS"
    : > "$OUT/tests_live.txt"
    PARALLEL=()
    if [ "$XDIST" != 0 ] && "$PYTHON" -c "import xdist" >/dev/null 2>&1; then PARALLEL=(-n "$XDIST"); fi
    CONETOOL_LIVE_REPORT="$OUT/tests_live.txt" PYTHONPATH="benchmarks${PYTHONPATH:+:$PYTHONPATH}" \
        run_part "tests (cuda)" "$TESTS" 240 "$PYTHON" -m pytest -q -p no:cacheprovider \
        -p pytest_live_report ${PARALLEL[@]+"${PARALLEL[@]}"} --tb=short -o faulthandler_timeout=100 \
        --durations=15 tests/test_ntk_cuda.py tests/test_ntk_accuracy.py tests/test_ntk.py \
        tests/test_ntk_memo.py tests/test_ntk_layer_grads.py tests/test_recurrent_devices.py \
        tests/test_byo_models.py -k "cuda or gpu"
fi

# 2. Where the float32 error of the test's ResNet-20 case comes from (rows or contraction).
if wants diag; then
    : > "$OUT/diag.txt"
    run_part "accuracy diagnosis" "$OUT/diag.txt" 90 "$PYTHON" benchmarks/cuda_accuracy_diag.py "$DEVICE"
fi

# 3. The benchmark rows: one bench_ntk.py call per row, each with its own limit.
BENCH="$OUT/bench_ntk.txt"
: > "$BENCH"
if wants rows; then
    for row in "${ROWS[@]}"; do
        # shellcheck disable=SC2086  # the row's words are separate arguments
        set -- $row
        model=$1 n=$2; shift 2
        extra=("$@")
        # On resnet20, +square is the A/B of the triangle of sub-blocks for wide dense rows.
        case "$model $n" in
            "resnet20 4096") limit=120; methods=auto; extra+=(${BIG[@]+"${BIG[@]}"})
                [ "$DEVICE" = cpu ] || methods+=,auto+square ;;
            "vgg16 500") limit=120; methods=auto; extra+=(${BIG[@]+"${BIG[@]}"}) ;;
            "resnet20 1024")
                if [[ " ${extra[*]} " == *" --max-memory "* ]]; then
                    limit=90; methods=auto
                else
                    limit=180; methods=$METHODS
                    [ "$DEVICE" = cpu ] || methods+=,auto+square,auto+square+memo
                fi ;;
            *) limit=75; methods=$METHODS ;;
        esac
        run_part "bench $model n=$n${extra[*]:+ ${extra[*]}}" "$BENCH" "$limit" "$PYTHON" benchmarks/bench_ntk.py \
            --device "$DEVICE" --models "$model" --n "$n" --methods "$methods" --timeout 100 ${extra[@]+"${extra[@]}"}
    done
fi

# 4. The whole `conetool kernels` run.
RUN="$OUT/kernels_run.txt"
: > "$RUN"
if wants kernels; then
    run_part "kernels run $KMODEL x$KCKPTS n=$KN" "$RUN" 180 "$PYTHON" benchmarks/bench_kernels_run.py \
        --model "$KMODEL" --checkpoints "$KCKPTS" --n "$KN" --device "$DEVICE" --top
fi

# 5. Where the time goes: profiler counts and the top 20 kernels of the engine and the baseline.
PROFILE="$OUT/profile.txt"
: > "$PROFILE"
if wants profile; then
    run_part "profile resnet20 n=$PROFILE_N" "$PROFILE" 120 "$PYTHON" benchmarks/bench_ntk.py \
        --device "$DEVICE" --models resnet20 --n "$PROFILE_N" --methods "$PROFILE_METHODS" \
        --repeat 1 --timeout 100 --profile-top "$PROFILE"
fi

echo >> "$SUMMARY"
echo "total: $(( $(date +%s) - START ))s of ${TOTAL}s" >> "$SUMMARY"
grep -h "^| " "$BENCH" >> "$SUMMARY" 2>/dev/null || true
cat "$SUMMARY"

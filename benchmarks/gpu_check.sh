#!/usr/bin/env bash
# MRLA's training units and training cost on a CUDA GPU, in one run from the repository root, with nothing installed
# but torch, timm and pytest (the repository goes on PYTHONPATH):
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]            # default: $OUT, else ./gpu_check_results
#   bash benchmarks/gpu_check.sh --dry-run [RESULTS_DIR]  # on the CPU, tiny settings: checks that it runs through
#
# 1. tests/test_units_on_device.py on the GPU: each training unit against the plain modules in fp32, fp16 autocast
#    with GradScaler, bf16 autocast, channels_last and torch.compile (units_on_device.log and .xml);
# 2. benchmarks/bench.py --train-only on cuda, batch 64, 224x224: the training step's peak
#    (torch.cuda.max_memory_allocated beyond what was allocated before the step) and speed of resnet50_mrla,
#    resnet50_mrla_base and deit_tiny_mrla against their timm base models, fp32 eager, AMP (fp16 autocast) and
#    torch.compile (bench.log; the tables in summary.md), and a profile of resnet50_mrla's fp32 step against
#    resnet50's (bench.py --profile: kernel time per operator);
# 3. environment.txt: nvidia-smi and the versions of python, torch, CUDA, cuDNN and timm.
# Each step has a time limit, so a slow or hung step costs its limit, not the whole run: at most about 9.5 minutes.
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY_RUN=1
    shift
fi
RESULTS=${1:-${OUT:-./gpu_check_results}}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
TABLES=$(mktemp -d)
trap 'rm -rf "$TABLES"' EXIT

if [ $DRY_RUN = 1 ]; then
    export MRLA_TEST_DEVICE=cpu
    TEST_FILTER=(-k 'deit_tiny_mrla and not compile')
    BENCH=(--device cpu --batch-size 2 --img-size 64 --repeats 1 --warmup 1)
    PAIRS=(resnet50_mrla deit_tiny_mrla)
    COMPILE_PAIRS=()
else
    TEST_FILTER=()
    BENCH=(--device cuda --batch-size 64 --img-size 224 --repeats 5 --warmup 2)
    PAIRS=(resnet50_mrla resnet50_mrla_base deit_tiny_mrla)
    COMPILE_PAIRS=(deit_tiny_mrla resnet50_mrla resnet50_mrla_base)
fi
# seconds per step on the GPU; a compiled pair costs two compilations (the MRLA model and its base)
declare -A LIMIT=([tests]=140 [bench]=70 [profile]=45 [deit_tiny_mrla]=60 [resnet50_mrla]=100
                  [resnet50_mrla_base]=80)
if [ $DRY_RUN = 1 ]; then  # two shared CPU cores are much slower
    LIMIT=([tests]=900 [bench]=900 [profile]=900)
fi

SUMMARY="$RESULTS/summary.md"
echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)$([ $DRY_RUN = 1 ] && echo ' (dry run, CPU)')" >"$SUMMARY"
step() {  # step NAME SECONDS COMMAND...: run under a time limit (SIGINT first: pytest still writes its report)
    local name=$1 seconds=$2 start=$SECONDS status
    shift 2
    echo "== $name: $*"
    timeout -s INT -k 15 "$seconds" "$@"
    status=$?
    local verdict="exit $status"
    [ $status = 124 ] && verdict="stopped at its limit of $seconds s"
    echo "- $name: $verdict, $((SECONDS - start)) s" >>"$SUMMARY"
    return 0
}

{
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    "$PYTHON" -c "import platform, torch, timm; print('python', platform.python_version()); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'cuda available', torch.cuda.is_available()); print('timm', timm.__version__); print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
} >"$RESULTS/environment.txt" 2>&1
echo "## steps" >>"$SUMMARY"
# a package that does not import fails every step: stop before spending the device's time on them
if ! "$PYTHON" -c "import timm_mrla" 2>"$RESULTS/import_error.txt"; then
    echo "- import timm_mrla failed, nothing run:" >>"$SUMMARY"
    cat "$RESULTS/import_error.txt" >>"$SUMMARY"
    cat "$SUMMARY"
    exit 1
fi
rm -f "$RESULTS/import_error.txt"

step tests "${LIMIT[tests]}" "$PYTHON" -m pytest tests/test_units_on_device.py -v -rs -p no:cacheprovider \
    --junitxml="$RESULTS/units_on_device.xml" "${TEST_FILTER[@]}" 2>&1 | tee "$RESULTS/units_on_device.log"

for mode in eager amp; do  # one step each: a mode that fails leaves the other's table
    step "bench $mode" "${LIMIT[bench]}" "$PYTHON" benchmarks/bench.py --train-only --pairs "${PAIRS[@]}" \
        --modes "$mode" "${BENCH[@]}" --out "$TABLES/$mode.md" 2>&1 | tee -a "$RESULTS/bench.log"
done
# where the GPU's time goes: kernel time per operator, resnet50_mrla against resnet50, fp32 eager
step profile "${LIMIT[profile]}" "$PYTHON" benchmarks/bench.py --profile --pairs resnet50_mrla --modes eager \
    "${BENCH[@]}" --out "$TABLES/profile.md" 2>&1 | tee -a "$RESULTS/bench.log"
for pair in "${COMPILE_PAIRS[@]}"; do
    step "bench compile $pair" "${LIMIT[$pair]}" "$PYTHON" benchmarks/bench.py --train-only --pairs "$pair" \
        --modes compile "${BENCH[@]}" --out "$TABLES/compile_$pair.md" 2>&1 | tee -a "$RESULTS/bench.log"
done

{
    echo
    echo "## tests"
    echo
    grep -E '^(PASSED|FAILED|SKIPPED|ERROR)|^tests/.*(PASSED|FAILED|SKIPPED|ERROR)|^=+ .* in [0-9.]+s' \
        "$RESULTS/units_on_device.log" || echo "(no test results)"
    for table in "$TABLES"/eager.md "$TABLES"/amp.md "$TABLES"/compile_*.md "$TABLES"/profile.md; do
        [ -f "$table" ] && { echo; cat "$table"; }
    done
    echo
    echo "## environment"
    echo
    tail -n 5 "$RESULTS/environment.txt"
} >>"$SUMMARY"
cat "$SUMMARY"

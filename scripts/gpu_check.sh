#!/usr/bin/env bash
# One prepared check of npu-retu on a CUDA machine, inside a wall-clock limit, everything written
# under one folder:
#
#   scripts/gpu_check.sh --prepare .gpu            # here (network): wheels + the embedded default, ~20 MB
#   scripts/gpu_check.sh --dry-run --time-limit 540  # the plan, on any machine (no GPU needed)
#   scripts/gpu_check.sh --carry .gpu --out OUT --time-limit 540   # on the GPU machine (no network)
#
# Steps, each given a share of the limit and skipped (with the reason in summary.txt) when the time
# is spent or what it needs is absent:
#   1 setup    install the carried wheels (--no-index) into a folder on PYTHONPATH, npu-retu itself
#              in editable mode (--no-deps), and record versions and nvidia-smi
#   2 tests    the `gpu`-marked tests (Triton kernels compiled for real, parity vs fp64 at the paper's
#              head shapes in bf16 and fp32, the fused RL update vs the unfused one, the memory bound)
#   3 kernels  `npu-retu bench kernels` at H:V 3584:152064 and 3072:128256, T 4k..32k, bf16 and fp32
#   4 vllm     the vLLM rollout tests and `bench rollout` with CUDA vllm, where `import vllm` works
#   5 rl       `npu-retu bench rl` in bf16 on the embedded default
# Output: OUT/summary.txt (one line per step: status, seconds), OUT/versions.txt, OUT/<step>.log,
# OUT/gpu-tests.xml, OUT/kernels.csv, OUT/rollout.json, OUT/rl.json.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-runs/gpu-check}"
LIMIT=540
CARRY=""
MODE=run
PY="${PYTHON:-python3}"
# the wheels the GPU image lacks (its python is 3.12 with torch, triton, transformers, safetensors, pyarrow)
WHEELS=(math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 liger-kernel==0.8.5 cut-cross-entropy==25.1.1)
# the embedded artifacts the steps use (built here, so the GPU machine needs no 15-minute build)
EMBEDDED=(base tokenizer rl-easy-5k rl-test)
# share of the limit per step (percent); the rest is slack for the summary
declare -A SHARE=([setup]=10 [tests]=20 [kernels]=40 [vllm]=10 [rl]=15)

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) MODE=dry ;;
        --prepare) MODE=prepare; CARRY="${2:?--prepare needs a folder}"; shift ;;
        --carry) CARRY="${2:?--carry needs a folder}"; shift ;;
        --out) OUT="${2:?--out needs a folder}"; shift ;;
        --time-limit)
            LIMIT="${2:?--time-limit needs seconds}"; shift
            case "$LIMIT" in ''|*[!0-9]*) echo "gpu_check: --time-limit takes whole seconds, got '$LIMIT'" >&2; exit 2 ;; esac ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

budget() {  # seconds for step $1
    echo $(( LIMIT * ${SHARE[$1]} / 100 ))
}

step_command() {  # the command of step $1, as the plan prints it and the run executes it
    case "$1" in
        setup) echo "$PY -m pip install -q --no-index --no-deps --target \$SITE $CARRY/wheels/*.whl; $PY -m pip install -q --no-index --no-deps --no-build-isolation -e $REPO" ;;
        tests) echo "$PY -m pytest -m gpu -p no:cacheprovider -q --junitxml=$OUT/gpu-tests.xml tests/test_kernels.py tests/test_kernels_gpu.py" ;;
        kernels) echo "$PY -m npu_retu bench kernels --shapes 3584:152064,3072:128256 --tokens 4096,8192,16384,32768 --dtype bfloat16,float32 --max-seconds $(( $(budget kernels) - 30 )) --out $OUT/kernels.csv" ;;
        vllm) echo "$PY -m pytest -p no:cacheprovider -q tests/test_rollout_vllm.py && $PY -m npu_retu bench rollout --engines transformers,vllm --out $OUT/rollout.json" ;;
        rl) echo "$PY -m npu_retu bench rl model.dtype=bfloat16 --steps 3 --out $OUT/rl.json" ;;
    esac
}

STEPS=(setup tests kernels vllm rl)

if [ "$MODE" = prepare ]; then
    mkdir -p "$CARRY/wheels" "$CARRY/cache"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$CARRY/wheels" "${WHEELS[@]}"
    # the embedded default, built here (npu-retu installed in this environment)
    "$PY" - "$CARRY/cache" "${EMBEDDED[@]}" <<'EOF'
import shutil
import sys
from pathlib import Path

from npu_retu.models import embedded

target = Path(sys.argv[1]) / embedded.cache_root().name
target.mkdir(parents=True, exist_ok=True)
for name in sys.argv[2:]:
    source = embedded.resolve("embedded:" + name)
    if source.is_dir():
        shutil.copytree(source, target / source.name, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target / source.name)
print(f"gpu_check: embedded default copied to {target}")
EOF
    du -sh "$CARRY"
    exit 0
fi

if [ "$MODE" = dry ]; then
    echo "gpu_check plan: limit ${LIMIT}s, output $OUT, carried files ${CARRY:-(none)}"
    for s in "${STEPS[@]}"; do
        printf '%-8s %4ss  %s\n' "$s" "$(budget "$s")" "$(step_command "$s")"
    done
    echo "then: $OUT/summary.txt (step, status, seconds), $OUT/versions.txt"
    exit 0
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device here (nvidia-smi and torch.cuda); use --dry-run to see the plan" >&2
    exit 2
fi

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SITE="$(mktemp -d /tmp/npu-retu-site.XXXXXX)"
export SITE PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -n "$CARRY" ] && [ -d "$CARRY/cache" ]; then
    NPU_RETU_CACHE="$(cd "$CARRY/cache" && pwd)"
    export NPU_RETU_CACHE
fi
cd "$REPO"
START=$(date +%s)
: > "$OUT/summary.txt"

run_step() {  # run step $1 within its share, never past the whole limit
    local name="$1" share left rc t0
    share=$(budget "$name")
    left=$(( LIMIT - ($(date +%s) - START) - 10 ))
    [ "$left" -lt "$share" ] && share=$left
    if [ "$share" -lt 20 ]; then
        echo "$name skipped: time limit (${LIMIT}s) spent" >> "$OUT/summary.txt"
        return
    fi
    t0=$(date +%s)
    set +e
    timeout --kill-after=5 "$share" bash -c "$(step_command "$name")" > "$OUT/$name.log" 2>&1
    rc=$?
    set -e
    local status="ok"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="stopped at its ${share}s share"
    [ $rc -ne 0 ] && [ "$status" = ok ] && status="failed (exit $rc; see $name.log)"
    echo "$name $status $(( $(date +%s) - t0 ))s" >> "$OUT/summary.txt"
}

run_step setup
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; "$PY" -m npu_retu doctor 2>&1 | head -40; } > "$OUT/versions.txt" 2>&1 || true
run_step tests
run_step kernels
if "$PY" -c "import vllm" 2>/dev/null; then
    run_step vllm
else
    echo "vllm skipped: vllm is not installed on this machine (its CUDA wheel is larger than what can be carried)" >> "$OUT/summary.txt"
fi
run_step rl
echo "total $(( $(date +%s) - START ))s of ${LIMIT}s" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"

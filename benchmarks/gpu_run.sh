#!/usr/bin/env bash
# The GPU check in one command sequence.
#
#   bash benchmarks/gpu_run.sh prepare   # here, in the repository root: fetch the wheels the GPU machine lacks
#   bash benchmarks/gpu_run.sh device    # on the GPU machine, with .whl/ beside the code: install them, run the
#                                        # check at toy size on CUDA, then at full size; JSON and logs go to $OUT
#
# The GPU machine has torch, transformers, accelerate and peft but no diffusers; torchao (the int8 transformer of
# the `pipeline` section) and optimum-quanto (its fallback) travel too. Wheels are for CPython 3.12 on x86-64.
# Sized for one H100: the toy run takes about a minute, the full check under 8 minutes (--budget-s skips any
# section that would start after 7 minutes).
set -euo pipefail

WHEELS=(diffusers==0.42.1 importlib_metadata==10.2.0 torchao==0.18.0 optimum-quanto==0.2.7)

prepare() {
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${WHEELS[@]}"
    ls -l .whl
}

device() {
    : "${OUT:=/tmp/gpu_check_out}"
    mkdir -p "$OUT"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    # 1. the same code at toy size on CUDA (bf16): every section, quick
    timeout 240 python3 benchmarks/gpu_check.py --tiny --device cuda --out "$OUT/gpu_check_tiny.json" \
        2>&1 | tee "$OUT/gpu_check_tiny.log" || true
    # 2. FLUX.1-dev dimensions, random bf16 weights, 1024², 28 steps
    timeout 540 python3 benchmarks/gpu_check.py --device cuda --budget-s 420 --out "$OUT/gpu_check.json" \
        2>&1 | tee "$OUT/gpu_check.log"
}

case "${1:-}" in
    prepare) prepare ;;
    device) device ;;
    *) echo "usage: bash benchmarks/gpu_run.sh prepare|device" >&2; exit 2 ;;
esac

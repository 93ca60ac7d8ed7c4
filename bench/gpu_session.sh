#!/bin/sh
# Issue 17's GPU checks in one go, for a lent GPU machine (the `device` tool runs it in the
# repository root; its python3 holds PyTorch): the gpu-marked tests, then eager it/s and VRAM
# budgets (bench/gpu.py), --compile against eager (bench/compile.py), and the untiled SDXL VAE
# decode (bench/vae_decode.py). Each step has its own time limit and the script goes on after
# a failure; logs go to $OUT (or ./gpu_session_out). About 8 minutes on an H200.
#
#     sh bench/gpu_session.sh            # on the GPU machine
#     PY=.venv/bin/python sh bench/gpu_session.sh --dry-run  # here, on the CPU: tiny sizes, end to end
set -u
OUT=${OUT:-gpu_session_out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, say how it ended
    name=$1; limit=$2; shift 2
    echo "== $name: $*"
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    tail -n 12 "$OUT/$name.log"
    echo "== $name: exit $rc after $(( $(date +%s) - start )) s"
}

if [ $DRY = 1 ]; then
    step gpu_tests 300 $PY -m pytest -q -m gpu tests/test_gpu.py tests/test_compile17.py  # they skip without CUDA
    step gpu_bench 300 $PY bench/gpu.py --dry-run
    step compile_sd15 600 $PY bench/compile.py --family sd15 --size 64 --runs 2 --mode regional
    step vae_sdxl 300 $PY bench/vae_decode.py --size 256 --runs 1
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/nvidia_smi.txt" 2>&1
    step gpu_tests 240 $PY -m pytest -q -m gpu tests
    step gpu_bench 420 $PY bench/gpu.py --families sd15,sdxl --steps 20 --runs 2
    step compile_sd15_regional 300 $PY bench/compile.py --family sd15 --size 512 --mode regional --runs 10
    step compile_sd15_full 300 $PY bench/compile.py --family sd15 --size 512 --mode full --runs 10
    step compile_sdxl_regional 420 $PY bench/compile.py --family sdxl --size 1024 --mode regional --runs 10
    step vae_sdxl 120 $PY bench/vae_decode.py --size 1024 --runs 3
fi

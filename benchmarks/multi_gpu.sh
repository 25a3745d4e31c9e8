#!/usr/bin/env bash
# Everything the 2-GPU study needs, in one run on a machine with two or more GPUs (NCCL):
#   bash benchmarks/multi_gpu.sh            # results under $OUT (default ./multi_gpu_results)
# Each step writes its own file; a failing step is reported and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-multi_gpu_results}"
mkdir -p "$out"
status=0
step() {  # step NAME COMMAND...: run, keep its output, remember a failure
    local name=$1
    shift
    echo "=== $name: $*"
    "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.txt"
    echo "=== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}

step environment bash -c 'nvidia-smi; nvidia-smi topo -m; python3 -c "import torch; print(torch.__version__, torch.cuda.nccl.version())"'
step check python3 -m compile_ops.cli check --world-size 2
step gpu_tests python3 -m pytest -q -p no:cacheprovider -m gpu tests
step bench python3 -m compile_ops.cli bench -n 2 --studies latency \
    --sizes 4K,64K,1M,16M,256M,1G --reps 10 --out "$out/bench"
step moe python3 benchmarks/moe_managers.py --device gpu -n 2 --tokens 4096 --hidden 4096 \
    --intermediate 14336 --shared-intermediate 0 --experts 8 --top-k 2
exit $status

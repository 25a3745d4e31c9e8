#!/usr/bin/env bash
# The 2-GPU study (NCCL, one GPU per rank), on a machine with two or more GPUs:
#   bash benchmarks/multi_gpu.sh                 # every step, in order
#   bash benchmarks/multi_gpu.sh bench plot moe  # some steps (names below)
# Results go under $OUT (default ./multi_gpu_results), one file per step. Each step has a time
# limit and is stopped with SIGINT (pytest still prints its summary); a failing step is reported
# and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-multi_gpu_results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0

step() {  # step NAME SECONDS COMMAND...: run under a time limit, keep its output
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    local start=$SECONDS
    timeout -s INT -k 20 "$limit" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.txt"
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=1
}

environment() {
    step environment 60 bash -c 'nvidia-smi; nvidia-smi topo -m;
        python3 -c "import torch; print(torch.__version__, torch.cuda.nccl.version())"'
}
check() { step check 180 python3 -m compile_ops.cli check --world-size 2; }
bench() {
    step bench 300 python3 -m compile_ops.cli bench -n 2 --studies latency \
        --sizes 4K,64K,1M,16M,256M,1G --reps 10 --out "$out/bench"
}
plot() {  # latency and bus bandwidth against size from the bench step's results.json (needs
    # matplotlib: pip install '.[plot]'); LINK_GBPS, if set, is drawn as the link's limit
    step plot 60 python3 -m compile_ops.cli bench --from "$out/bench/results.json" \
        ${LINK_GBPS:+--link-gbps "$LINK_GBPS"} --plot "$out/bench/latency-bandwidth.png"
}
gpu_tests() {  # every GPU test but the fuzzers: worlds 1 and 2
    step gpu_tests 480 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=15 \
        --ignore=tests/test_fuzz.py tests
}
fuzz() {  # the hypothesis CI profile over NCCL, worlds 1 and 2
    step fuzz 420 python3 -m pytest -q -p no:cacheprovider -m gpu --durations=10 tests/test_fuzz.py
}
moe() {
    step moe 420 python3 benchmarks/moe_managers.py --device gpu -n 2 --tokens 4096 \
        --hidden 4096 --intermediate 14336 --shared-intermediate 0 --experts 8 --top-k 2
}

all=(environment check bench plot gpu_tests fuzz moe)
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=("${all[@]}")
for name in "${steps[@]}"; do
    [[ " ${all[*]} " == *" $name "* ]] || { echo "unknown step $name; steps: ${all[*]}" >&2; exit 2; }
done
for name in "${steps[@]}"; do
    "$name"
done
exit $status

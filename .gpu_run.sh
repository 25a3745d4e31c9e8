#!/bin/bash
# One device call: environment, the benchmark with the Triton sweep, then the GPU tests.
set -o pipefail
export TORCHINDUCTOR_CACHE_DIR=/tmp/ic NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ -f cache.tgz.aa ]; then mkdir -p /tmp/ic && cat cache.tgz.* | tar xz -C /tmp/ic; fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee $OUT/env.txt
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" | tee -a $OUT/env.txt
start=$SECONDS
timeout ${BENCH_S:-330} python3 benchmarks/moe_experts.py ${BENCH_ARGS:---sweep} --json $OUT/bench.json 2>&1 | tee $OUT/bench.txt | grep -v "^{'shape'" | tail -60
echo "bench rc=$? after $((SECONDS-start))s"
[ "${TEST_S:-170}" = 0 ] && { (cd /tmp/ic && tar cz . | split -b 15M - $OUT/cache.tgz.) 2>/dev/null; ls -la $OUT; exit 0; }
start=$SECONDS
timeout ${TEST_S:-170} python3 -m pytest tests/test_moe_experts.py -m gpu -x -q -p no:cacheprovider -rs ${TEST_ARGS} 2>&1 | tee $OUT/tests.txt | tail -25
echo "tests rc=$? after $((SECONDS-start))s"
(cd /tmp/ic && tar cz . | split -b 15M - $OUT/cache.tgz.) 2>/dev/null; ls -la $OUT

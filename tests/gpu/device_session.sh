#!/usr/bin/env bash
# tests/gpu/device_session.sh STAGES -- what one call on the GPU machine runs, in one go.
#
# Binaries built on the dev machine are carried in .gpubin/ with their libraries in .devlibs/
# (../shared/tools/devlibs.sh); logs go to $OUT (or ./gpu-out). STAGES is a comma list of:
#   info      nvidia-smi, driver, torch version
#   ops       tests/gpu/test_cuda_ops           model   tests/gpu/test_cuda_model
#   daemon    tests/gpu/test_daemon_gpu (needs .gpubin/dragond and config/ + clients/ of the repo)
#   bench     bench/gpu_train_bench, one row at a time (BENCH_ROWS, default paper base decode1
#             decode64), nvidia-smi sampling the card's peak memory per row
#   tf32      the paper/base rows again with DG_CUDA_GEMM=tf32 and with DG_CUDA_CVT=0
#   prof      profiled runs (DG_CUDA_PROFILE=1) of the rows in PROF_ROWS (default paper)
#   peer      bench/peers/gpu_peer.py (PyTorch 2.x peer), same card, same call
#   sanitize  compute-sanitizer memcheck + racecheck over test_cuda_ops
# Every call sends the repo: run it with carry [".gpubin", ".devlibs"].
# Not a test runner for CI (CI has no GPU: make test-gpu prints a skip line there).
set -u
stages=${1:-info,ops,model,bench}
out=${OUT:-gpu-out}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/.devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
has() { [[ ",$stages," == *",$1,"* ]]; }
bin=.gpubin
T0=$(date +%s)
stamp() { echo "=== [$(($(date +%s) - T0)) s] $*"; }

if has info; then
  stamp info
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c 'import torch; print("torch", torch.__version__)' 2>/dev/null
fi
if has ops; then
  stamp ops
  timeout 300 $bin/test_cuda_ops 2>&1 | tee "$out/test_cuda_ops.log" | grep -v '^\[info\]' \
    | grep -v 'max rel err .*(tol'
  echo "test_cuda_ops exit ${PIPESTATUS[0]}"
fi
if has model; then
  stamp model
  timeout 400 $bin/test_cuda_model 2>&1 | tee "$out/test_cuda_model.log" | grep -v '^\[info\]'
  echo "test_cuda_model exit ${PIPESTATUS[0]}"
fi
if has daemon; then
  stamp daemon
  DG_BUILD=$bin timeout 400 $bin/test_daemon_gpu 2>&1 | tee "$out/test_daemon_gpu.log" \
    | grep -v '^\[info\]' | tail -15
  echo "test_daemon_gpu exit ${PIPESTATUS[0]}"
fi
if has bench; then
  stamp bench
  for row in ${BENCH_ROWS:-paper base decode1 decode64}; do
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 \
      > "$out/mem-$row.csv" &
    smi=$!
    timeout 200 $bin/gpu_train_bench --rows $row ${BENCH_ARGS:-} 2>&1 | tee -a "$out/bench.log" \
      | grep -v '^\[info\]' | grep -v '^|'
    kill $smi 2>/dev/null; wait $smi 2>/dev/null
    peak=$(sort -n "$out/mem-$row.csv" | tail -1)
    echo "  $row: peak GPU memory used (nvidia-smi, MiB, whole card incl. CUDA context): $peak"
  done
fi
if has tf32; then
  stamp tf32
  DG_CUDA_GEMM=tf32 timeout 100 $bin/gpu_train_bench --rows paper,base 2>&1 \
    | grep -E '^(paper|base)_' | sed 's/^/tf32 /'
  DG_CUDA_CVT=0 timeout 100 $bin/gpu_train_bench --rows paper,base 2>&1 \
    | grep -E '^(paper|base)_' | sed 's/^/no-staging /'
fi
if has prof; then
  stamp prof
  for row in ${PROF_ROWS:-paper}; do
    DG_CUDA_PROFILE=1 timeout 200 $bin/gpu_train_bench --rows $row --steps 2 --warmup 1 \
      --decode-tokens 20 2>&1 | tee -a "$out/prof.log" | grep -v '^\[info\]' | grep -v '^|' \
      | head -32
  done
fi
if has peer; then
  stamp peer
  timeout 500 python3 bench/peers/gpu_peer.py --steps ${PEER_STEPS:-10} --warmup ${PEER_WARMUP:-3} \
    --decode-tokens 100 ${PEER_ARGS:-} --out "$out/peer.json" 2>&1 | tee "$out/peer.log" | tail -25
fi
if has sanitize; then
  stamp sanitize
  export CK_FORK=no
  timeout 240 compute-sanitizer --tool memcheck --leak-check no $bin/test_cuda_ops 2>&1 \
    | tee "$out/memcheck.log" | grep -E 'ERROR SUMMARY|Checks:|=========' | head -20
  timeout 200 compute-sanitizer --tool racecheck $bin/test_cuda_ops 2>&1 \
    | tee "$out/racecheck.log" | grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|Checks:|=========' \
    | head -20
fi
stamp done

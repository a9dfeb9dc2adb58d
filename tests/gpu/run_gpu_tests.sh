#!/usr/bin/env bash
# tests/gpu/run_gpu_tests.sh BUILD BIN... -- the GPU tests; a clean skip without a GPU.
set -u
build=$1; shift
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "SKIP: no NVIDIA GPU visible (nvidia-smi absent or failing); GPU tests run on the device machine"
  echo "0 passed, 0 failed, $# skipped"
  exit 0
fi
if [ $# -eq 0 ]; then echo "SKIP: no GPU test programs were built (CUDA backend absent)"; echo "0 passed, 0 failed"; exit 0; fi
exec bash "$(dirname "$0")/../run_tests.sh" "$build" "$@"

#!/bin/bash
# Batched decode on the GPU host's CPU (16 cores), with tools/exec_device's build against PyTorch's libtorch:
#   PHASE=all      both, in one call (default: a machine is not kept between calls)
#   PHASE=build    build adaptlink-run, adaptlink-make-checkpoint and bench_exec_batch into build-dev/, then the
#                  kernel benchmark (tools/bench_batch.sh: one 7B-shaped decoder layer, b = 1..16, fp32 and bf16)
#   PHASE=testbed  tools/testbed_batching.sh's measurements (profile, max_batch 1 and auto) with SKIP_SIM=1 into
#                  $OUT/testbed; simulate them afterwards where adaptlink-sim is built:
#                  SIMULATE=DIR tools/testbed_batching.sh build OUT.json
# Needs .devdeps/ as described in run_on_device.sh and run_testbed_bench.sh (carried: it is excluded from git).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
PHASE=${PHASE:-all}
mkdir -p "$OUT" .devdeps/root
for deb in .devdeps/debs/*.deb; do dpkg -x "$deb" .devdeps/root; done
export LD_LIBRARY_PATH=$PWD/.devdeps/root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
machine="lent GPU host, $(nproc) CPU cores ($(lscpu | sed -n 's/^Model name: *//p'))"
if [[ $PHASE == build || $PHASE == all ]]; then
  TORCH_CMAKE=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
  cmake -S tools/exec_device -B build-dev -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" > "$OUT/configure.log" 2>&1 ||
    { tail -30 "$OUT/configure.log"; exit 1; }
  ninja -C build-dev adaptlink-run adaptlink-make-checkpoint bench_exec_batch > "$OUT/build.log" 2>&1 ||
    { grep -E "error|FAILED" "$OUT/build.log" | head -30; exit 1; }
  mkdir -p build-dev/cli build-dev/bench
  ln -sf ../adaptlink-make-checkpoint build-dev/cli/adaptlink-make-checkpoint
  ln -sf ../bench_exec_batch build-dev/bench/bench_exec_batch
  echo "$machine"
  rm -f "$OUT/configure.log" "$OUT/build.log"
  [[ -n ${SKIP_BENCH:-} ]] ||
    BENCH_ARGS="--threads $(nproc)" tools/bench_batch.sh build-dev "$OUT/exec_decode_batch_gpuhost_cpu.json"
fi
if [[ $PHASE == testbed || $PHASE == all ]]; then
  # One archive per dtype (the device tool brings back a limited number of files).
  for dtype in ${DTYPES:-fp32}; do
    DTYPE=$dtype THREADS=${THREADS:-2} SKIP_SIM=1 KEEP=/tmp/testbed-$dtype MACHINE="$machine" \
      tools/testbed_batching.sh build-dev || echo "testbed $dtype: failed"
    tar czf "$OUT/testbed-$dtype.tgz" -C /tmp --exclude=model "testbed-$dtype"
  done
fi

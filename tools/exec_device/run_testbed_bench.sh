#!/bin/bash
# The executor's benchmarks on a larger machine (the GPU host's 16 CPU cores; the workers compute on the CPU):
#   1. per-hop overhead on loopback (bench_exec_hop, 4 KiB activation);
#   2. the testbed of bench/testbed/jetson-quartet-testbed.toml (jetson-quartet's relative speeds and Wi-Fi links)
#      on a medium random LLaVA (bench/testbed/medium-llava.json): profile it, then run the adaptlink and the
#      uniform plans in one session, both planned with the profile.
# Needs .devdeps/ as described in run_on_device.sh, plus Debian 12's libzmq5 (and its libsodium23, libpgm-5.3-0,
# libnorm1) .deb files in .devdeps/debs/, zmq.h/zmq.hpp/zmq_addon.hpp and toml++ in .devdeps/include/.
# Results go under $OUT; compare the measured throughput with the simulator's prediction afterwards with
#   adaptlink-sim run bench/testbed/jetson-quartet-testbed.toml --profile $OUT/profile.json --planner P
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
THREADS=${THREADS:-3}
mkdir -p "$OUT" .devdeps/root
for deb in .devdeps/debs/*.deb; do dpkg -x "$deb" .devdeps/root; done
export LD_LIBRARY_PATH=$PWD/.devdeps/root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
TORCH_CMAKE=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
nproc; lscpu | grep "Model name" || true
cmake -S tools/exec_device -B /tmp/build-dev -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" > "$OUT/configure.log" 2>&1 ||
  { tail -30 "$OUT/configure.log"; exit 1; }
ninja -C /tmp/build-dev adaptlink-run adaptlink-make-checkpoint bench_exec_hop test_exec > "$OUT/build.log" 2>&1 ||
  { grep -E "error|FAILED" "$OUT/build.log" | head -30; exit 1; }
bin=/tmp/build-dev
"$bin/test_exec" --gtest_filter='Distributed*:Wire*' 2>&1 | tail -4 | tee "$OUT/test_distributed.log"
"$bin/bench_exec_hop" --iterations 5000 --out "$OUT/exec_hop_loopback.json" > /dev/null
cat "$OUT/exec_hop_loopback.json"

scenario=bench/testbed/jetson-quartet-testbed.toml
model=/tmp/medium-llava
"$bin/adaptlink-make-checkpoint" --config bench/testbed/medium-llava.json --dtype fp32 --out "$model" | tail -1
time "$bin/adaptlink-run" profile --model "$model" --scenario "$scenario" --threads "$THREADS" --out "$OUT/profile.json" \
  2> "$OUT/profile.log"
for planner in adaptlink uniform; do
  /usr/bin/time -v "$bin/adaptlink-run" testbed --scenario "$scenario" --model "$model" --threads "$THREADS" \
    --profile "$OUT/profile.json" --planner "$planner" --quiet --out "$OUT/$planner" 2> "$OUT/$planner.time" |
    tee "$OUT/$planner.txt"
done
python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
r = {p: json.load(open(f"{out}/{p}/report.json")) for p in ("adaptlink", "uniform")}
summary = {p: {"measured_rps": r[p]["throughput_rps"], "predicted_rps_replay": r[p].get("predicted_throughput_rps"),
               "p50_ms": r[p]["latency_ms"]["p50"]} for p in r}
summary["adaptlink_over_uniform"] = r["adaptlink"]["throughput_rps"] / r["uniform"]["throughput_rps"]
print(json.dumps(summary, indent=2))
json.dump(summary, open(f"{out}/testbed_summary.json", "w"), indent=2)
EOF

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
#   PHASE=prep (build, tests, hop benchmark, checkpoint, profile) | testbed (the runs) | all (default)
#   SCHEDULES="decode-first fifo" (default decode-first): [planner] schedule of each run, PLANNERS (default
#   "adaptlink uniform"); REPLICAS="true false" (default true): [planner] replicas of each adaptlink run (the other
#   planners never replicate and run once); the runs go to $OUT/<schedule>-<planner>, "-one" appended for replicas =
#   false.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
THREADS=${THREADS:-3}
PHASE=${PHASE:-all}
SCHEDULES=${SCHEDULES:-decode-first}
PLANNERS=${PLANNERS:-adaptlink uniform}
REPLICAS=${REPLICAS:-true}
mkdir -p "$OUT" .devdeps/root
for deb in .devdeps/debs/*.deb; do dpkg -x "$deb" .devdeps/root; done
export LD_LIBRARY_PATH=$PWD/.devdeps/root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
bin=/tmp/build-dev
scenario=bench/testbed/jetson-quartet-testbed.toml
model=/tmp/medium-llava
profile=/tmp/medium-llava-profile.json
if [[ $PHASE != testbed ]]; then
TORCH_CMAKE=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
nproc; lscpu | grep "Model name" || true
cmake -S tools/exec_device -B /tmp/build-dev -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" > "$OUT/configure.log" 2>&1 ||
  { tail -30 "$OUT/configure.log"; exit 1; }
ninja -C /tmp/build-dev adaptlink-run adaptlink-make-checkpoint bench_exec_hop test_exec > "$OUT/build.log" 2>&1 ||
  { grep -E "error|FAILED" "$OUT/build.log" | head -30; exit 1; }
"$bin/test_exec" --gtest_filter='Distributed*:Wire*' > "$OUT/test_distributed.log" 2>&1 || true
tail -4 "$OUT/test_distributed.log"
"$bin/bench_exec_hop" --iterations 5000 --out "$OUT/exec_hop_loopback.json" > /dev/null
cat "$OUT/exec_hop_loopback.json"
"$bin/adaptlink-make-checkpoint" --config bench/testbed/medium-llava.json --dtype fp32 --out "$model" | tail -1
time "$bin/cli/adaptlink-run" profile --model "$model" --scenario "$scenario" --threads "$THREADS" --out "$profile" \
  2> "$OUT/profile.log"
fi
cp "$profile" "$OUT/profile.json"
[[ $PHASE == prep ]] && exit 0
# Profile again right before the runs (same machine state), and once more after them (drift).
"$bin/cli/adaptlink-run" profile --model "$model" --scenario "$scenario" --threads "$THREADS" --out "$profile" \
  2> "$OUT/profile_before.log"
cp "$profile" "$OUT/profile.json"
runs=()
for schedule in $SCHEDULES; do
  sed "s/^\[planner\]/[planner]\nschedule = \"$schedule\"/" "$scenario" > "${scenario%.toml}-$schedule.tmp.toml"
  for planner in $PLANNERS; do
    for replicas in $REPLICAS; do
      [[ $planner != adaptlink && $replicas != "${REPLICAS%% *}" ]] && continue
      run=$schedule-$planner
      [[ $replicas == false ]] && run=$run-one
      runs+=("$run")
      # Next to the original: its [model] config path stays valid.
      sed "s/^\[planner\]/[planner]\nreplicas = $replicas/" "${scenario%.toml}-$schedule.tmp.toml" > "${scenario%.toml}-$run.tmp.toml"
      /usr/bin/time -v "$bin/cli/adaptlink-run" testbed --scenario "${scenario%.toml}-$run.tmp.toml" --model "$model" \
        --threads "$THREADS" --profile "$profile" --planner "$planner" --quiet --out "$OUT/$run" 2> "$OUT/$run.time" |
        tee "$OUT/$run.txt"
    done
  done
done
"$bin/cli/adaptlink-run" profile --model "$model" --scenario "$scenario" --threads "$THREADS" \
  --out "$OUT/profile_after.json" 2> "$OUT/profile_after.log"
tar czf /tmp/runs.tgz -C "$OUT" "${runs[@]}" && (cd "$OUT" && rm -rf "${runs[@]}") && mv /tmp/runs.tgz "$OUT/"
python3 - "$OUT" "${runs[@]}" <<'EOF'
import json, sys, tarfile
out, runs = sys.argv[1], sys.argv[2:]
with tarfile.open(f"{out}/runs.tgz") as t:
    r = {run: json.load(t.extractfile(f"{run}/report.json")) for run in runs}
summary = {run: {"measured_rps": r[run]["throughput_rps"], "predicted_rps_replay": r[run].get("predicted_throughput_rps"),
                 "p50_ms": r[run]["latency_ms"]["p50"]} for run in r}
print(json.dumps(summary, indent=2))
json.dump(summary, open(f"{out}/testbed_summary.json", "w"), indent=2)
EOF
# Everything in one archive (the device tool returns a limited number of files).
tar czf /tmp/all.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -not -name testbed_summary.json -delete && mv /tmp/all.tgz "$OUT/"

#!/bin/bash
# Batched against unbatched stages on the testbed, in one session: bench/testbed/jetson-quartet-testbed.toml
# (jetson-quartet's relative speeds and Wi-Fi links, the medium random LLaVA of bench/testbed/medium-llava.json) with
# POPULATION requests in flight (default 16), the adaptlink plan at max_batch 1 and at max_batch auto, each measured
# by adaptlink-run testbed and predicted by adaptlink-sim run from a batch-aware profile (adaptlink-run profile
# measures decode batches of 2, 4, 8 and 16) taken right before the runs. Writes OUT.json.
#
#   tools/testbed_batching.sh BUILD_DIR [OUT.json]   (THREADS per worker, default 1; REQUESTS, default 48; DTYPE,
#                                                     default fp32)
# Where adaptlink-sim is not built (the GPU host's exec/-only build): SKIP_SIM=1 KEEP=DIR measures into DIR (the
# profile and both runs); then, where it is, SIMULATE=DIR tools/testbed_batching.sh BUILD_DIR OUT.json predicts from
# that DIR's profile and writes OUT.json.
set -euo pipefail
build=${1:?usage: tools/testbed_batching.sh BUILD_DIR [OUT.json]}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${2:-$root/bench/results/testbed_batching_jetson-quartet.json}
threads=${THREADS:-1}
population=${POPULATION:-16}
requests=${REQUESTS:-48}
dtype=${DTYPE:-fp32}
scenario=$root/bench/testbed/jetson-quartet-testbed.toml
if [[ -n ${SIMULATE:-} ]]; then
  work=$SIMULATE
  trap 'rm -rf "${scenario%.toml}"-batch-*.tmp.toml "$work"/sim-*' EXIT
elif [[ -n ${KEEP:-} ]]; then
  work=$KEEP
  mkdir -p "$work"
  trap 'rm -rf "${scenario%.toml}"-batch-*.tmp.toml "$work/model"' EXIT
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/adaptlink-batching.XXXXXX")
  trap 'rm -rf "$work" "${scenario%.toml}"-batch-*.tmp.toml' EXIT
fi
run="$build/cli/adaptlink-run"
sim="$build/cli/adaptlink-sim"
make_checkpoint=$build/cli/adaptlink-make-checkpoint
[[ -x $make_checkpoint ]] || make_checkpoint=$build/adaptlink-make-checkpoint  # tools/exec_device's build
scenario_for() {  # the scenario at this population and batch limit, next to the original (its [model] path stays valid)
  local tmp=${scenario%.toml}-batch-$1.tmp.toml
  sed -e "s/^in_flight = .*/in_flight = $population/" -e "s/^requests = .*/requests = $requests/" \
    -e "s/^dtype = .*/dtype = \"$dtype\"/" \
    -e "s/^\[planner\]/[planner]\nmax_batch = $([[ $1 == auto ]] && echo '"auto"' || echo "$1")/" \
    "$scenario" > "$tmp"
  echo "$tmp"
}
if [[ -z ${SIMULATE:-} ]]; then
  "$make_checkpoint" --config "$root/bench/testbed/medium-llava.json" --dtype "$dtype" --out "$work/model" | tail -1
  "$run" profile --model "$work/model" --scenario "$scenario" --threads "$threads" --dtype "$dtype" \
    --out "$work/profile.json" 2> "$work/profile.log"
  grep "BLAS" "$work/profile.log" || true
  for batch in 1 auto; do
    # A run's status is its report's (a process that crashes after writing it is noted in run-*.time, not fatal).
    /usr/bin/time -v "$run" testbed --scenario "$(scenario_for $batch)" --model "$work/model" --threads "$threads" \
      --dtype "$dtype" --profile "$work/profile.json" --quiet --format json --out "$work/run-$batch" \
      > "$work/run-$batch.json" 2> "$work/run-$batch.time" || [[ -s $work/run-$batch/report.json ]]
  done
fi
[[ -n ${SKIP_SIM:-} ]] && exit 0
for batch in 1 auto; do
  "$sim" run "$(scenario_for $batch)" --profile "$work/profile.json" --format json --no-trace --quiet \
    --out "$work/sim-$batch" > "$work/sim-$batch.json"
done
python3 - "$work" "$out" "$population" "$requests" "$threads" "$dtype" "${MACHINE:-}" <<'PY'
import datetime, json, os, platform, sys
work, out, population, requests, threads, dtype, machine = (sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                                                           int(sys.argv[5]), sys.argv[6], sys.argv[7])
runs = {}
for batch in ["1", "auto"]:
    measured = json.load(open(f"{work}/run-{batch}/report.json"))
    simulated = json.load(open(f"{work}/sim-{batch}/report.json"))
    plan = json.load(open(f"{work}/run-{batch}/plan.json"))
    runs[f"max_batch_{batch}"] = {
        "measured_rps": measured["throughput_rps"],
        "simulated_rps": simulated["throughput_rps"],
        "measured_over_simulated": measured["throughput_rps"] / simulated["throughput_rps"],
        "requests_completed": measured.get("requests_completed"),
        "latency_ms": measured.get("latency_ms"),
        "plan_stages": [[s.get("device"), s.get("first_layer"), s.get("last_layer")] for s in plan.get("stages", [])],
        "replicas": len(plan.get("replicas", [])),
    }
one, auto = runs["max_batch_1"], runs["max_batch_auto"]
doc = {
    "what": f"testbed of bench/testbed/jetson-quartet-testbed.toml (medium random LLaVA), population {population}, "
            f"{requests} requests, adaptlink's plan at max_batch 1 and auto, measured and simulated from one "
            "batch-aware profile taken right before",
    "machine": (machine or f"{os.cpu_count()} CPUs, {platform.platform()}") + f"; {threads} thread(s) per worker",
    "dtype": dtype,
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "command": "tools/testbed_batching.sh build",
    "runs": runs,
    "measured_batched_over_unbatched": auto["measured_rps"] / one["measured_rps"],
    "simulated_batched_over_unbatched": auto["simulated_rps"] / one["simulated_rps"],
}
json.dump(doc, open(out, "w"), indent=2)
print(json.dumps(doc, indent=2))
PY

#!/bin/bash
# Testbed recovery with the medium model (run after run_testbed_bench.sh PHASE=prep on the same warm machine, or it
# builds first): bench/testbed/jetson-quartet-dropout-testbed.toml, nx killed with SIGKILL at 15 s, once with the
# standby's backup and once with --no-backups (re-plan on the devices up, weights reloaded over the links).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
THREADS=${THREADS:-2}
[[ -x /tmp/build-dev/cli/adaptlink-run ]] || PHASE=prep OUT="$OUT/prep" THREADS="$THREADS" bash tools/exec_device/run_testbed_bench.sh > /dev/null
export LD_LIBRARY_PATH=$PWD/.devdeps/root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
bin=/tmp/build-dev/cli/adaptlink-run
scenario=bench/testbed/jetson-quartet-dropout-testbed.toml
model=/tmp/medium-llava
"$bin" profile --model "$model" --scenario "$scenario" --threads "$THREADS" --out "$OUT/profile.json" 2> "$OUT/profile.log"
for mode in backup redeploy; do
  flags=""; [[ $mode == redeploy ]] && flags="--no-backups"
  "$bin" testbed --scenario "$scenario" --model "$model" --threads "$THREADS" --profile "$OUT/profile.json" $flags \
    --quiet --out "$OUT/$mode" | tee "$OUT/$mode.txt"
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
s = {}
for m in ("backup", "redeploy"):
    r = json.load(open(f"{out}/{m}/report.json"))
    s[m] = {"faults": r["faults"], "throughput_rps": r["throughput_rps"], "requests_completed": r["requests_completed"],
            "requests_lost": r["requests_lost"]}
a = [json.loads(l)["generated"] for l in open(f"{out}/backup/outputs.jsonl")]
b = [json.loads(l)["generated"] for l in open(f"{out}/redeploy/outputs.jsonl")]
s["same_outputs"] = a == b
d = [f for f in s["backup"]["faults"] if f["kind"] == "dropout"][0]["recovery_ms"]
e = [f for f in s["redeploy"]["faults"] if f["kind"] == "dropout"][0]["recovery_ms"]
s["redeploy_over_backup"] = e / d if d else None
print(json.dumps(s, indent=2))
json.dump(s, open(f"{out}/faults_summary.json", "w"), indent=2)
PY
tar czf /tmp/faults.tgz -C "$OUT" . && find "$OUT" -mindepth 1 -not -name faults_summary.json -delete && mv /tmp/faults.tgz "$OUT/"

#!/bin/bash
# Batched decode kernel benchmark: one LLaVA-1.5-7B-shaped decoder layer (bench/testbed/llava7b-one-layer.json,
# random bf16 weights, ~0.4 GB) written to a temporary directory, bench_exec_batch over b = 1..16 in fp32 and bf16
# against the machine's batched roofline, then the checkpoint is deleted.
#
#   tools/bench_batch.sh BUILD_DIR [OUT.json]     (extra arguments for bench_exec_batch in BENCH_ARGS)
set -euo pipefail
build=${1:?usage: tools/bench_batch.sh BUILD_DIR [OUT.json]}
out=${2:-$(dirname "$0")/../bench/results/exec_decode_batch_cpu.json}
ckpt=$(mktemp -d "${TMPDIR:-/tmp}/adaptlink-7b-layer.XXXXXX")
trap 'rm -rf "$ckpt"' EXIT
"$build/cli/adaptlink-make-checkpoint" --config "$(dirname "$0")/../bench/testbed/llava7b-one-layer.json" \
  --dtype bf16 --out "$ckpt"
# shellcheck disable=SC2086
"$build/bench/bench_exec_batch" --model "$ckpt" --out "$out" ${BENCH_ARGS:---threads $(nproc)}

#!/bin/bash
# exec/ benchmarks on a full-size LLaVA-1.5-7B-shaped checkpoint with random bf16 weights (~14 GB):
# writes it to a temporary directory, runs bench_exec_7b (peak RSS of a quarter of the decoder vs the whole
# model, STREAM-like bandwidth, CPU decode tokens/s) and deletes the checkpoint again.
#
#   tools/bench_exec.sh BUILD_DIR [OUT.json]     (needs ~15 GB free under ${TMPDIR:-/tmp} and ~16 GB RAM)
set -euo pipefail
build=${1:?usage: tools/bench_exec.sh BUILD_DIR [OUT.json]}
out=${2:-$(dirname "$0")/../bench/results/exec_llava7b_cpu.json}
ckpt=$(mktemp -d "${TMPDIR:-/tmp}/adaptlink-llava7b.XXXXXX")
trap 'rm -rf "$ckpt"' EXIT
"$build/cli/adaptlink-make-checkpoint" --preset llava-1.5-7b --dtype bf16 --shard-gb 2 --out "$ckpt"
"$build/bench/bench_exec_7b" --model "$ckpt" --out "$out" --decode-tokens "${DECODE_TOKENS:-12}"

#!/bin/bash
# Builds exec/ against the GPU machine's PyTorch libtorch (2.x, CUDA) and runs test_exec and the CLI on CUDA.
# Needs .devdeps/ (ignored via .git/info/exclude; carried by the device tool), made here on Debian with:
#   for f in models/src/*.cpp exec/src/*.cpp cli/run/*.cpp cli/common/*.cpp tests/exec/*.cpp; do g++ -std=c++20 -M -Imodels/include \
#     -Icommon/include -Iexec/include -I/usr/include/stb -Itests/exec $f; done | tr ' \\' '\n\n' \
#     | grep -E '^/usr/include/(fmt|nlohmann|CLI|boost|gtest|stb)' | sort -u  -> copy those (and /usr/include/fmt/*)
#   to .devdeps/include/, and cp -r /usr/src/googletest .devdeps/googletest.  Output goes under $OUT.
set -o pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p $OUT
TORCH_CMAKE=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch.compiled_with_cxx11_abi())'
nvidia-smi --query-gpu=name --format=csv,noheader
cmake -S tools/exec_device -B /tmp/build-dev -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" 2>&1 | tail -15 | tee $OUT/configure.log
time ninja -C /tmp/build-dev adaptlink-run test_exec 2>&1 | tee $OUT/build.log | grep -E "error|warning: |FAILED" | head -40
/tmp/build-dev/test_exec 2>&1 | tee $OUT/test_exec.log | grep -E "FAILED|PASSED|SKIPPED|prefill logits|max \|diff"
fx=tests/fixtures/llava_llama_mha_tied
for dev in cpu cuda; do
  /tmp/build-dev/cli/adaptlink-run generate --model $fx --prompt "What is shown in this picture?" --image tests/fixtures/images/test.png --max-new-tokens 12 --format json --device $dev
done
/tmp/build-dev/cli/adaptlink-run generate --model $fx --prompt "What is shown in this picture?" --image tests/fixtures/images/test.jpg --max-new-tokens 4 --dtype bf16 --device cuda --format json

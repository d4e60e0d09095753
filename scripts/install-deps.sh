#!/usr/bin/env bash
# Installs the Debian 12 packages AdaptLink builds and tests with.
# Idempotent: when everything is present it only checks (no apt-get update).
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build ccache pkg-config git
  libboost-graph-dev libcli11-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libtomlplusplus-dev
  libsimgrid-dev
  libtorch-dev libopenblas0-openmp libjpeg-dev libzmq3-dev cppzmq-dev libsentencepiece-dev sentencepiece libstb-dev
  python3 python3-matplotlib
)
# libopenblas0-openmp: libtorch's fp32 matmuls go through libblas.so.3, which is the reference BLAS unless an
# optimised one is installed (bench/results/blas_choice.json: OpenBLAS's OpenMP build is the fastest at batch 1 and
# at batch 16-32 on this machine, and it shares libtorch's OpenMP threads, so --threads limits both).
# Lean set for a core-only build: ADAPTLINK_DEPS=core scripts/install-deps.sh
if [[ "${ADAPTLINK_DEPS:-all}" == core ]]; then
  pkgs=(build-essential cmake ninja-build ccache pkg-config libboost-graph-dev libcli11-dev
        libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libtomlplusplus-dev)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

// Which BLAS libtorch's matmuls run on. Debian's libtorch calls libblas.so.3, which the alternatives system points
// at the reference (netlib) BLAS unless an optimised one is installed; that one is 3 to 30 times slower for the
// fp32 matmuls of a stage and makes batching worthless (scripts/install-deps.sh installs OpenBLAS's OpenMP build,
// which shares libtorch's OpenMP threads instead of adding its own).
#pragma once

#include <string>

namespace adaptlink::exec {

struct BlasInfo {
  std::string name;  // "OpenBLAS 0.3.21 ...", "BLIS 0.9.0", "reference BLAS (netlib)", "none loaded"
  std::string path;  // the library that provides sgemm_, symlinks resolved ("" when none is loaded)
  bool reference = false;
};

BlasInfo blas_info();
// One line for start-up: "BLAS: OpenBLAS ... (path)"; with a warning and the fix when it is the reference one.
std::string blas_line();

}  // namespace adaptlink::exec

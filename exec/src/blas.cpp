#include "adaptlink/exec/blas.hpp"

#include <dlfcn.h>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <memory>

namespace adaptlink::exec {

BlasInfo blas_info() {
  BlasInfo info;
  void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info where{};
  if (sgemm == nullptr || dladdr(sgemm, &where) == 0 || where.dli_fname == nullptr) {
    info.name = "none loaded (libtorch uses its own kernels)";
    return info;
  }
  std::error_code ec;
  const auto resolved = std::filesystem::canonical(where.dli_fname, ec);
  info.path = ec ? std::string(where.dli_fname) : resolved.string();
  // Ask the library that holds sgemm_ (not the process) which implementation it is.
  std::unique_ptr<void, int (*)(void*)> lib(dlopen(where.dli_fname, RTLD_NOW | RTLD_NOLOAD), dlclose);
  auto symbol = [&](const char* name) { return lib ? dlsym(lib.get(), name) : nullptr; };
  if (auto* config = reinterpret_cast<char* (*)()>(symbol("openblas_get_config"))) {
    info.name = config();  // "OpenBLAS 0.3.21 DYNAMIC_ARCH ... MAX_THREADS=64"
  } else if (auto* version = reinterpret_cast<const char* (*)()>(symbol("bli_info_get_version_str"))) {
    info.name = fmt::format("BLIS {}", version());
  } else if (symbol("mkl_get_version") != nullptr || symbol("MKL_Get_Version") != nullptr) {
    info.name = "Intel MKL";
  } else if (info.path.find("/blas/") != std::string::npos || info.path.find("netlib") != std::string::npos) {
    info.name = "reference BLAS (netlib)";
    info.reference = true;
  } else {
    info.name = "unknown BLAS";
  }
  return info;
}

std::string blas_line() {
  const BlasInfo info = blas_info();
  std::string line = info.path.empty() ? fmt::format("BLAS: {}", info.name) : fmt::format("BLAS: {} ({})", info.name, info.path);
  if (info.reference) {
    line += "\nwarning: libblas.so.3 is the reference BLAS: fp32 matmuls run 3-30x slower and batching gains "
            "nothing; install an optimised one (apt-get install libopenblas0-openmp, as scripts/install-deps.sh does)";
  }
  return line;
}

}  // namespace adaptlink::exec

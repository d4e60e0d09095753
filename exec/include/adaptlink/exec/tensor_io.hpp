// at::Tensor <-> safetensors (the only exec/ header besides model.hpp / generate.hpp that names torch types).
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/safetensors.hpp"

namespace adaptlink::exec {

Expected<at::ScalarType> to_scalar_type(StDtype dtype);
Expected<StDtype> to_st_dtype(at::ScalarType type);

// Copies a tensor out of a mapped file into an owned tensor of `type` (conversion included) on `device`.
at::Tensor load_tensor(const SafetensorsFile& file, const TensorInfo& info, at::ScalarType type, c10::Device device);

// Every tensor of a .safetensors file, in its stored dtype, on the CPU.
Expected<std::map<std::string, at::Tensor>> read_safetensors(const std::filesystem::path& path);
// One named tensor of a .safetensors file; the error names the file and the tensor.
Expected<at::Tensor> read_safetensors_tensor(const std::filesystem::path& path, const std::string& name);
// Writes CPU copies of the tensors (contiguous) to `path`.
Status write_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors);

}  // namespace adaptlink::exec

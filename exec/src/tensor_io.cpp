#include "adaptlink/exec/tensor_io.hpp"

#include <ATen/ATen.h>

#include <cstring>

namespace adaptlink::exec {

Expected<at::ScalarType> to_scalar_type(StDtype dtype) {
  switch (dtype) {
    case StDtype::F64:
      return at::kDouble;
    case StDtype::F32:
      return at::kFloat;
    case StDtype::F16:
      return at::kHalf;
    case StDtype::BF16:
      return at::kBFloat16;
    case StDtype::I64:
      return at::kLong;
    case StDtype::I32:
      return at::kInt;
    case StDtype::I16:
      return at::kShort;
    case StDtype::I8:
      return at::kChar;
    case StDtype::U8:
      return at::kByte;
    case StDtype::BOOL:
      return at::kBool;
    default:
      return make_error("dtype {} is not supported here", to_string(dtype));
  }
}

Expected<StDtype> to_st_dtype(at::ScalarType type) {
  switch (type) {
    case at::kDouble:
      return StDtype::F64;
    case at::kFloat:
      return StDtype::F32;
    case at::kHalf:
      return StDtype::F16;
    case at::kBFloat16:
      return StDtype::BF16;
    case at::kLong:
      return StDtype::I64;
    case at::kInt:
      return StDtype::I32;
    case at::kShort:
      return StDtype::I16;
    case at::kChar:
      return StDtype::I8;
    case at::kByte:
      return StDtype::U8;
    case at::kBool:
      return StDtype::BOOL;
    default:
      return make_error("scalar type {} has no safetensors dtype", static_cast<int>(type));
  }
}

at::Tensor load_tensor(const SafetensorsFile& file, const TensorInfo& info, at::ScalarType type, c10::Device device) {
  auto src_type = to_scalar_type(info.dtype);
  ADAPTLINK_CHECK(src_type.has_value(), "unsupported dtype reached load_tensor");
  auto bytes = file.data(info);
  // Copy the raw bytes into an owned (64-byte aligned) tensor first: offsets inside a safetensors file need
  // not be aligned, and vectorised kernels must not read from an unaligned mapping.
  at::Tensor out = at::empty(info.shape, at::TensorOptions().dtype(*src_type));
  if (!bytes.empty()) std::memcpy(out.data_ptr(), bytes.data(), bytes.size());
  if (*src_type != type) out = out.to(type);
  file.release(info);
  if (device.type() != c10::DeviceType::CPU) out = out.to(device);
  return out;
}

Expected<std::map<std::string, at::Tensor>> read_safetensors(const std::filesystem::path& path) {
  auto file = SafetensorsFile::open(path);
  if (!file) return file.error();
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, info] : (*file)->tensors()) {
    auto type = to_scalar_type(info.dtype);
    if (!type) return Error{fmt::format("tensor '{}': {}", name, type.error().message), path.string(), 0, 0};
    out[name] = load_tensor(**file, info, *type, c10::Device(c10::DeviceType::CPU));
  }
  return out;
}

Expected<at::Tensor> read_safetensors_tensor(const std::filesystem::path& path, const std::string& name) {
  auto file = SafetensorsFile::open(path);
  if (!file) return file.error();
  const TensorInfo* info = (*file)->find(name);
  if (info == nullptr) return Error{fmt::format("no tensor '{}'", name), path.string(), 0, 0};
  auto type = to_scalar_type(info->dtype);
  if (!type) return Error{fmt::format("tensor '{}': {}", name, type.error().message), path.string(), 0, 0};
  return load_tensor(**file, *info, *type, c10::Device(c10::DeviceType::CPU));
}

Status write_safetensors(const std::filesystem::path& path,
                         const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::vector<at::Tensor> keep;
  std::vector<TensorToWrite> out;
  for (const auto& [name, t] : tensors) {
    auto dtype = to_st_dtype(t.scalar_type());
    if (!dtype) return Error{fmt::format("tensor '{}': {}", name, dtype.error().message), path.string(), 0, 0};
    at::Tensor c = t.to(at::kCPU).contiguous();
    keep.push_back(c);
    out.push_back({name, *dtype, c.sizes().vec(), c.data_ptr(), c.nbytes()});
  }
  return write_safetensors(path, out);
}

}  // namespace adaptlink::exec

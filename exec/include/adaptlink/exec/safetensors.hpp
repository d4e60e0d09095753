// Safetensors reader and writer (no torch): an 8-byte little-endian header length, a JSON header
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}} and the raw data.
//
// Files are memory-mapped; nothing is read until a tensor's bytes are asked for, so a stage that needs
// a quarter of the tensors touches a quarter of the file. Every check that protects against a broken
// file (header larger than the file, offsets outside the data, overlapping tensors, sizes that do not
// match the shape, unknown dtypes, bad JSON) happens when the file is opened and yields an Error that
// names the file and the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "adaptlink/error.hpp"

namespace adaptlink::exec {

enum class StDtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2 };

std::string_view to_string(StDtype dtype);
Expected<StDtype> parse_st_dtype(std::string_view name);
size_t element_size(StDtype dtype);
// Floating-point formats the model can take weights in (F32, F16, BF16).
bool is_weight_dtype(StDtype dtype);

struct TensorInfo {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
  [[nodiscard]] int64_t numel() const;
  [[nodiscard]] uint64_t nbytes() const { return end - begin; }
};

std::string shape_string(std::span<const int64_t> shape);

// One memory-mapped .safetensors file.
class SafetensorsFile {
 public:
  static Expected<std::shared_ptr<SafetensorsFile>> open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const { return metadata_; }
  [[nodiscard]] const TensorInfo* find(std::string_view name) const;
  // The tensor's raw bytes (inside the mapping; valid while this object lives).
  [[nodiscard]] std::span<const std::byte> data(const TensorInfo& info) const;
  // Tells the kernel the tensor's pages are no longer needed (after copying them out).
  void release(const TensorInfo& info) const;
  [[nodiscard]] uint64_t file_bytes() const { return size_; }

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  const std::byte* map_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: raw little-endian bytes of `dtype` and `shape`.
struct TensorToWrite {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
};
Status write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

// fp16 / bf16 <-> fp32 helpers (round to nearest even).
float bf16_to_float(uint16_t v);
uint16_t float_to_bf16(float f);
float fp16_to_float(uint16_t v);

}  // namespace adaptlink::exec

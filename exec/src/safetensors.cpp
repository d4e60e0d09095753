#include "adaptlink/exec/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <nlohmann/json.hpp>

namespace adaptlink::exec {
namespace {

constexpr std::array<std::pair<std::string_view, StDtype>, 12> kDtypes{{{"F64", StDtype::F64},
                                                                       {"F32", StDtype::F32},
                                                                       {"F16", StDtype::F16},
                                                                       {"BF16", StDtype::BF16},
                                                                       {"I64", StDtype::I64},
                                                                       {"I32", StDtype::I32},
                                                                       {"I16", StDtype::I16},
                                                                       {"I8", StDtype::I8},
                                                                       {"U8", StDtype::U8},
                                                                       {"BOOL", StDtype::BOOL},
                                                                       {"F8_E4M3", StDtype::F8_E4M3},
                                                                       {"F8_E5M2", StDtype::F8_E5M2}}};

// Largest header we accept (the format's reference implementation uses 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

Error file_error(const std::filesystem::path& path, std::string message) {
  return Error{std::move(message), path.string(), 0, 0};
}

}  // namespace

std::string_view to_string(StDtype dtype) {
  for (const auto& [name, d] : kDtypes) {
    if (d == dtype) return name;
  }
  return "?";
}

Expected<StDtype> parse_st_dtype(std::string_view name) {
  for (const auto& [n, d] : kDtypes) {
    if (n == name) return d;
  }
  return make_error("unknown dtype '{}'", name);
}

size_t element_size(StDtype dtype) {
  switch (dtype) {
    case StDtype::F64:
    case StDtype::I64:
      return 8;
    case StDtype::F32:
    case StDtype::I32:
      return 4;
    case StDtype::F16:
    case StDtype::BF16:
    case StDtype::I16:
      return 2;
    default:
      return 1;
  }
}

bool is_weight_dtype(StDtype dtype) {
  return dtype == StDtype::F32 || dtype == StDtype::F16 || dtype == StDtype::BF16;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_string(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", shape[i]);
  return s + "]";
}

Expected<std::shared_ptr<SafetensorsFile>> SafetensorsFile::open(const std::filesystem::path& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below, as every non-regular file is).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return file_error(path, fmt::format("cannot open: {}", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return file_error(path, fmt::format("cannot stat: {}", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return file_error(path, "not a regular file");
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return file_error(path, fmt::format("truncated: {} bytes, shorter than the 8-byte header length", size));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return file_error(path, fmt::format("cannot map: {}", std::strerror(errno)));

  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = static_cast<const std::byte*>(map);
  file->size_ = size;

  uint64_t header_len = 0;
  std::memcpy(&header_len, file->map_, 8);  // little endian (x86-64, aarch64)
  if (header_len > kMaxHeaderBytes) {
    return file_error(path, fmt::format("header length {} is implausible (more than {} bytes)", header_len,
                                        kMaxHeaderBytes));
  }
  if (header_len > size - 8) {
    return file_error(path, fmt::format("header length {} is larger than the file ({} bytes after the length)",
                                        header_len, size - 8));
  }
  file->data_start_ = 8 + header_len;
  const uint64_t data_size = size - file->data_start_;

  nlohmann::json header;
  std::set<std::string> names;  // top-level keys: a tensor named twice is an error, not "the last one wins"
  std::string duplicate;
  try {
    header = nlohmann::json::parse(
        reinterpret_cast<const char*>(file->map_ + 8), reinterpret_cast<const char*>(file->map_ + 8 + header_len),
        [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
          if (depth == 1 && event == nlohmann::json::parse_event_t::key && duplicate.empty() &&
              !names.insert(parsed.get<std::string>()).second) {
            duplicate = parsed.get<std::string>();
          }
          return true;
        });
  } catch (const nlohmann::json::exception& e) {
    return file_error(path, fmt::format("bad JSON header: {}", e.what()));
  }
  if (!duplicate.empty()) return file_error(path, fmt::format("bad JSON header: tensor '{}' is listed twice", duplicate));
  if (!header.is_object()) return file_error(path, "bad JSON header: not an object");

  std::vector<const TensorInfo*> by_offset;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (entry.is_object()) {
        for (const auto& [k, v] : entry.items()) {
          if (v.is_string()) file->metadata_[k] = v.get<std::string>();
        }
      }
      continue;
    }
    auto bad = [&](const std::string& what) { return file_error(path, fmt::format("tensor '{}': {}", name, what)); };
    if (!entry.is_object()) return bad("entry is not an object");
    TensorInfo info;
    info.name = name;
    if (!entry.contains("dtype") || !entry["dtype"].is_string()) return bad("missing or non-string 'dtype'");
    auto dtype = parse_st_dtype(entry["dtype"].get<std::string>());
    if (!dtype) return bad(dtype.error().message);
    info.dtype = *dtype;
    if (!entry.contains("shape") || !entry["shape"].is_array()) return bad("missing or non-array 'shape'");
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) return bad("shape holds a non-integer or negative size");
      info.shape.push_back(d.get<int64_t>());
    }
    const auto& offsets = entry.contains("data_offsets") ? entry["data_offsets"] : nlohmann::json();
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      return bad("'data_offsets' must be two non-negative integers");
    }
    info.begin = offsets[0].get<uint64_t>();
    info.end = offsets[1].get<uint64_t>();
    if (info.end < info.begin) return bad(fmt::format("data_offsets [{}, {}] end before they begin", info.begin, info.end));
    if (info.end > data_size) {
      return bad(fmt::format("data_offsets [{}, {}] run past the end of the data ({} bytes): the file is truncated",
                             info.begin, info.end, data_size));
    }
    // numel * element size, guarding against overflow from absurd shapes.
    unsigned __int128 expect = element_size(info.dtype);
    for (int64_t d : info.shape) {
      expect *= static_cast<uint64_t>(d);
      if (expect > std::numeric_limits<uint64_t>::max()) return bad("shape is absurdly large");
    }
    if (static_cast<uint64_t>(expect) != info.nbytes()) {
      return bad(fmt::format("{} {} needs {} bytes but data_offsets [{}, {}] hold {}", to_string(info.dtype),
                             shape_string(info.shape), static_cast<uint64_t>(expect), info.begin, info.end,
                             info.nbytes()));
    }
    file->tensors_.emplace(name, std::move(info));
  }
  for (const auto& [_, info] : file->tensors_) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo* prev = by_offset[i - 1];
    const TensorInfo* cur = by_offset[i];
    if (cur->begin < prev->end && cur->nbytes() > 0 && prev->nbytes() > 0) {
      return file_error(path, fmt::format("tensor '{}' (bytes {}..{}) overlaps tensor '{}' (bytes {}..{})", cur->name,
                                          cur->begin, cur->end, prev->name, prev->begin, prev->end));
    }
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), size_);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = tensors_.find(std::string(name));
  return it == tensors_.end() ? nullptr : &it->second;
}

std::span<const std::byte> SafetensorsFile::data(const TensorInfo& info) const {
  return {map_ + data_start_ + info.begin, info.nbytes()};
}

void SafetensorsFile::release(const TensorInfo& info) const {
  const long page = ::sysconf(_SC_PAGESIZE);
  const uint64_t begin = data_start_ + info.begin;
  const uint64_t end = data_start_ + info.end;
  // Whole pages strictly inside the tensor only, so neighbours keep theirs.
  const uint64_t first = (begin + page - 1) / page * page;
  const uint64_t last = end / page * page;
  if (last > first) ::madvise(const_cast<std::byte*>(map_) + first, last - first, MADV_DONTNEED);
}

Status write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", std::string(to_string(t.dtype))}, {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return file_error(path, "cannot open for writing");
  const uint64_t len = text.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& t : tensors) out.write(static_cast<const char*>(t.data), static_cast<std::streamsize>(t.nbytes));
  out.close();  // a full device fails here, not silently in the destructor
  if (!out) return file_error(path, "write failed");
  return Ok{};
}

float bf16_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  const uint32_t rounding = 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float fp16_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace adaptlink::exec

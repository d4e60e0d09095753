// Reading a small input file (a scenario, a config.json, a profile) whole, with limits: only a regular file (a FIFO
// would block for ever, /dev/zero would fill memory), and at most `max_bytes` (read no further than that).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "adaptlink/error.hpp"

namespace adaptlink {

inline constexpr std::uintmax_t kMaxInputFileBytes = 64ull << 20;  // 64 MiB: far above any scenario or config

inline Expected<std::string> read_input_file(const std::filesystem::path& path, std::string_view what,
                                             std::uintmax_t max_bytes = kMaxInputFileBytes) {
  auto fail = [&](std::string message) { return Error{std::move(message), path.string(), 0, 0}; };
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);  // follows symbolic links
  if (ec || !std::filesystem::exists(status)) return fail(fmt::format("cannot read {}: no such file", what));
  if (!std::filesystem::is_regular_file(status)) {
    return fail(fmt::format("cannot read {}: not a regular file", what));
  }
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return fail(fmt::format("cannot read {}: {}", what, ec.message()));
  if (size > max_bytes) {
    return fail(fmt::format("{} is {} bytes, more than the limit of {} bytes", what, size, max_bytes));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail(fmt::format("cannot read {}: not readable", what));
  std::string text(static_cast<size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (in.bad()) return fail(fmt::format("cannot read {}", what));
  text.resize(static_cast<size_t>(in.gcount()));  // a file that shrank meanwhile
  return text;
}

}  // namespace adaptlink

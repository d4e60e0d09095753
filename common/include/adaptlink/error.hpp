// Error values for bad input (files, flags, network messages) and checks for broken invariants.
//
// Bad input never aborts: functions return Expected<T>, which holds either a value or an Error that
// names where the problem is (file, line, column, key) and what it is. Broken invariants are
// programming errors: ADAPTLINK_CHECK aborts with file:line.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace adaptlink {

struct Error {
  // bad_input: a file, flag or message was wrong (fix the input); failed: the input was fine but the run could not
  // complete (a worker lost beyond recovery, unreachable, stuck). CLIs exit 2 and 1 for them.
  enum class Kind { bad_input, failed };

  std::string message;  // what is wrong, e.g. "unknown key 'bandwith_mbps'"
  std::string file;     // source file, when the error comes from a file
  int line = 0;         // 1-based, 0 when unknown
  int column = 0;       // 1-based, 0 when unknown
  Kind kind = Kind::bad_input;

  // "file:line:column: message" (parts that are unknown are left out).
  [[nodiscard]] std::string to_string() const {
    std::string out;
    if (!file.empty()) {
      out += file;
      if (line > 0) out += fmt::format(":{}", line);
      if (line > 0 && column > 0) out += fmt::format(":{}", column);
      out += ": ";
    }
    out += message;
    return out;
  }
};

template <typename... Args>
[[nodiscard]] Error make_error(fmt::format_string<Args...> format, Args&&... args) {
  return Error{fmt::format(format, std::forward<Args>(args)...), {}, 0, 0};
}

// The same error as a failed run (Error::Kind::failed).
[[nodiscard]] inline Error as_failure(Error e) {
  e.kind = Error::Kind::failed;
  return e;
}

// Minimal std::expected stand-in (C++23 is not available on Debian 12's g++ 12).
template <typename T>
class [[nodiscard]] Expected {
 public:
  Expected(T value) : data_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
  Expected(Error error) : data_(std::move(error)) {}     // NOLINT(google-explicit-constructor)

  [[nodiscard]] bool has_value() const { return data_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { check(); return std::get<0>(data_); }
  const T& value() const& { check(); return std::get<0>(data_); }
  T&& value() && { check(); return std::get<0>(std::move(data_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  [[nodiscard]] const Error& error() const {
    if (has_value()) {
      std::fprintf(stderr, "%s:%d: error() on an Expected that holds a value\n", __FILE__, __LINE__);
      std::abort();
    }
    return std::get<1>(data_);
  }

 private:
  void check() const {
    if (!has_value()) {
      std::fprintf(stderr, "%s:%d: value() on an Expected that holds an error: %s\n", __FILE__, __LINE__,
                   std::get<1>(data_).to_string().c_str());
      std::abort();
    }
  }
  std::variant<T, Error> data_;
};

// For functions that return nothing but may fail.
struct Ok {};
using Status = Expected<Ok>;

}  // namespace adaptlink

// Aborts with file:line when an invariant does not hold. For programming errors only, never for input.
#define ADAPTLINK_CHECK(cond, ...)                                                         \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "%s:%d: check failed: %s %s\n", __FILE__, __LINE__, #cond,     \
                   ::fmt::format("" __VA_ARGS__).c_str());                                 \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

#include "common.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "adaptlink/planner/planner.hpp"

namespace adaptlink::cli {

int report(const Error& error, std::string_view program) {
  std::string line = error.to_string();
  std::replace(line.begin(), line.end(), '\n', ' ');
  std::cerr << program << ": " << line << "\n";
  return error.kind == Error::Kind::failed ? kExitFailure : kExitBadInput;
}

const CLI::Validator& positive_seconds() {
  static const CLI::Validator v(
      [](std::string& text) -> std::string {
        double x = 0;
        try {
          size_t used = 0;
          x = std::stod(text, &used);
          if (used != text.size()) return "expected a number of seconds, got " + text;
        } catch (const std::exception&) {
          return "expected a number of seconds, got " + text;
        }
        if (!std::isfinite(x) || !(x > 0)) return "must be a finite number of seconds > 0, got " + text;
        return {};
      },
      "SECONDS > 0");
  return v;
}

const CLI::Validator& thread_count() {
  static const CLI::Validator v = CLI::Range(1, 256).description("1..256");
  return v;
}

void add_heartbeat_options(CLI::App* cmd, std::optional<double>& interval_s, std::optional<double>& timeout_s) {
  cmd->add_option("--heartbeat-interval-s", interval_s,
                  "Heartbeat every S seconds (default: the scenario's [recovery].heartbeat_interval_s, 0.5)")
      ->check(positive_seconds());
  cmd->add_option("--heartbeat-timeout-s", timeout_s,
                  "A device silent for S seconds is lost (default: the scenario's [recovery].heartbeat_timeout_s, 1.5)")
      ->check(positive_seconds());
}

std::string planner_choices() {
  std::string out;
  for (const auto& name : partition::planner_names()) out += (out.empty() ? "" : " | ") + name;
  return out;
}

int flush_output(int status, std::string_view program) {
  std::cout.flush();
  const bool failed = !std::cout.good() || std::fflush(stdout) != 0 || std::ferror(stdout) != 0;
  if (!failed) return status;
  std::fprintf(stderr, "%.*s: cannot write to standard output (full disk or closed pipe?)\n",
               static_cast<int>(program.size()), program.data());
  return status == kExitOk ? kExitFailure : status;
}

std::optional<int> parse_args(CLI::App& app, int argc, char** argv, std::string_view program) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << program << ": error: " << e.what() << " (see --help)\n";
    return kExitBadInput;
  }
  return std::nullopt;
}

Status write_output(const std::string& path, const std::string& text) {
  if (path.empty() || path == "-") {
    std::cout << text;
    std::cout.flush();
    return Ok{};
  }
  std::ofstream out(path, std::ios::binary);
  if (!out) return make_error("{}: cannot open for writing", path);
  out << text;
  out.close();  // the buffered bytes go out here: a full device fails now, not silently in the destructor
  if (!out) return make_error("{}: write failed", path);
  return Ok{};
}

std::string Table::str() const {
  std::vector<size_t> width(header_.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t c = 0; c < row.size() && c < width.size(); ++c) width[c] = std::max(width[c], row[c].size());
  };
  measure(header_);
  for (const auto& r : rows_) measure(r);
  auto line = [&](const std::vector<std::string>& row) {
    std::string out;
    for (size_t c = 0; c < width.size(); ++c) {
      const std::string cell = c < row.size() ? row[c] : "";
      const std::string pad(width[c] - cell.size(), ' ');
      out += c == 0 ? cell + pad : "  " + pad + cell;
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + "\n";
  };
  std::string out = line(header_);
  size_t total = 0;
  for (auto w : width) total += w + 2;
  out += std::string(total > 2 ? total - 2 : 0, '-') + "\n";
  for (const auto& r : rows_) out += line(r);
  return out;
}

}  // namespace adaptlink::cli

// Helpers shared by the command-line front ends (adaptlink-sim, adaptlink-run): exit codes, one-line errors, tables,
// output files, the planner list for help texts.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "adaptlink/error.hpp"

namespace adaptlink::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;   // the run itself failed
inline constexpr int kExitBadInput = 2;  // bad scenario, flag or file

// Prints "PROGRAM: <error>" on one line to stderr and returns the exit status for it: kExitBadInput for bad
// input, kExitFailure for a run that failed (Error::Kind).
int report(const Error& error, std::string_view program);

// Parses the command line. Returns the exit status when parsing ends the program (--help: 0; a bad
// flag: one line on stderr, kExitBadInput), or nothing when the command should run.
std::optional<int> parse_args(CLI::App& app, int argc, char** argv, std::string_view program);

// The exit status once standard output is flushed: a command whose output could not be written (a full disk,
// /dev/full, a closed pipe) failed, whatever it returned (one line on stderr, kExitFailure).
int flush_output(int status, std::string_view program);

// A duration in seconds for a flag: a finite number > 0 (CLI11's PositiveNumber lets NaN through).
const CLI::Validator& positive_seconds();
// A thread count for a flag: 1 to 256.
const CLI::Validator& thread_count();

// "uniform | proportional | ..." from the planner registry (partition::planner_names), for help texts.
std::string planner_choices();

// --heartbeat-interval-s and --heartbeat-timeout-s (positive seconds; unset: the scenario's [recovery] table), the
// same in both front ends.
void add_heartbeat_options(CLI::App* cmd, std::optional<double>& interval_s, std::optional<double>& timeout_s);

// Writes text to `path`, or to stdout when path is empty or "-".
Status write_output(const std::string& path, const std::string& text);

// A plain text table with right-aligned numeric columns.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  [[nodiscard]] std::string str() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace adaptlink::cli

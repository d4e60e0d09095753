// adaptlink-run subcommands that live in their own files; run_main.cpp registers them.
//
//   profile --model DIR (--scenario FILE | --device NAME) [--prompt-tokens N] [--images N] [--repeats R]
//           [--threads N] [--dtype fp32|bf16] [--out FILE] [--format text|json]
//       measures every node of the layer DAG on this machine and writes a profile file (partition/profile.hpp)
//       for adaptlink-sim plan|run|compare --profile (cli/run/profile_cmd.cpp).
//
// Each add_*_command registers the subcommand and returns it (check ->parsed() after parsing); each
// run_*_command returns the exit status: 0 ok, 1 the run failed, 2 bad input (one line "adaptlink-run: error: ...").
#pragma once

#include <CLI/CLI.hpp>

#include <optional>
#include <string>

#include "common.hpp"

namespace adaptlink::run {

// Bad input: one line "adaptlink-run: error: MESSAGE" on stderr (newlines flattened); returns 2.
inline int fail(const std::string& message) { return cli::report(Error{"error: " + message, {}, 0, 0}, "adaptlink-run"); }
// An error value: 2 for bad input, 1 for a run that failed (Error::Kind), the same one line.
inline int fail(const Error& e) {
  Error line{"error: " + e.to_string(), {}, 0, 0, e.kind};
  return cli::report(line, "adaptlink-run");
}

struct ProfileArgs {
  std::string model;                    // checkpoint directory
  std::optional<std::string> scenario;  // one entry per device, scaled by partition::testbed_slowdown
  std::optional<std::string> device;    // one entry for this device, unscaled
  std::optional<int> prompt_tokens;     // default: the scenario's workload, else 64
  std::optional<int> images;            // default: the scenario's workload, else 1
  int repeats = 3;
  int threads = 0;                      // 0: libtorch's default
  std::string dtype = "fp32";
  std::string out;                      // profile file; empty: none (use --format json for stdout)
  std::string format = "text";
  std::string batch_sizes = "2,4,8,16";  // decode batches to measure; "none": none
};

CLI::App* add_profile_command(CLI::App& app, ProfileArgs& args);
int run_profile_command(const ProfileArgs& args);

}  // namespace adaptlink::run

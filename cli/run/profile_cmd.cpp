// adaptlink-run profile (see commands.hpp): per-node times on this machine, written as a profile file.
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "adaptlink/exec/blas.hpp"
#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/profile.hpp"
#include "adaptlink/partition/scenario.hpp"
#include "adaptlink/partition/testbed.hpp"
#include "commands.hpp"
#include "common.hpp"

namespace adaptlink::run {
namespace {


std::string summary(const exec::MeasuredProfile& p, const std::optional<partition::Scenario>& scenario,
                    const ProfileArgs& args) {
  std::string out = fmt::format("{}: {} nodes, {} image(s) + {} prompt tokens = {} prefill tokens, decode fitted up to "
                                "{} cached tokens; {} threads, {}, median of {}\n\n",
                                args.model, p.graph.size(), p.shape.images, p.shape.prompt_tokens,
                                p.graph.prefill_tokens(p.shape), p.graph.max_context(p.shape), p.threads, p.dtype,
                                p.repeats);
  cli::Table t({"node", "prefill_ms", "decode_ms_at_zero", "decode_ms_per_token"});
  double prefill = 0, decode = 0;
  for (const auto& n : p.nodes) {
    t.add({n.name, fmt::format("{:.3f}", n.prefill_ms), fmt::format("{:.4f}", n.decode_ms_at_zero),
           fmt::format("{:.3g}", n.decode_ms_per_token)});
    prefill += n.prefill_ms;
    decode += n.decode_ms_at_zero;
  }
  out += t.str();
  out += fmt::format("\ntotal: prefill {:.2f} ms, decode step {:.3f} ms at an empty cache\n", prefill, decode);
  if (scenario && !args.device) {
    out += fmt::format("testbed emulation of '{}' (measured times x slowdown):", scenario->name);
    for (int d = 0; d < static_cast<int>(scenario->devices.size()); ++d) {
      out += fmt::format(" {} x{:.3f}", scenario->devices[static_cast<size_t>(d)].name,
                         partition::testbed_slowdown(*scenario, d));
    }
    out += "\n";
  }
  if (!args.out.empty()) out += fmt::format("wrote {}\n", args.out);
  return out;
}

}  // namespace

CLI::App* add_profile_command(CLI::App& app, ProfileArgs& a) {
  auto* cmd = app.add_subcommand(
      "profile", "Measure per-node prefill and decode times on this machine; write a profile file for adaptlink-sim "
                 "--profile (with --scenario: every device, scaled as the testbed emulates it)");
  cmd->add_option("--model", a.model, "checkpoint directory (config.json, *.safetensors, ...)")->required();
  cmd->add_option("--scenario", a.scenario,
                  "scenario whose devices get one entry each: measured times x (fastest tflops / device tflops); "
                  "also the request shape (its [workload])");
  cmd->add_option("--device", a.device, "one entry for this device name, times as measured (unscaled)");
  cmd->add_option("--prompt-tokens", a.prompt_tokens, "text tokens per request (default: the scenario's, else 64)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--images", a.images, "images per request (default: the scenario's, else 1)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--repeats", a.repeats, "timed runs per measurement after one warm-up; the median counts (default 3)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--threads", a.threads, "CPU threads (default: libtorch's)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--dtype", a.dtype, "fp32 | bf16")->check(CLI::IsMember({"fp32", "bf16"}));
  cmd->add_option("--batch-sizes", a.batch_sizes,
                  "decode batches to measure, ascending, comma-separated (default 2,4,8,16; none: batch 1 only)");
  cmd->add_option("--out", a.out, "write the profile (JSON) to FILE");
  cmd->add_option("--format", a.format, "text (a table) | json (the profile) on stdout")
      ->check(CLI::IsMember({"text", "json"}));
  return cmd;
}

int run_profile_command(const ProfileArgs& args) {
  if (!args.scenario && !args.device) {
    return fail("profile needs --scenario FILE (one entry per scenario device, the measured times scaled by each "
                "device's testbed slowdown: what adaptlink-run testbed emulates) or --device NAME (one entry for a "
                "real device measured here, unscaled)");
  }
  std::optional<partition::Scenario> scenario;
  models::RequestShape shape;  // 1 image, 64 prompt tokens, 128 output tokens
  if (args.scenario) {
    auto loaded = partition::load_scenario(*args.scenario);
    if (!loaded) return fail(loaded.error());
    scenario = std::move(loaded).value();
    shape = scenario->workload.shape;
    if (args.device && scenario->device_index(*args.device) < 0) {
      return fail(fmt::format("--device {}: no such device in scenario '{}'", *args.device, scenario->name));
    }
    // The profile names the checkpoint's nodes; the testbed plans the checkpoint's model on the scenario's devices.
    auto config = exec::load_checkpoint_config(args.model);
    if (!config) return fail(config.error());
    const auto graph = models::LayerGraph::build(*config, models::Dtype::fp32);
    if (auto st = exec::check_scenario_model(graph, args.model, *scenario); !st) {
      std::fprintf(stderr,
                   "adaptlink-run: note: %s; the profile is for the checkpoint's model on the scenario's devices, as "
                   "adaptlink-run testbed --model plans it\n",
                   st.error().message.c_str());
    }
  }
  if (args.prompt_tokens) shape.prompt_tokens = *args.prompt_tokens;
  if (args.images) shape.images = *args.images;
  if (args.threads > 0) at::set_num_threads(args.threads);
  auto exec_options = exec::parse_exec_options(args.dtype, "cpu");
  if (!exec_options) return fail(exec_options.error());

  exec::ProfileOptions options;
  options.shape = shape;
  options.repeats = args.repeats;
  options.batch_sizes.clear();
  if (args.batch_sizes != "none") {
    size_t at = 0;
    while (at <= args.batch_sizes.size()) {
      const size_t comma = std::min(args.batch_sizes.find(',', at), args.batch_sizes.size());
      const std::string item = args.batch_sizes.substr(at, comma - at);
      size_t used = 0;
      int b = 0;
      try {
        b = std::stoi(item, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != item.size() || b < 2 || b > 4096 ||
          (!options.batch_sizes.empty() && b <= options.batch_sizes.back())) {
        return fail(fmt::format("--batch-sizes: expected ascending integers from 2 to 4096 separated by commas (or "
                                "none), got '{}'",
                                args.batch_sizes));
      }
      options.batch_sizes.push_back(b);
      at = comma + 1;
    }
  }
  options.exec = *exec_options;
  options.progress = [](const exec::NodeProfile& n, int i, int count) {
    if (i == 0) std::fprintf(stderr, "profile: %s\n", exec::blas_line().c_str());
    std::string batches;
    for (double ms : n.decode_batch_ms_at_zero) batches += fmt::format("{}{:.4f}", batches.empty() ? "" : " ", ms);
    std::fprintf(stderr, "profile: [%d/%d] %s: prefill %.3f ms, decode %.4f ms + %.3g ms/token%s%s\n", i + 1, count,
                 n.name.c_str(), n.prefill_ms, n.decode_ms_at_zero, n.decode_ms_per_token,
                 batches.empty() ? "" : ", batches (ms): ", batches.c_str());
  };
  auto measured = exec::measure_profile(args.model, options);
  if (!measured) return fail(measured.error());

  nlohmann::json json;
  if (args.device) {
    json = exec::device_profile_json(*measured, *args.device);
  } else {
    json = exec::testbed_profile_json(*measured, *scenario);
  }
  const std::string text = json.dump(2) + "\n";
  if (!args.out.empty()) {
    std::ofstream out(args.out);
    if (!out || !(out << text) || !out.flush()) return fail(fmt::format("{}: cannot write the profile", args.out));
  }
  if (args.format == "json") {
    std::cout << text;
  } else {
    std::cout << summary(*measured, scenario, args);
  }
  return 0;
}

}  // namespace adaptlink::run

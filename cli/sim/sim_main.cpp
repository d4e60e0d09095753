// adaptlink-sim: what-if studies on scenario files.
//   validate SCENARIO                  check the file and that the model fits the devices
//   plan SCENARIO [--planner NAME] [--profile FILE]...
//                                      partition the model and predict its performance (measured times: --profile)
//   run | compare | sweep              simulate with SimGrid (when built with ADAPTLINK_WITH_SIM)
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "adaptlink/partition/problem.hpp"
#include "adaptlink/partition/profile.hpp"
#include "adaptlink/planner/planner.hpp"
#include "common.hpp"
#ifdef ADAPTLINK_WITH_SIM
#include "sim_commands.hpp"
#endif

namespace al = adaptlink;
namespace part = adaptlink::partition;

namespace {

std::string gb(double bytes) { return fmt::format("{:.2f}", bytes / 1e9); }

std::string node_span(const part::CostModel& cost, const part::Stage& st) {
  const auto& g = cost.graph();
  if (st.first_node == st.last_node) return g.node(st.first_node).name;
  return g.node(st.first_node).name + " .. " + g.node(st.last_node).name;
}

int cmd_validate(const std::string& file, const std::string& format) {
  auto problem = part::load_problem(file);
  if (!problem) return al::cli::report(problem.error(), "adaptlink-sim");
  const auto& p = **problem;
  // The model must fit the active devices: the adaptlink planner decides that.
  auto plan = part::make_plan(*p.cost, "adaptlink", p.scenario.planner.objective);
  if (!plan) {
    auto e = plan.error();
    e.file = file;
    return al::cli::report(e, "adaptlink-sim");
  }
  const auto active = part::active_devices(p.scenario);
  if (format == "json") {
    nlohmann::json j{{"scenario", p.scenario.name},
                     {"valid", true},
                     {"devices", p.scenario.devices.size()},
                     {"active_devices", active.size()},
                     {"nodes", p.graph.size()},
                     {"parameters", p.graph.total_params()},
                     {"weight_bytes", p.cost->weight_bytes(0, p.graph.size() - 1)}};
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << fmt::format(
        "{}: ok: '{}', {} devices ({} active), {} {} ({:.2f} B parameters, {} nodes), "
        "weights {:.1f} GB\n",
        file, p.scenario.name, p.scenario.devices.size(), active.size(),
        p.scenario.model.preset.empty() ? p.scenario.model.config.string() : p.scenario.model.preset,
        al::models::to_string(p.scenario.model.dtype), p.graph.total_params() / 1e9, p.graph.size(),
        p.cost->weight_bytes(0, p.graph.size() - 1) / 1e9);
  }
  return al::cli::kExitOk;
}

// "request: 64 prompt tokens + 1 image of 672x672 (5 crops, 2928 image tokens), 128 output tokens"
std::string request_line(const part::CostModel& cost) {
  const auto& shape = cost.shape();
  const auto& config = cost.graph().config();
  std::string images;
  if (shape.images > 0) {
    const auto size = config.image_size_or_default(shape.image_width, shape.image_height);
    const int crops = config.vision_crops_for(size[0], size[1]);
    images =
        fmt::format(" + {} image{}{} ({} crop{}, {} image tokens{})", shape.images, shape.images > 1 ? "s" : "",
                    config.model_type == "llava_next" ? fmt::format(" of {}x{}", size[0], size[1]) : "", crops,
                    crops > 1 ? "s" : "", config.image_tokens_for(size[0], size[1]), shape.images > 1 ? " each" : "");
  }
  return fmt::format("request: {} prompt tokens{}, {} output tokens\n", shape.prompt_tokens, images,
                     shape.output_tokens);
}

// `cost`: the one the plan runs on (PlanCost); `workload`: the scenario's own (its population).
std::string plan_table(const part::Plan& plan, const part::CostModel& cost, const part::Workload& workload,
                       const al::Expected<part::Plan>& uniform) {
  const auto& sc = cost.scenario();
  const char* objective = plan.objective == part::Objective::throughput ? "throughput" : "latency";
  std::string out = fmt::format("scenario {}: planner {}, objective {}, schedule {}, solved in {:.1f} ms\n", sc.name,
                                plan.planner, objective, part::schedule_name(sc.planner.schedule), plan.solve_ms);
  const int batch = part::effective_max_batch(sc.planner, sc.workload.in_flight);
  out += fmt::format("admission: {} requests in flight{}, {}\n\n",
                     sc.workload.in_flight,
                     workload.arrival == part::Arrival::saturate ? " (saturate: unlimited demand)"
                     : part::closed_loop(workload) && workload.in_flight > sc.workload.in_flight
                         ? fmt::format(" of {} users (the others wait in front)", workload.in_flight)
                         : "",
                     batch > 1 ? fmt::format("stage batches of up to {} decode steps", batch)
                               : std::string("one decode step at a time per stage"));
  out.insert(out.size() - 1, request_line(cost));
  // A replicated plan: one table row per stage of every replica, the replica in the first column.
  const bool replicated = !plan.replicas.empty();
  std::vector<std::string> header{"stage",      "device",    "nodes",     "layers",
                                  "prefill_ms", "decode_ms", "memory_GB", "of_GB"};
  if (replicated) header.insert(header.begin(), "replica");
  al::cli::Table t(header);
  auto add_stages = [&](const std::vector<part::Stage>& stages, const std::string& replica) {
    for (size_t s = 0; s < stages.size(); ++s) {
      const auto& st = stages[s];
      std::vector<std::string> row{std::to_string(s),
                                   sc.devices[st.device].name,
                                   node_span(cost, st),
                                   fmt::format("{}-{}", st.first_node, st.last_node),
                                   fmt::format("{:.1f}", st.prefill_ms),
                                   fmt::format("{:.1f}", st.decode_ms),
                                   gb(st.memory_bytes),
                                   gb(sc.devices[st.device].mem_bytes)};
      if (replicated) row.insert(row.begin(), replica);
      t.add(row);
    }
  };
  const bool compact = replicated && static_cast<int>(sc.devices.size()) >= part::kCompactDevices;
  if (compact) {
    // One row per replica: its stages' devices and cuts in one line each.
    al::cli::Table c({"replica", "stages", "devices", "layers", "in_flight", "requests", "requests/s"});
    for (size_t r = 0; r < plan.replicas.size(); ++r) {
      const auto& rep = plan.replicas[r];
      std::string devices, layers;
      for (const auto& st : rep.stages) {
        devices += (devices.empty() ? "" : ",") + sc.devices[st.device].name;
        layers += (layers.empty() ? "" : ",") + fmt::format("{}-{}", st.first_node, st.last_node);
      }
      c.add({std::to_string(r), std::to_string(rep.stages.size()), devices, layers, std::to_string(rep.in_flight),
             std::to_string(rep.requests), fmt::format("{:.4f}", rep.predicted.throughput_rps)});
    }
    out += c.str();
  } else {
    if (!replicated) add_stages(plan.stages, "");
    for (size_t r = 0; r < plan.replicas.size(); ++r) add_stages(plan.replicas[r].stages, std::to_string(r));
    out += t.str();
  }
  for (size_t r = 0; r < plan.replicas.size() && !compact; ++r) {
    const auto& rep = plan.replicas[r];
    out += fmt::format("{}replica {}: {} in flight, {} requests, {:.4f} requests/s\n", r == 0 ? "\n" : "", r,
                       rep.in_flight, rep.requests, rep.predicted.throughput_rps);
  }
  const auto& pr = plan.predicted;
  out +=
      fmt::format("\npredicted: {:.4f} requests/s, {:.2f} tokens/s, bottleneck {:.1f} ms/request, latency {:.1f} ms\n",
                  pr.throughput_rps, pr.tokens_per_s, pr.bottleneck_ms, pr.latency_ms);
  if (pr.ttft_p50_ms > 0) {
    out += fmt::format("time to first token p50 {:.1f} ms, p99 {:.1f} ms; per output token p50 {:.2f} ms, p99 {:.2f} ms\n",
                       pr.ttft_p50_ms, pr.ttft_p99_ms, pr.tpot_p50_ms, pr.tpot_p99_ms);
  }
  if (plan.upper_bound_rps > 0) {
    out += fmt::format("certificate: no {} at this admission limit, one decode step at a time per stage, exceeds "
                       "{:.4f} requests/s; gap {:.1f} %\n",
                       plan.bound_kind == "one pipeline" ? "one-pipeline plan" : "plan of any kind", plan.upper_bound_rps,
                       100.0 * (1.0 - pr.throughput_rps / plan.upper_bound_rps));
  }
  if (uniform) {
    out += fmt::format("vs uniform: {:.3f}x throughput (uniform {:.4f} requests/s)\n",
                       pr.throughput_rps / uniform->predicted.throughput_rps, uniform->predicted.throughput_rps);
  } else {
    out += fmt::format("vs uniform: uniform is infeasible ({})\n", uniform.error().message);
  }
  if (!plan.backups.empty()) {
    for (const auto& b : plan.backups) {
      std::string covers;
      for (int c : b.covers) covers += (covers.empty() ? "" : ",") + std::to_string(c);
      out += fmt::format("backup: {} holds stages {} ({} GB)\n", sc.devices[b.device].name, covers, gb(b.memory_bytes));
    }
  }
  return out;
}

int cmd_plan(const std::string& file, const std::string& planner, const std::string& objective,
             const std::string& format, const std::string& output, const std::vector<std::string>& profiles) {
  auto problem = part::load_problem(file);
  if (!problem) return al::cli::report(problem.error(), "adaptlink-sim");
  if (auto st = part::apply_profiles(profiles, *(*problem)->cost); !st)
    return al::cli::report(st.error(), "adaptlink-sim");
  const auto& p = **problem;
  auto obj = p.scenario.planner.objective;
  if (objective == "throughput") obj = part::Objective::throughput;
  if (objective == "latency") obj = part::Objective::latency;
  const std::string name = planner.empty() ? p.scenario.planner.name : planner;
  auto plan = part::make_plan(*p.cost, name, obj);
  if (!plan) {
    auto e = plan.error();
    e.file = file;
    return al::cli::report(e, "adaptlink-sim");
  }
  const part::PlanCost runs(*p.cost, *plan);  // its admission limit's KV reservation, its batch limit
  std::string text;
  if (format == "json") {
    text = part::to_json(*plan, runs.get()).dump(2) + "\n";
  } else {
    text = plan_table(*plan, runs.get(), p.scenario.workload, part::make_plan(*p.cost, "uniform", obj));
  }
  if (auto st = al::cli::write_output(output, text); !st) return al::cli::report(st.error(), "adaptlink-sim");
  return al::cli::kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"adaptlink-sim: plan and simulate LLaVA inference split over heterogeneous edge devices"};
  app.require_subcommand(1);
  std::function<int()> action;

  std::string file, format = "text", planner, objective, output;
  std::vector<std::string> profiles;
  auto* validate = app.add_subcommand("validate", "Check a scenario file and that the model fits its devices");
  validate->add_option("scenario", file, "Scenario TOML file")->required();
  validate->add_option("--format", format, "text | json")->check(CLI::IsMember({"text", "json"}));
  validate->callback([&] { action = [&] { return cmd_validate(file, format); }; });

  auto* plan = app.add_subcommand("plan", "Partition the model over the scenario's devices and predict performance");
  plan->add_option("scenario", file, "Scenario TOML file")->required();
  plan->add_option("--planner", planner, al::cli::planner_choices() + " (default: the scenario's [planner].name)");
  plan->add_option("--objective", objective, "throughput | latency (default: the scenario's)")
      ->check(CLI::IsMember({"throughput", "latency"}));
  plan->add_option("--format", format, "table | json")->check(CLI::IsMember({"table", "text", "json"}));
  plan->add_option("-o,--output", output, "Write the plan to FILE instead of stdout");
  plan->add_option("--profile", profiles,
                   "Measured per-node times (JSON, adaptlink-run profile; sim/README.md); "
                   "repeatable");
  plan->callback([&] { action = [&] { return cmd_plan(file, planner, objective, format, output, profiles); }; });

#ifdef ADAPTLINK_WITH_SIM
  add_sim_commands(app, action);
#endif

  if (auto done = al::cli::parse_args(app, argc, argv, "adaptlink-sim")) return *done;
  return al::cli::flush_output(action ? action() : al::cli::kExitBadInput, "adaptlink-sim");
}

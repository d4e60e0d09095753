// Shared helpers of the simulator tests: bundled scenarios, problems with an edited workload, and the closed
// forms of partition/plan.hpp recomputed here from CostModel numbers (independently of plan.cpp).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "adaptlink/planner/planner.hpp"
#include "adaptlink/partition/problem.hpp"

namespace adaptlink::sim::testing {

namespace part = adaptlink::partition;
namespace runtime = adaptlink::runtime;

inline std::filesystem::path source_dir() { return ADAPTLINK_SOURCE_DIR; }

inline std::vector<std::filesystem::path> bundled_scenarios() {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(source_dir() / "scenarios")) {
    if (e.path().extension() == ".toml" && e.path().filename() != "devices.toml") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

inline part::Scenario load(const std::filesystem::path& file) {
  auto sc = part::load_scenario(file);
  if (!sc) ADD_FAILURE() << sc.error().to_string();
  return std::move(*sc);
}

// The closed forms below (and evaluate()'s in partition/plan.hpp) are exact for stages that run one decode step at a
// time; a batched stage's time depends on the batches the run forms. Tests of those forms run unbatched.
inline part::Scenario unbatched(part::Scenario scenario) {
  scenario.planner.max_batch = 1;
  return scenario;
}

inline std::unique_ptr<part::Problem> problem(part::Scenario scenario) { return part::make_problem(std::move(scenario)); }

inline part::Plan plan(const part::Problem& p, const std::string& planner) {
  auto made = part::make_plan(*p.cost, planner, part::Objective::throughput);
  if (!made) ADD_FAILURE() << planner << ": " << made.error().to_string();
  return std::move(*made);
}

inline int text_stage(const part::CostModel& cost, const part::Plan& plan) {
  const int te = cost.graph().text_embed_index();
  for (size_t s = 0; s < plan.stages.size(); ++s) {
    if (plan.stages[s].first_node <= te && te <= plan.stages[s].last_node) return static_cast<int>(s);
  }
  return -1;
}

// Latency of one request alone: every stage's compute (prefill, then one decode step per output token with
// the growing context, for the stages from the text stage on) plus every transfer's full time.
inline double alone_ms(const part::CostModel& cost, const part::Plan& plan) {
  const auto& g = cost.graph();
  const auto& shape = cost.shape();
  const int steps = shape.output_tokens;
  const int prefill_tokens = g.prefill_tokens(shape);
  const int ts = text_stage(cost, plan);
  const int last = static_cast<int>(plan.stages.size()) - 1;
  double ms = 0;
  for (int s = 0; s <= last; ++s) {
    const auto& st = plan.stages[static_cast<size_t>(s)];
    ms += cost.prefill_ms(st.device, st.first_node, st.last_node);
    if (s >= ts) {
      for (int k = 0; k < steps; ++k) ms += cost.decode_step_ms(st.device, st.first_node, st.last_node, prefill_tokens + k);
    }
    if (s < last) {
      const int to = plan.stages[static_cast<size_t>(s) + 1].device;
      ms += cost.transfer_ms(st.device, to, g.prefill_out_bytes(st.last_node, shape));
      if (s >= ts) ms += steps * cost.transfer_ms(st.device, to, g.decode_out_bytes(st.last_node));
    }
  }
  if (ts != last) ms += steps * cost.transfer_ms(plan.stages.back().device, plan.stages[static_cast<size_t>(ts)].device, 4.0);
  return ms;
}

// Busiest resource per request (ms): a stage's compute, or a link's serialisation time.
inline double bottleneck_ms(const part::CostModel& cost, const part::Plan& plan) {
  const auto& g = cost.graph();
  const auto& shape = cost.shape();
  const int steps = shape.output_tokens;
  const int ts = text_stage(cost, plan);
  const int last = static_cast<int>(plan.stages.size()) - 1;
  std::vector<double> link_ms(static_cast<size_t>(cost.num_links()), 0.0);
  double worst = 0;
  auto add = [&](int from, int to, double bytes, double count) {
    if (bytes <= 0) return;
    for (const auto& hop : cost.route(from, to)) link_ms[static_cast<size_t>(hop.link)] += count * bytes * 8.0 / (hop.spec.bandwidth_mbps * 1e3);
  };
  for (int s = 0; s <= last; ++s) {
    const auto& st = plan.stages[static_cast<size_t>(s)];
    worst = std::max(worst, cost.prefill_ms(st.device, st.first_node, st.last_node) +
                                (s >= ts ? cost.decode_total_ms(st.device, st.first_node, st.last_node) : 0.0));
    if (s < last) {
      const int to = plan.stages[static_cast<size_t>(s) + 1].device;
      add(st.device, to, g.prefill_out_bytes(st.last_node, shape), 1);
      if (s >= ts) add(st.device, to, g.decode_out_bytes(st.last_node), steps);
    }
  }
  if (ts != last) add(plan.stages.back().device, plan.stages[static_cast<size_t>(ts)].device, 4.0, steps);
  for (double l : link_ms) worst = std::max(worst, l);
  return worst;
}

}  // namespace adaptlink::sim::testing

// suite-bound: bench/run-suite's helper. For each scenario file it prints (JSON, one object):
//
//   bound_rps      the aggregate-compute upper bound: the sum over active devices of the throughput
//                  each would reach running the whole model alone, with free communication and
//                  unlimited memory, i.e. sum_d 1000 / (prefill_ms(d, all) + decode_total_ms(d, all))
//   devices        each active device's alone_rps (the terms of that sum), and its batched_alone_rps at best_batch
//   batched_bound_rps  the same with batched decode, each device serving whole requests alone (free communication,
//                  the active devices' memory pooled): the requests in flight at once are at most B, those whose
//                  KV caches at full context fit in that memory beside one copy of the weights (at most 256; 1 when
//                  not even one fits), and they are shared out among the devices: the best of
//                  sum_d 1000 / (prefill_ms(d, all) + decode_total_share_ms(d, all, b_d)) over b_d >= 0 with
//                  sum_d b_d <= B (a device with b_d = 0 serves nobody), found exactly by a knapsack over B. A
//                  pipeline meets the same limit: each request's current step is at one stage, so the batches the
//                  stages run at one time sum to at most the requests in flight. best_batch is b_d
//   batched_bound_every_device_rps  the looser figure the bound had before: every device at batch B at once (only
//                  a split of each step over all devices, tensor-parallel style, with free communication, could
//                  reach it; it counts B KV caches per device)
//   arithmetic_bound_rps  sum_d tflops_d / FLOPs per request (prefill and every decode step): no plan, batch or
//                  memory gets past it
//   min_link_mbps  the slowest link an activation may cross (access links in a star, pair links in a mesh)
//   comm_share     how long one request's activations at a decoder cut (prefill + one per decode step)
//                  keep the slowest link busy, relative to the bound's time per request 1000 / bound_rps;
//                  doubled in a star, where a stage's access link carries its incoming and outgoing cut
//   compute_bound  min_link_mbps >= 900 (gigabit) and comm_share < 0.05: the network cannot keep a
//                  planner from the bound, so reaching it is a matter of balancing compute and memory
//   solve_ms_min   with --time: per planner, the fastest of repeated make_plan calls (repeated until
//                  --min-time-ms have passed, at least twice), for solver-time ratios that do not depend
//                  on one noisy measurement. A planner that answers with an error (no feasible plan) is
//                  timed all the same: finding that out is its solve.
//
// Usage: suite-bound [--time uniform,adaptlink,...] [--min-time-ms 20] SCENARIO...
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "adaptlink/planner/planner.hpp"
#include "adaptlink/partition/problem.hpp"

namespace part = adaptlink::partition;

namespace {

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

nlohmann::json describe(const std::string& file, const std::vector<std::string>& planners, double min_time_ms) {
  auto problem = part::load_problem(file);
  if (!problem) return {{"file", file}, {"error", problem.error().to_string()}};
  const auto& p = **problem;
  const auto& cost = *p.cost;
  const auto& sc = p.scenario;
  const int last = cost.num_nodes() - 1;
  const auto active = part::active_devices(sc);

  double bound_rps = 0, batched_bound_rps = 0, arithmetic_bound_rps = 0;
  const auto& graph = cost.graph();
  const int prefill_tokens = graph.prefill_tokens(cost.shape());
  double request_flops = 0;
  for (int i = 0; i <= last; ++i) {
    request_flops += graph.prefill_cost(i, cost.shape()).flops;
    for (int k = 0; k < cost.shape().output_tokens; ++k) request_flops += graph.decode_cost(i, prefill_tokens + k).flops;
  }
  const double kv_per_request = cost.kv_bytes(0, last) / std::max(1, sc.workload.in_flight);
  double free = -cost.weight_bytes(0, last) - cost.buffer_bytes(0, last);
  for (int d : active) free += sc.devices[d].mem_bytes;
  const int batch = free <= 0 || kv_per_request <= 0
                        ? 1
                        : static_cast<int>(std::clamp(std::floor(free / kv_per_request), 1.0, 256.0));
  // Each device alone at each batch b = 0..B (b = 0: it serves nobody), then the best sharing of B (knapsack).
  std::vector<std::vector<double>> rate(active.size(), std::vector<double>(static_cast<size_t>(batch) + 1, 0.0));
  for (size_t i = 0; i < active.size(); ++i) {
    const int d = active[i];
    for (int b = 1; b <= batch; ++b) {
      rate[i][static_cast<size_t>(b)] =
          1e3 / (cost.prefill_ms(d, 0, last) + cost.decode_total_share_ms(d, 0, last, b));
    }
  }
  // best[i][k]: the most the first i devices serve with k requests in flight among them; take[i][k]: device i-1's b.
  std::vector<std::vector<double>> best(active.size() + 1, std::vector<double>(static_cast<size_t>(batch) + 1, 0.0));
  std::vector<std::vector<int>> take(active.size() + 1, std::vector<int>(static_cast<size_t>(batch) + 1, 0));
  for (size_t i = 1; i <= active.size(); ++i) {
    for (int k = 0; k <= batch; ++k) {
      for (int b = 0; b <= k; ++b) {
        const double v = best[i - 1][static_cast<size_t>(k - b)] + rate[i - 1][static_cast<size_t>(b)];
        if (v > best[i][static_cast<size_t>(k)]) {
          best[i][static_cast<size_t>(k)] = v;
          take[i][static_cast<size_t>(k)] = b;
        }
      }
    }
  }
  batched_bound_rps = best[active.size()][static_cast<size_t>(batch)];
  std::vector<int> share(active.size(), 0);
  for (size_t i = active.size(), k = static_cast<size_t>(batch); i > 0; --i) {
    share[i - 1] = take[i][k];
    k -= static_cast<size_t>(share[i - 1]);
  }
  double every_device_rps = 0;
  nlohmann::json devices = nlohmann::json::array();
  for (size_t i = 0; i < active.size(); ++i) {
    const int d = active[i];
    const double alone_ms = cost.prefill_ms(d, 0, last) + cost.decode_total_ms(d, 0, last);
    bound_rps += 1e3 / alone_ms;
    every_device_rps += rate[i][static_cast<size_t>(batch)];
    arithmetic_bound_rps += sc.devices[d].tflops * 1e12 / request_flops;
    devices.push_back({{"name", sc.devices[d].name},
                       {"alone_rps", 1e3 / alone_ms},
                       {"batched_alone_rps", rate[i][static_cast<size_t>(share[i])]},
                       {"best_batch", share[i]}});
  }

  double min_mbps = std::numeric_limits<double>::infinity();
  const auto& net = sc.network;
  for (size_t a = 0; a < active.size(); ++a) {
    if (net.topology == part::Topology::star) min_mbps = std::min(min_mbps, net.access_link(active[a]).bandwidth_mbps);
    for (size_t b = a + 1; b < active.size(); ++b) {
      if (auto l = net.direct_link(active[a], active[b])) min_mbps = std::min(min_mbps, l->bandwidth_mbps);
    }
  }
  const int cut = cost.graph().first_decoder_index();
  const double cut_bytes = cost.graph().prefill_out_bytes(cut, cost.shape()) +
                           cost.shape().output_tokens * cost.graph().decode_out_bytes(cut);
  const double cut_busy_ms = cut_bytes * 8.0 / (min_mbps * 1e6) * 1e3;
  const double hops = net.topology == part::Topology::star ? 2.0 : 1.0;
  const double comm_share = hops * cut_busy_ms / (1e3 / bound_rps);

  nlohmann::json out{{"file", file},
                     {"name", sc.name},
                     {"bound_rps", bound_rps},
                     {"batched_bound_rps", batched_bound_rps},
                     {"batched_bound_every_device_rps", every_device_rps},
                     {"batch_limit", batch},
                     {"arithmetic_bound_rps", arithmetic_bound_rps},
                     {"devices", devices},
                     {"min_link_mbps", min_mbps},
                     {"comm_share", comm_share},
                     {"compute_bound", min_mbps >= 900 && comm_share < 0.05}};

  if (!planners.empty()) {
    nlohmann::json timing = nlohmann::json::object();
    for (const auto& name : planners) {
      auto planner = part::make_planner(name);
      if (!planner) return {{"file", file}, {"error", planner.error().to_string()}};
      double best = std::numeric_limits<double>::infinity();
      double spent = 0;
      for (int runs = 0; runs < 2 || spent < min_time_ms; ++runs) {
        const auto start = std::chrono::steady_clock::now();
        auto plan = (*planner)->plan(cost, part::Objective::throughput);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        best = std::min(best, ms);
        spent += ms;
      }
      timing[name] = best;
    }
    out["solve_ms_min"] = timing;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> planners, files;
  double min_time_ms = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--time" || arg == "--min-time-ms") && i + 1 >= argc) {
      std::cerr << "suite-bound: " << arg << " needs a value\n";
      return 2;
    }
    if (arg == "--time") {
      planners = split(argv[++i]);
    } else if (arg == "--min-time-ms") {
      min_time_ms = std::stod(argv[++i]);
    } else if (arg == "-h" || arg == "--help") {
      std::cout << "usage: suite-bound [--time PLANNER,...] [--min-time-ms MS] SCENARIO...\n";
      return 0;
    } else {
      files.push_back(arg);
    }
  }
  nlohmann::json all = nlohmann::json::array();
  int status = 0;
  for (const auto& f : files) {
    all.push_back(describe(f, planners, min_time_ms));
    if (all.back().contains("error")) status = 2;
  }
  std::cout << nlohmann::json{{"scenarios", all}}.dump(2) << "\n";
  return status;
}

// Simulator speed: stage executions per second of wall time and peak memory, on an 8-stage pipeline
// (eight Jetson Orin NX on a gigabit star, llava-1.5-7b, uniform plan, 128 output tokens, 16 in flight).
// Target (issue 4): >= 100,000 stage executions per second (1,000 requests x 128 tokens x 8 stages in <= 10 s)
// on a 2-core machine; RSS flat in the number of requests (1k vs 10k).
//   build/bench/bench_sim_throughput --benchmark_out=bench/results/sim_speed.json --benchmark_out_format=json
#include <benchmark/benchmark.h>

#include <string>

#include "adaptlink/planner/planner.hpp"
#include "adaptlink/partition/problem.hpp"
#include "adaptlink/sim/simulator.hpp"

namespace part = adaptlink::partition;

namespace {

std::unique_ptr<part::Problem> eight_stages() {
  std::string text = R"(name = "bench-8x-nx"
[model]
preset = "llava-1.5-7b"
dtype = "fp16"
[network]
topology = "star"
bandwidth_mbps = 940
latency_ms = 0.2
[workload]
requests = 1000
arrival = "closed"
in_flight = 16
images_per_request = 1
prompt_tokens = 64
output_tokens = 128
[planner]
name = "uniform"
)";
  for (int d = 0; d < 8; ++d) {
    text += "[[devices]]\nname = \"nx" + std::to_string(d) + "\"\nkind = \"jetson-orin-nx-16gb\"\n";
  }
  auto scenario = part::parse_scenario(text, "bench-8x-nx.toml");
  if (!scenario) throw std::runtime_error(scenario.error().to_string());
  return part::make_problem(std::move(*scenario));
}

void BM_SimulateEightStages(benchmark::State& state) {
  auto problem = eight_stages();
  auto plan = part::make_plan(*problem->cost, "uniform", part::Objective::throughput);
  if (!plan) {
    state.SkipWithError(plan.error().to_string().c_str());
    return;
  }
  adaptlink::sim::SimOptions options;
  options.max_requests = state.range(0);
  adaptlink::sim::SimStats stats;
  for (auto _ : state) {
    auto result = adaptlink::sim::run_simulation(*problem->cost, *plan, options);
    if (!result) {
      state.SkipWithError(result.error().to_string().c_str());
      return;
    }
    stats = result->stats;
    state.SetIterationTime(stats.wall_s);
  }
  state.counters["stages"] = static_cast<double>(plan->stages.size());
  state.counters["stage_executions"] = static_cast<double>(stats.stage_executions);
  state.counters["link_transfers"] = static_cast<double>(stats.transfers);
  state.counters["executions_per_s"] = static_cast<double>(stats.stage_executions) / stats.wall_s;
  state.counters["sim_wall_s"] = stats.wall_s;
  state.counters["simulated_s"] = stats.sim_time_s;
  state.counters["peak_rss_mb"] = static_cast<double>(stats.peak_rss_kb) / 1024.0;
}

}  // namespace

BENCHMARK(BM_SimulateEightStages)->Arg(1000)->Arg(10000)->Iterations(1)->UseManualTime()->Unit(benchmark::kSecond);

BENCHMARK_MAIN();

// Solve time of the planners on growing device sets (llava-1.5-13b, fp16, Wi-Fi star and gigabit mesh).
// Targets (issue 3): adaptlink on 8 devices < 100 ms, on 16 devices < 1 s, on a 2-core machine.
//   build/bench/bench_planner --benchmark_format=json > bench/results/planner_solve.json
#include <benchmark/benchmark.h>

#include <chrono>

#include "adaptlink/planner/planner.hpp"
#include "adaptlink/partition/problem.hpp"

namespace part = adaptlink::partition;

namespace {

// A mixed fleet cycling through the catalogue (all distinct enough to defeat de-duplication:
// each device's access link differs slightly).
std::unique_ptr<part::Problem> fleet(int n, part::Topology topology, bool pair_links = false) {
  part::Scenario s;
  s.name = "fleet-" + std::to_string(n);
  auto preset = adaptlink::models::load_preset("llava-1.5-13b");
  s.model.preset = "llava-1.5-13b";
  s.model.llava = *preset;
  s.model.dtype = adaptlink::models::Dtype::fp16;
  const auto& catalogue = part::builtin_catalogue();
  const char* kinds[] = {"jetson-agx-orin-64gb", "jetson-orin-nx-16gb", "jetson-agx-orin-32gb", "laptop-rtx4060",
                         "jetson-orin-nano-8gb", "jetson-xavier-nx-8gb", "snapdragon-8-gen3-phone",
                         "raspberry-pi-5-8gb"};
  for (int d = 0; d < n; ++d) {
    const std::string kind = kinds[d % 8];
    for (const auto& e : catalogue) {
      if (e.kind != kind) continue;
      part::Device dev;
      dev.name = kind + "-" + std::to_string(d);
      dev.kind = kind;
      dev.tflops = e.tflops;
      dev.mem_bytes = e.mem_gb * 1e9;
      dev.mem_bw_gbs = e.mem_bw_gbs;
      s.devices.push_back(dev);
    }
  }
  s.network.topology = topology;
  s.network.default_link = topology == part::Topology::star ? part::Link{400, 3} : part::Link{940, 0.2};
  for (int d = 0; d < n && topology == part::Topology::star; ++d) s.network.access[d] = {300.0 + 20 * d, 3};
  // Per-pair links (a mesh of unequal cables): the DP must then follow the previous device.
  for (int a = 0; a < n && pair_links; ++a) {
    for (int b = a + 1; b < n; ++b) s.network.direct[{a, b}] = {100.0 + 90 * ((a * 7 + b * 3) % 10), 0.2 + 0.1 * (a % 3)};
  }
  return part::make_problem(std::move(s));
}

// Times the search alone (the planner's plan(), what solve_ms reports); the replayed prediction
// that make_plan() adds afterwards for the report is timed once and shown as a counter.
void solve(benchmark::State& state, const char* planner, part::Topology topology, bool pair_links = false) {
  const auto problem = fleet(static_cast<int>(state.range(0)), topology, pair_links);
  auto p = part::make_planner(planner);
  double rps = 0;
  for (auto _ : state) {
    auto plan = (*p)->plan(*problem->cost, part::Objective::throughput);
    if (!plan) {
      state.SkipWithError(plan.error().message.c_str());
      return;
    }
    benchmark::DoNotOptimize(plan);
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto plan = part::make_plan(*problem->cost, planner, part::Objective::throughput);
  const auto t1 = std::chrono::steady_clock::now();
  rps = plan->predicted.throughput_rps;
  state.counters["make_plan_ms"] = std::chrono::duration<double, std::milli>(t1 - t0).count();
  state.counters["throughput_rps"] = rps;
  state.counters["devices"] = static_cast<double>(state.range(0));
}

void BM_adaptlink_star(benchmark::State& state) { solve(state, "adaptlink", part::Topology::star); }
void BM_adaptlink_mesh(benchmark::State& state) { solve(state, "adaptlink", part::Topology::mesh); }
void BM_adaptlink_mesh_pair_links(benchmark::State& state) {
  solve(state, "adaptlink", part::Topology::mesh, true);
}
void BM_uniform_star(benchmark::State& state) { solve(state, "uniform", part::Topology::star); }
void BM_edgeshard_star(benchmark::State& state) { solve(state, "edgeshard", part::Topology::star); }
void BM_pipeedge_star(benchmark::State& state) { solve(state, "pipeedge", part::Topology::star); }

}  // namespace

BENCHMARK(BM_adaptlink_star)->Arg(4)->Arg(8)->Arg(16)->Unit(benchmark::kMillisecond)->MinTime(0.5);
BENCHMARK(BM_adaptlink_mesh)->Arg(4)->Arg(8)->Arg(16)->Unit(benchmark::kMillisecond)->MinTime(0.5);
BENCHMARK(BM_adaptlink_mesh_pair_links)->Arg(4)->Arg(8)->Arg(16)->Unit(benchmark::kMillisecond)->MinTime(0.5);
BENCHMARK(BM_uniform_star)->Arg(8)->Arg(16)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_edgeshard_star)->Arg(8)->Arg(16)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_pipeedge_star)->Arg(8)->Arg(16)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();

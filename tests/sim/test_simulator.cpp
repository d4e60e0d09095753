// The simulator's behaviour beyond the closed forms: determinism, traces, options, errors, the compare claim.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "adaptlink/planner/replicas.hpp"
#include "adaptlink/runtime/report.hpp"
#include "adaptlink/sim/simulator.hpp"
#include "adaptlink/sim/sweep.hpp"
#include "helpers.hpp"

namespace adaptlink::sim::testing {
namespace {

std::filesystem::path temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("adaptlink-test-sim-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

TEST(Simulator, SameSeedGivesByteIdenticalReports) {
  for (const auto* file : {"jetson-quartet.toml", "phone-laptop-pi.toml"}) {
    auto p = problem(load(source_dir() / "scenarios" / file));
    auto pl = plan(*p, "adaptlink");
    SimOptions options;
    options.seed = 7;
    auto a = simulate(*p->cost, pl, options);
    auto b = simulate(*p->cost, pl, options);
    ASSERT_TRUE(a && b);
    EXPECT_EQ(runtime::to_json(*a).dump(2), runtime::to_json(*b).dump(2)) << file;
  }
}

TEST(Simulator, SeedChangesPoissonArrivals) {
  auto p = problem(load(source_dir() / "scenarios" / "phone-laptop-pi.toml"));
  auto pl = plan(*p, "adaptlink");
  SimOptions a_opts, b_opts;
  a_opts.seed = 1;
  b_opts.seed = 2;
  auto a = simulate(*p->cost, pl, a_opts);
  auto b = simulate(*p->cost, pl, b_opts);
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->latency_ms.p50, b->latency_ms.p50);
}

TEST(Simulator, ReportHasEveryDeviceAndSaneNumbers) {
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  auto pl = plan(*p, "uniform");
  auto r = simulate(*p->cost, pl);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->scenario, "jetson-quartet");
  EXPECT_EQ(r->backend, "sim");
  EXPECT_EQ(r->planner, "uniform");
  EXPECT_EQ(r->requests_completed, p->scenario.workload.requests);
  ASSERT_EQ(r->device_utilization.size(), p->scenario.devices.size());
  for (size_t d = 0; d < p->scenario.devices.size(); ++d) {
    EXPECT_EQ(r->device_utilization[d].first, p->scenario.devices[d].name);
    EXPECT_GE(r->device_utilization[d].second, 0.0);
    EXPECT_LE(r->device_utilization[d].second, 1.0);
  }
  EXPECT_GT(r->bubble_fraction, 0.0);
  EXPECT_LT(r->bubble_fraction, 1.0);
  EXPECT_LE(r->latency_ms.p50, r->latency_ms.p95);
  EXPECT_LE(r->latency_ms.p95, r->latency_ms.p99);
  auto j = runtime::to_json(*r);
  for (const auto* key : {"scenario", "backend", "planner", "requests_completed", "requests_lost", "throughput_rps",
                          "tokens_per_s", "latency_ms", "device_utilization", "bubble_fraction", "faults"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  auto back = runtime::report_from_json(j);
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_EQ(runtime::to_json(*back).dump(), j.dump());
}

TEST(Simulator, MaxRequestsOverridesTheWorkload) {
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  auto pl = plan(*p, "adaptlink");
  SimOptions options;
  options.max_requests = 9;
  auto result = run_simulation(*p->cost, pl, options);
  ASSERT_TRUE(result);
  EXPECT_EQ(result->report.requests_completed, 9);
  EXPECT_GT(result->stats.stage_executions, 0);
  EXPECT_GT(result->stats.peak_rss_kb, 0);
}

TEST(Simulator, ProgressIsReportedInTheCallersProcess) {
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  auto pl = plan(*p, "adaptlink");
  long long calls = 0, last = 0;
  SimOptions options;
  options.progress = [&](const SimProgress& pr) {
    ++calls;
    EXPECT_GE(pr.completed, last);
    last = pr.completed;
    EXPECT_EQ(pr.total, p->scenario.workload.requests);
  };
  ASSERT_TRUE(simulate(*p->cost, pl, options));
  EXPECT_GT(calls, 10);
  EXPECT_EQ(last, p->scenario.workload.requests);
}

// Simulates `requests` requests of the plan with a trace: the result and the trace (null when the run failed).
struct Traced {
  SimResult result;
  nlohmann::json trace;
};
Traced traced_run(const part::Problem& p, const part::Plan& pl, long long requests, const std::filesystem::path& dir) {
  SimOptions options;
  options.max_requests = requests;
  options.trace_path = dir / "trace.json";
  auto result = run_simulation(*p.cost, pl, options);
  if (!result) {
    ADD_FAILURE() << result.error().to_string();
    return {};
  }
  std::ifstream in(options.trace_path);
  return {std::move(*result), nlohmann::json::parse(in)};
}

TEST(Simulator, TraceHasOneRowPerDeviceAndLinkAndOpensAsJson) {
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  const auto pl = plan(*p, "adaptlink");
  const auto dir = temp_dir("trace");
  auto [run, trace] = traced_run(*p, pl, 6, dir);
  const auto* result = &run;
  ASSERT_TRUE(trace["traceEvents"].is_array());
  std::set<std::string> device_rows, link_rows;
  long long slices = 0, compute = 0;
  std::map<std::pair<int, int>, std::string> names;
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] == "M" && e["name"] == "thread_name") names[{e["pid"], e["tid"]}] = e["args"]["name"];
  }
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] != "X") continue;
    ++slices;
    EXPECT_GE(e["dur"].get<double>(), 0.0);
    const auto row = names.at({e["pid"], e["tid"]});
    if (e["pid"] == 1) {
      device_rows.insert(row);
      ++compute;
    } else {
      link_rows.insert(row);
    }
  }
  EXPECT_EQ(slices, result->stats.trace_events);
  EXPECT_EQ(compute, result->stats.stage_executions);
  EXPECT_EQ(device_rows.size(), pl.stages.size());
  EXPECT_EQ(link_rows.count("agx<->ap"), 1u);
  EXPECT_FALSE(trace["otherData"]["truncated"].get<bool>());
  std::filesystem::remove_all(dir);
}

TEST(Simulator, TraceIsLimitedToAWindowAndABudget) {
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  auto pl = plan(*p, "adaptlink");
  const auto dir = temp_dir("trace-window");
  SimOptions options;
  options.max_requests = 12;
  options.trace_path = dir / "trace.json";
  options.trace_from_s = 10;
  options.trace_until_s = 20;
  auto result = run_simulation(*p->cost, pl, options);
  ASSERT_TRUE(result);
  std::ifstream in(options.trace_path);
  auto trace = nlohmann::json::parse(in);
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] != "X") continue;
    EXPECT_GE(e["ts"].get<double>(), 10e6 - 1);
    EXPECT_LE(e["ts"].get<double>(), 20e6 + 1);
  }
  options.trace_from_s = 0;
  options.trace_until_s = 1e9;
  options.trace_max_events = 100;
  result = run_simulation(*p->cost, pl, options);
  ASSERT_TRUE(result);
  EXPECT_EQ(result->stats.trace_events, 100);
  std::ifstream in2(options.trace_path);
  trace = nlohmann::json::parse(in2);
  EXPECT_TRUE(trace["otherData"]["truncated"].get<bool>());
  std::filesystem::remove_all(dir);
}

TEST(Simulator, NetworkModelsAreSelectable) {
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  auto pl = plan(*p, "adaptlink");
  SimOptions options;
  options.max_requests = 8;
  auto exact = simulate(*p->cost, pl, options);
  options.network_model = "LV08";
  auto realistic = simulate(*p->cost, pl, options);
  ASSERT_TRUE(exact && realistic) << (realistic ? "" : realistic.error().to_string());
  // LV08 adds latency (x13.01) and scales bandwidth (x0.97): slower.
  EXPECT_GT(realistic->latency_ms.p50, exact->latency_ms.p50);
  options.network_model = "warp-drive";
  auto bad = simulate(*p->cost, pl, options);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("unknown network model"), std::string::npos);
}

TEST(Simulator, RejectsPlansThatDoNotCoverTheModel) {
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  auto pl = plan(*p, "adaptlink");
  auto broken = pl;
  broken.stages.pop_back();
  auto r = simulate(*p->cost, broken);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("covers nodes"), std::string::npos);
  broken = pl;
  broken.stages[0].device = 99;
  ASSERT_FALSE(simulate(*p->cost, broken));
  broken.stages.clear();
  ASSERT_FALSE(simulate(*p->cost, broken));
}

TEST(Simulator, RunsInProcessOnceWhenNotIsolated) {
  // Fork a child for this test: SimGrid allows one engine per process, and isolate=false uses ours.
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  auto pl = plan(*p, "adaptlink");
  SimOptions options;
  options.max_requests = 5;
  auto isolated = simulate(*p->cost, pl, options);
  ASSERT_TRUE(isolated);
  EXPECT_EXIT(
      {
        options.isolate = false;
        auto here = simulate(*p->cost, pl, options);
        std::_Exit(here && runtime::to_json(*here).dump() == runtime::to_json(*isolated).dump() ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

// The paper's claim, in simulation: adaptlink >= 1.37x uniform on the Jetson quartet.
TEST(Simulator, AdaptlinkBeatsUniformByThePapersFactorOnJetsonQuartet) {
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  auto uniform = simulate(*p->cost, plan(*p, "uniform"));
  auto adaptlink = simulate(*p->cost, plan(*p, "adaptlink"));
  ASSERT_TRUE(uniform && adaptlink);
  EXPECT_GE(adaptlink->throughput_rps / uniform->throughput_rps, 1.37)
      << adaptlink->throughput_rps << " vs " << uniform->throughput_rps;
}

TEST(Simulator, LockstepStartIsAvailable) {
  auto p = problem(unbatched(load(source_dir() / "scenarios" / "jetson-quartet.toml")));  // bound_rps bounds it
  auto pl = plan(*p, "adaptlink");
  SimOptions options;
  options.stagger_start = false;
  auto r = simulate(*p->cost, pl, options);
  ASSERT_TRUE(r);
  EXPECT_LE(r->throughput_rps, pl.predicted.bound_rps * 1.005);
  // Requests started together finish together.
  EXPECT_LT(r->latency_ms.p95 - r->latency_ms.p50, 0.05 * r->latency_ms.p50);
}

// --- replicated plans ----------------------------------------------------------------------------------------

std::filesystem::path suite(const std::string& file) { return source_dir() / "scenarios" / "suite" / file; }

part::Plan replicated_plan(const part::Problem& p) {
  auto pl = plan(p, "adaptlink");
  EXPECT_GE(pl.replicas.size(), 2u) << p.scenario.name << ": expected a replicated adaptlink plan";
  return pl;
}

// The simulated throughput of a replicated plan is what the planner predicts (partition::predict_replicated),
// as for one pipeline (the replay and the simulation agree to rounding: ~1e-13 on every suite scenario), and so
// is the mean latency over every request; every request is served and every stage device works.
TEST(SimulatorReplicas, ThroughputMatchesThePrediction) {
  for (const auto* file : {"pi-cluster-nx-gbe.toml", "homogeneous-agx2-mesh.toml"}) {
    auto p = problem(load(suite(file)));
    auto pl = replicated_plan(*p);
    if (pl.replicas.empty()) continue;
    auto r = run_simulation(*p->cost, pl);
    ASSERT_TRUE(r) << file << ": " << r.error().to_string();
    const auto& rep = r->report;
    EXPECT_EQ(rep.planner, "adaptlink");
    EXPECT_EQ(rep.scenario, p->scenario.name);
    EXPECT_EQ(rep.backend, "sim");
    EXPECT_NEAR(rep.throughput_rps / pl.predicted.throughput_rps, 1.0, 1e-6)
        << file << ": simulated " << rep.throughput_rps << " rps, predicted " << pl.predicted.throughput_rps;
    EXPECT_NEAR(rep.tokens_per_s, rep.throughput_rps * p->cost->shape().output_tokens, 1e-9);
    EXPECT_EQ(rep.requests_completed, p->scenario.workload.requests) << file;
    EXPECT_EQ(rep.requests_lost, 0) << file;
    EXPECT_EQ(r->latencies_ms.size(), static_cast<size_t>(rep.requests_completed));
    EXPECT_EQ(r->completions_s.size(), static_cast<size_t>(rep.requests_completed));
    double mean_ms = 0;
    for (double l : r->latencies_ms) mean_ms += l / static_cast<double>(r->latencies_ms.size());
    EXPECT_NEAR(mean_ms / pl.predicted.latency_ms, 1.0, 1e-6) << file << ": " << mean_ms << " vs " << pl.predicted.latency_ms;
    EXPECT_NEAR(rep.throughput_rps, runtime::steady_throughput(r->completions_s, p->scenario.workload.in_flight), 1e-12);
    ASSERT_EQ(rep.device_utilization.size(), p->scenario.devices.size());
    for (const auto& replica : pl.replicas) {
      for (const auto& st : replica.stages) {
        const auto& [name, u] = rep.device_utilization[static_cast<size_t>(st.device)];
        EXPECT_EQ(name, p->scenario.devices[static_cast<size_t>(st.device)].name);
        EXPECT_GT(u, 0.0) << file << ": " << name;
        EXPECT_LE(u, 1.0) << file << ": " << name;
      }
    }
    EXPECT_GE(rep.bubble_fraction, 0.0);
    EXPECT_LT(rep.bubble_fraction, 1.0);
  }
}

// Two identical devices, each holding the whole model: the plan runs one solo replica per device, and the
// simulated throughput is the sum of what each device serves alone.
TEST(SimulatorReplicas, SoloReplicasAddUp) {
  auto p = problem(load(suite("homogeneous-agx2-mesh.toml")));
  auto pl = replicated_plan(*p);
  ASSERT_EQ(pl.replicas.size(), 2u);
  const int last = p->cost->num_nodes() - 1;
  double alone_rps = 0;
  for (const auto& replica : pl.replicas) {
    ASSERT_EQ(replica.stages.size(), 1u);
    const int d = replica.stages.front().device;
    alone_rps += 1e3 / (p->cost->prefill_ms(d, 0, last) + p->cost->decode_total_ms(d, 0, last));
  }
  auto r = simulate(*p->cost, pl);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_NEAR(r->throughput_rps / alone_rps, 1.0, 1e-6) << r->throughput_rps << " vs " << alone_rps;
  EXPECT_LT(r->bubble_fraction, 0.01);
}

TEST(SimulatorReplicas, MaxRequestsIsSharedOutAndProgressCountsAll) {
  auto p = problem(load(suite("pi-cluster-nx-gbe.toml")));
  auto pl = replicated_plan(*p);
  SimOptions options;
  options.max_requests = 40;
  long long last = 0, total = 0;
  options.progress = [&](const SimProgress& pr) {
    EXPECT_GE(pr.completed, last);
    last = pr.completed;
    total = pr.total;
  };
  auto r = run_simulation(*p->cost, pl, options);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->report.requests_completed, 40);
  EXPECT_EQ(total, 40);
  EXPECT_EQ(last, 40);
  // Shared out as the planner shares out its replay of as many requests.
  auto replicas = pl.replicas;
  const auto predicted = part::predict_replicated(*p->cost, replicas, 40);
  EXPECT_NEAR(r->report.throughput_rps / predicted.throughput_rps, 1.0, 1e-6)
      << r->report.throughput_rps << " vs " << predicted.throughput_rps;
}

TEST(SimulatorReplicas, FaultsAreRefused) {
  auto p = problem(load(suite("pi-cluster-nx-gbe.toml")));
  auto pl = replicated_plan(*p);
  ASSERT_FALSE(pl.replicas.empty());
  SimOptions options;
  options.faults = true;
  part::Fault dropout;
  dropout.at_s = 1.0;
  dropout.device = p->scenario.devices[static_cast<size_t>(pl.replicas[0].stages[0].device)].name;
  dropout.kind = part::FaultKind::dropout;
  options.fault_list = std::vector<part::Fault>{dropout};
  auto r = run_simulation(*p->cost, pl, options);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("faults are not simulated on replicated plans"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("replicas = false"), std::string::npos) << r.error().message;
  // Faults on but none given: the plan runs.
  options.fault_list = std::vector<part::Fault>{};
  options.max_requests = 20;
  EXPECT_TRUE(run_simulation(*p->cost, pl, options));
}

TEST(SimulatorReplicas, SweepsRefuseReplicatedPlans) {
  auto p = problem(load(suite("pi-cluster-nx-gbe.toml")));
  auto pl = replicated_plan(*p);
  ASSERT_FALSE(pl.replicas.empty());
  SweepOptions options;
  options.dropout_rates_per_hour = {6};
  options.runs = 1;
  auto r = run_sweep(*p->cost, pl, options);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("replicas = false"), std::string::npos) << r.error().message;
}

TEST(SimulatorReplicas, TraceMergesEveryReplica) {
  auto p = problem(load(suite("pi-cluster-nx-gbe.toml")));
  auto pl = replicated_plan(*p);
  ASSERT_FALSE(pl.replicas.empty());
  const auto dir = temp_dir("trace-replicas");
  auto [run, trace] = traced_run(*p, pl, 20, dir);
  const auto* result = &run;
  ASSERT_TRUE(trace["traceEvents"].is_array());
  std::map<std::pair<int, int>, std::string> names;
  std::set<std::string> metadata;
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] != "M") continue;
    EXPECT_TRUE(metadata.insert(e.dump()).second) << "duplicate metadata " << e.dump();
    if (e["name"] == "thread_name") {
      EXPECT_TRUE(names.emplace(std::make_pair(e["pid"].get<int>(), e["tid"].get<int>()), e["args"]["name"]).second)
          << "two names for one row: " << e.dump();
    }
  }
  std::set<int> device_rows;
  long long slices = 0, compute = 0;
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] != "X") continue;
    ++slices;
    ASSERT_TRUE(names.count({e["pid"], e["tid"]})) << e.dump();
    if (e["pid"] == 1) {
      device_rows.insert(e["tid"].get<int>());
      ++compute;
    }
  }
  EXPECT_EQ(slices, result->stats.trace_events);
  EXPECT_EQ(compute, result->stats.stage_executions);
  EXPECT_EQ(trace["otherData"]["events"].get<long long>(), slices);
  EXPECT_EQ(trace["otherData"]["replicas"].get<size_t>(), pl.replicas.size());
  for (const auto& replica : pl.replicas) {
    for (const auto& st : replica.stages) EXPECT_TRUE(device_rows.count(st.device)) << "device " << st.device;
  }
  // The replicas' own traces are gone.
  size_t files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++files;
  EXPECT_EQ(files, 1u);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace adaptlink::sim::testing

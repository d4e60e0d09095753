// Replicated plans (partition/replicas.hpp): the replica's own problem, the merged steady window, when adaptlink
// may and does choose replicas, and closed-form checks of what it predicts for them.
#include <gtest/gtest.h>

#include <filesystem>
#include <numeric>

#include "adaptlink/planner/planner.hpp"
#include "adaptlink/partition/problem.hpp"
#include "adaptlink/planner/replicas.hpp"
#include "adaptlink/runtime/report.hpp"

namespace part = adaptlink::partition;
namespace runtime = adaptlink::runtime;
namespace fs = std::filesystem;

namespace {

std::unique_ptr<part::Problem> suite(const std::string& name) {
  auto p = part::load_problem(fs::path(ADAPTLINK_SOURCE_DIR) / "scenarios" / "suite" / (name + ".toml"));
  EXPECT_TRUE(p) << p.error().to_string();
  return std::move(*p);
}

// Requests per second of `device` running the whole model alone, one request at a time.
double alone_rps(const part::CostModel& cost, int device) {
  const int last = cost.num_nodes() - 1;
  return 1e3 / (cost.prefill_ms(device, 0, last) + cost.decode_total_ms(device, 0, last));
}

// adaptlink's plan of the scenario, and its plan with replicas off (one pipeline).
std::pair<part::Plan, part::Plan> adaptlink_and_one_pipeline(const part::Problem& p) {
  auto plan = part::make_plan(*p.cost, "adaptlink", part::Objective::throughput);
  EXPECT_TRUE(plan) << p.scenario.name;
  auto sc = p.scenario;
  sc.planner.replicas = false;
  auto one = part::make_problem(sc);
  auto single = part::make_plan(*one->cost, "adaptlink", part::Objective::throughput);
  EXPECT_TRUE(single) << p.scenario.name;
  if (!plan || !single) return {};
  return {std::move(*plan), std::move(*single)};
}

}  // namespace

TEST(Replicas, SteadyThroughputCountsTheWindowOfReportHpp) {
  // Completions every 2 time units: (N - 2F) / (c_(N-F) - c_F) = 1 / 2 whatever the order they come in.
  std::vector<double> c;
  for (int i = 20; i >= 1; --i) c.push_back(2.0 * i);
  EXPECT_DOUBLE_EQ(runtime::steady_throughput(c, 3), 0.5);
  // Two replicas completing alternately every 3 units each, offset by 1: merged 2 per 3 units once steady.
  std::vector<double> merged;
  for (int i = 1; i <= 30; ++i) {
    merged.push_back(3.0 * i);
    merged.push_back(3.0 * i + 1);
  }
  // F = 2: window [c_2, c_58] = [4, 88]: 56 completions in 84 units.
  EXPECT_DOUBLE_EQ(runtime::steady_throughput(merged, 2), 56.0 / 84.0);
  EXPECT_EQ(runtime::steady_throughput({}, 2), 0.0);
  // Too few completions for a window: the whole run from time 0.
  EXPECT_DOUBLE_EQ(runtime::steady_throughput({1.0, 2.0, 4.0}, 2), 3.0 / 4.0);
}

TEST(Replicas, ReplicaProblemKeepsProfilesAndSetsTheShare) {
  auto p = suite("pi-cluster-nx-gbe");
  auto& cost = *p->cost;
  cost.set_slowdown(1, 1.7);
  const int last = cost.num_nodes() - 1;
  auto r = part::replica_problem(cost, {1, 2}, 3, 17);
  const auto& sc = *r.scenario;
  EXPECT_EQ(part::active_devices(sc), (std::vector<int>{1, 2}));
  EXPECT_EQ(sc.devices.size(), p->scenario.devices.size());
  EXPECT_EQ(sc.workload.in_flight, 3);
  EXPECT_EQ(sc.workload.requests, 17);
  EXPECT_FALSE(sc.planner.backups);
  EXPECT_FALSE(sc.planner.replicas);
  EXPECT_DOUBLE_EQ(r.cost->prefill_ms(1, 0, last), cost.prefill_ms(1, 0, last));  // the slowdown came along
  EXPECT_DOUBLE_EQ(r.cost->decode_total_ms(2, 0, last), cost.decode_total_ms(2, 0, last));
  // The KV reservation follows the replica's in_flight: 3 of the scenario's 5 requests.
  EXPECT_NEAR(r.cost->kv_bytes(0, last), cost.kv_bytes(0, last) * 3.0 / 5.0, 1.0);
  EXPECT_DOUBLE_EQ(r.cost->weight_bytes(0, last), cost.weight_bytes(0, last));
}

TEST(Replicas, OnlyWhereTheScenarioAllowsThem) {
  auto p = suite("homogeneous-agx2-mesh");
  const auto base = p->scenario;
  EXPECT_TRUE(part::replicas_allowed(base, part::Objective::throughput));
  EXPECT_FALSE(part::replicas_allowed(base, part::Objective::latency));
  auto off = [&](auto change) {
    auto sc = base;
    change(sc);
    return !part::replicas_allowed(sc, part::Objective::throughput);
  };
  EXPECT_TRUE(off([](part::Scenario& s) { s.planner.replicas = false; }));
  EXPECT_TRUE(off([](part::Scenario& s) { s.planner.backups = true; }));
  EXPECT_TRUE(off([](part::Scenario& s) { s.workload.arrival = part::Arrival::poisson; }));
  EXPECT_TRUE(off([](part::Scenario& s) { s.workload.in_flight = 1; }));
  EXPECT_TRUE(off([](part::Scenario& s) { s.faults.push_back({10, "agx-a", part::FaultKind::dropout}); }));
  EXPECT_TRUE(off([](part::Scenario& s) { s.devices[1].role = part::Role::standby; }));

  // Off, adaptlink plans one pipeline over both devices.
  auto sc = base;
  sc.planner.replicas = false;
  auto single = part::make_problem(sc);
  auto plan = part::make_plan(*single->cost, "adaptlink", part::Objective::throughput);
  ASSERT_TRUE(plan);
  EXPECT_TRUE(plan->replicas.empty());
}

// Two identical devices that each hold the model, two requests in flight: each serves its own request alone,
// and the pair reaches the aggregate-compute bound exactly (one pipeline over both reached 0.774 of it).
TEST(Replicas, TwoDevicesThatHoldTheModelServeAloneAtTheBound) {
  auto p = suite("homogeneous-agx2-mesh");
  const auto& cost = *p->cost;
  auto plan = part::make_plan(cost, "adaptlink", part::Objective::throughput);
  ASSERT_TRUE(plan);
  ASSERT_EQ(plan->replicas.size(), 2u);
  double bound = 0;
  for (int d = 0; d < 2; ++d) bound += alone_rps(cost, d);
  for (const auto& r : plan->replicas) {
    EXPECT_EQ(r.in_flight, 1);
    EXPECT_EQ(r.requests, p->scenario.workload.requests / 2);
    ASSERT_EQ(r.stages.size(), 1u);
    EXPECT_NEAR(r.predicted.throughput_rps, alone_rps(cost, r.stages[0].device), 1e-9);
  }
  EXPECT_NEAR(plan->predicted.throughput_rps / bound, 1.0, 1e-9);
  EXPECT_EQ(plan->stages, plan->replicas.front().stages);
}

// Four identical boards that cannot hold the model alone: two pairs, two requests each (by symmetry), and
// together more than one pipeline over the four.
TEST(Replicas, IdenticalBoardsSplitEvenly) {
  auto p = suite("homogeneous-nx4-gbe");
  const auto [plan, single] = adaptlink_and_one_pipeline(*p);
  ASSERT_EQ(plan.replicas.size(), 2u);
  for (const auto& r : plan.replicas) {
    EXPECT_EQ(r.devices.size(), 2u);
    EXPECT_EQ(r.in_flight, 2);
    EXPECT_EQ(r.requests, p->scenario.workload.requests / 2);
  }
  EXPECT_NEAR(plan.replicas[0].predicted.throughput_rps, plan.replicas[1].predicted.throughput_rps, 1e-9);
  EXPECT_GT(plan.predicted.throughput_rps, 1.01 * single.predicted.throughput_rps);
}

// The plan's prediction is the merged closed loop of its replicas replayed one by one: recompute it from the
// replays and compare; the summary fields follow combine_predictions.
TEST(Replicas, PredictionIsTheMergedReplayOfTheReplicas) {
  auto p = suite("pi-cluster-nx-gbe");
  const auto& cost = *p->cost;
  auto plan = part::make_plan(cost, "adaptlink", part::Objective::throughput);
  ASSERT_TRUE(plan);
  ASSERT_GE(plan->replicas.size(), 2u);
  std::vector<double> completions;
  long long in_flight = 0;
  double bound = 0, capacity = 0;
  for (const auto& r : plan->replicas) {
    auto own = part::replica_problem(cost, r.devices, r.in_flight, r.requests);
    auto stages = r.stages;
    const auto e = part::evaluate(*own.cost, stages);
    const auto run = part::replay(*own.cost, stages, r.requests, e.bottleneck_ms);
    EXPECT_EQ(static_cast<long long>(run.completions_ms.size()), r.requests);
    EXPECT_NEAR(r.predicted.throughput_rps, std::min(run.throughput_rps, e.throughput_rps), 1e-12);
    completions.insert(completions.end(), run.completions_ms.begin(), run.completions_ms.end());
    in_flight += r.in_flight;
    bound += e.throughput_rps;
    capacity += 1e3 / e.bottleneck_ms;
  }
  EXPECT_NEAR(plan->predicted.throughput_rps, runtime::steady_throughput(completions, in_flight) * 1e3, 1e-12);
  EXPECT_NEAR(plan->predicted.bound_rps, bound, 1e-12);
  EXPECT_NEAR(plan->predicted.bottleneck_ms, 1e3 / capacity, 1e-9);
  EXPECT_LE(plan->predicted.throughput_rps, bound);
  EXPECT_NEAR(plan->predicted.tokens_per_s, plan->predicted.throughput_rps * cost.shape().output_tokens, 1e-9);
}

// Replicas are chosen only when they beat one pipeline by more than 1 %; the plan JSON lists them.
TEST(Replicas, ChosenOnlyWhenTheyBeatOnePipelineAndListedInThePlanJson) {
  for (const char* name : {"pi-cluster-nx-gbe", "small-boards-tight-gbe", "eight-mesh-gbe"}) {
    auto p = suite(name);
    const auto [replicated, single] = adaptlink_and_one_pipeline(*p);
    const auto* plan = &replicated;
    if (plan->replicas.empty()) {
      EXPECT_EQ(plan->stages, single.stages) << name;
      continue;
    }
    EXPECT_GT(plan->predicted.throughput_rps, 1.01 * single.predicted.throughput_rps) << name;
    const auto j = part::to_json(*plan, *p->cost);
    ASSERT_TRUE(j.contains("replicas")) << name;
    ASSERT_EQ(j["replicas"].size(), plan->replicas.size());
    int in_flight = 0;
    for (const auto& r : j["replicas"]) {
      in_flight += r["in_flight"].get<int>();
      EXPECT_FALSE(r["devices"].empty());
      EXPECT_FALSE(r["stages"].empty());
      EXPECT_GT(r["predicted"]["throughput_rps"].get<double>(), 0);
    }
    EXPECT_EQ(in_flight, p->scenario.workload.in_flight);
    EXPECT_EQ(j["stages"], j["replicas"][0]["stages"]);
  }
  // The 4 GB boards of small-boards-tight-gbe cannot form a group of their own: one pipeline.
  auto p = suite("small-boards-tight-gbe");
  auto plan = part::make_plan(*p->cost, "adaptlink", part::Objective::throughput);
  ASSERT_TRUE(plan);
  EXPECT_TRUE(plan->replicas.empty());
}

// Planner::plan_to_beat (make_plan's admission descent tells each attempt what it must beat): adaptlink may stop early
// only where it proves that plan() would return nothing faster than the bar, so a plan that plan() returns above the
// bar comes back unchanged, and whatever it returns is never reported faster than the bar when plan()'s is not.
TEST(Replicas, PlanToBeatKeepsEveryPlanThatBeatsTheBar) {
  int early = 0;
  for (const std::string name : {"pi-cluster-nx-gbe", "homogeneous-agx2-mesh", "jetson-quartet-gbe", "small-boards-tight-gbe",
                                 "pi-cluster-nx-gbe/one", "jetson-quartet-gbe/one", "eight-mesh-gbe/one"}) {
    auto p = suite(name.substr(0, name.find('/')));
    if (name.ends_with("/one")) {  // replicas off: one pipeline
      auto sc = p->scenario;
      sc.planner.replicas = false;
      p = part::make_problem(sc);
    }
    const auto planner = part::make_adaptlink({});
    const auto full = planner->plan(*p->cost, part::Objective::throughput);
    ASSERT_TRUE(full) << name;
    const double x = full->predicted.throughput_rps;
    ASSERT_GT(x, 0) << name;
    for (const double bar : {0.0, 0.5 * x, x * (1 - 1e-6), x, 1.2 * x, 3.0 * x}) {
      const auto hinted = planner->plan_to_beat(*p->cost, part::Objective::throughput, bar);
      ASSERT_TRUE(hinted) << name << " bar " << bar;
      // What the hinted plan reaches by the reported prediction (a replicated plan carries its own).
      auto stages = hinted->stages;
      const double y = hinted->replicas.empty() ? part::predict(*p->cost, stages).throughput_rps
                                                : hinted->predicted.throughput_rps;
      if (x > bar) {
        EXPECT_EQ(hinted->stages, full->stages) << name << " bar " << bar;
        EXPECT_EQ(hinted->replicas.size(), full->replicas.size()) << name << " bar " << bar;
        EXPECT_DOUBLE_EQ(hinted->predicted.throughput_rps, x) << name << " bar " << bar;
      } else {
        EXPECT_LE(y, bar * (1 + 1e-12)) << name << " bar " << bar;
        early += hinted->stages != full->stages || hinted->predicted.throughput_rps != x ? 1 : 0;
      }
    }
  }
  // The bars above every plan let adaptlink stop early somewhere (else the test shows nothing).
  EXPECT_GT(early, 0);
}

// The exact one-pipeline bottleneck search (bottleneck.cpp) against brute force, and adaptlink without seeds against
// the peers and the exhaustive planner at saturation (issue 16).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <random>

#include "adaptlink/planner/bottleneck.hpp"
#include "adaptlink/planner/planner.hpp"
#include "adaptlink/partition/problem.hpp"
#include "brute_force.hpp"
#include "small_llava.hpp"

namespace al = adaptlink;
namespace part = adaptlink::partition;

namespace {

double bottleneck_of(const part::CostModel& cost, std::vector<part::Stage> stages) {
  return part::evaluate(cost, stages).bottleneck_ms;
}

// Brute force: every ordered subset of the devices and every cut, evaluate()'s bottleneck of each that fits.
double brute_force(const part::CostModel& cost) {
  double best = std::numeric_limits<double>::infinity();
  al::testing::for_each_plan(cost, [&](const std::vector<part::Stage>& stages) { best = std::min(best, bottleneck_of(cost, stages)); });
  return best;
}

// A random heterogeneous cluster: compute spread 10-100x, memory 2-10x, star or mesh, per-pair links in some,
// some devices of one type. At saturation (Poisson far above capacity) throughput is 1 / bottleneck.
part::Scenario random_cluster(std::mt19937_64& rng, int n, int text_layers, const std::string& name) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  auto log_uniform = [&](double lo, double hi) { return lo * std::pow(hi / lo, u(rng)); };
  part::Scenario s;
  s.name = name;
  s.model.llava = al::testing::small_llava();
  s.model.llava.text.num_hidden_layers = text_layers;
  s.model.dtype = al::models::Dtype::fp16;
  const double compute_spread = log_uniform(10, 100);
  const double memory_spread = log_uniform(2, 10);
  // fp16, with the KV cache of the requests in flight: ~0.5 GB per decoder layer, ~0.3 GB for the embeddings and for
  // the head. The smallest memories hold a fifth of the model or less, the largest all of it or more.
  const double mem_base = (0.6e9 + 0.5e9 * text_layers) * log_uniform(0.1, 0.5);
  for (int d = 0; d < n; ++d) {
    part::Device dev;
    if (d > 0 && rng() % 4 == 0) {
      dev = s.devices.back();  // another of the same type
    } else {
      const double speed = std::pow(compute_spread, u(rng));
      dev.tflops = 0.3 * speed;
      dev.mem_bw_gbs = 17 * std::pow(compute_spread, 0.5 * u(rng) + 0.25 * std::log(speed) / std::log(compute_spread));
      dev.mem_bytes = mem_base * std::pow(memory_spread, u(rng));
    }
    dev.name = "d" + std::to_string(d);
    s.devices.push_back(dev);
  }
  s.network.topology = rng() % 2 == 0 ? part::Topology::mesh : part::Topology::star;
  s.network.default_link = {log_uniform(50, 2000), log_uniform(0.2, 5)};
  const bool pairs = rng() % 2 == 0;
  for (int d = 0; d < n; ++d) {
    if (s.network.topology == part::Topology::star && rng() % 2) {
      s.network.access[d] = {log_uniform(30, 2000), log_uniform(0.2, 5)};
    }
    for (int e = d + 1; e < n && pairs; ++e) {
      if (rng() % 3 == 0) s.network.direct[{d, e}] = {log_uniform(20, 2000), log_uniform(0.1, 2)};
    }
  }
  s.workload.arrival = part::Arrival::poisson;
  s.workload.rate_per_s = 1e6;
  s.workload.in_flight = 1 + static_cast<int>(rng() % 6);
  s.workload.requests = 16;
  s.workload.shape.prompt_tokens = 16 + static_cast<int>(rng() % 200);
  s.workload.shape.output_tokens = 8 + static_cast<int>(rng() % 120);
  s.planner.max_in_flight = s.workload.in_flight;
  s.planner.max_batch = 1;  // the bottleneck of the unbatched closed form, exactly
  s.planner.backups = false;
  s.planner.replicas = false;
  return s;
}

}  // namespace

// On small instances (2-5 devices, some of one type, star and mesh, direct links in half of them) the search finds
// the brute-force minimum of evaluate()'s bottleneck over every ordered device subset and cut, and its lower bound
// is below it.
TEST(MinBottleneck, EqualsTheBruteForceMinimumOverOrderedSubsetsAndCuts) {
  std::mt19937_64 rng(20261204);
  int compared = 0, multi_stage = 0, infeasible = 0;
  for (int t = 0; t < 250; ++t) {
    const int n = 2 + static_cast<int>(rng() % 4);
    auto problem = part::make_problem(random_cluster(rng, n, 2 + static_cast<int>(rng() % 3), "small-" + std::to_string(t)));
    const auto& cost = *problem->cost;
    const double truth = brute_force(cost);
    const auto got = part::min_bottleneck_pipeline(cost, part::active_devices(cost.scenario()));
    const auto& name = problem->scenario.name;
    if (!std::isfinite(truth)) {
      EXPECT_TRUE(got.stages.empty()) << name << ": nothing fits, yet the search planned";
      ++infeasible;
      continue;
    }
    ASSERT_FALSE(got.stages.empty()) << name;
    EXPECT_FALSE(got.capped) << name;
    EXPECT_NEAR(got.bottleneck_ms, truth, 1e-9 * truth) << name;
    EXPECT_NEAR(bottleneck_of(cost, got.stages), got.bottleneck_ms, 1e-12 * truth) << name;
    EXPECT_LE(got.lower_bound_ms, truth) << name;
    EXPECT_GE(got.lower_bound_ms, truth * (1 - 1e-9)) << name;
    ++compared;
    if (got.stages.size() > 1) ++multi_stage;
  }
  EXPECT_GE(compared, 150);
  EXPECT_GE(multi_stage, 75);  // most optima split the model
  std::printf("compared %d (multi-stage %d), infeasible %d\n", compared, multi_stage, infeasible);
}

// Many identical devices cost a count, not a bitmask: 48 boards of 3 types plan in well under a second.
TEST(MinBottleneck, IdenticalDevicesCollapseIntoTypes) {
  std::mt19937_64 rng(5);
  part::Scenario s = random_cluster(rng, 1, 32, "types");
  s.devices.clear();
  s.network = {};
  s.network.topology = part::Topology::mesh;
  s.network.default_link = {1000, 0.5};
  for (int d = 0; d < 48; ++d) {
    part::Device dev;
    dev.name = "j" + std::to_string(d);
    const int kind = d % 3;
    dev.tflops = 2.0 + 8.0 * kind;
    dev.mem_bw_gbs = 60 + 70 * kind;
    dev.mem_bytes = (1.0 + kind) * 1e9;
    s.devices.push_back(dev);
  }
  auto problem = part::make_problem(std::move(s));
  const auto start = std::chrono::steady_clock::now();
  const auto got = part::min_bottleneck_pipeline(*problem->cost, part::active_devices(problem->scenario));
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(got.types, 3);
  EXPECT_FALSE(got.capped);
  ASSERT_FALSE(got.stages.empty());
  EXPECT_GE(got.lower_bound_ms, got.bottleneck_ms * (1 - 1e-9));
  EXPECT_LT(ms, 5000);
  std::printf("48 devices, 3 types: %zu stages, %.1f ms\n", got.stages.size(), ms);
}

// Issue 16's must-show: on 200 seeded random instances of 6-12 devices, adaptlink with no plan fed to it (no baseline,
// no peer seed) has a bottleneck no larger than pipeedge's, edgeshard's and (where it is feasible, <= 8 devices on
// small graphs) the exhaustive planner's, all measured by evaluate().
TEST(Adaptlink, WithoutSeedsIsAtLeastAsGoodAsEveryPeerAtSaturation) {
  std::mt19937_64 rng(16);
  auto adaptlink = part::make_adaptlink(part::AdaptlinkOptions{.seeds = false});
  int compared = 0, exhaustive = 0, strictly_better = 0;
  double ms[4] = {0, 0, 0, 0};  // adaptlink, pipeedge, edgeshard, exhaustive
  auto timed = [&](int k, auto&& f) {
    const auto start = std::chrono::steady_clock::now();
    auto r = f();
    ms[k] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    return r;
  };
  for (int t = 0; t < 200; ++t) {
    const int n = 6 + static_cast<int>(rng() % 7);
    const bool small = n <= 8 && rng() % 2 == 0;
    const int layers = small ? 1 : 4 + static_cast<int>(rng() % 29);
    auto problem = part::make_problem(random_cluster(rng, n, layers, "peers-" + std::to_string(t)));
    const auto& cost = *problem->cost;
    const auto& name = problem->scenario.name;
    auto ours = timed(0, [&] { return adaptlink->plan(cost, part::Objective::throughput); });
    double best_peer = std::numeric_limits<double>::infinity();
    int k = 1;
    for (const char* peer : {"pipeedge", "edgeshard"}) {
      auto p = part::make_planner(peer);
      ASSERT_TRUE(p);
      if (auto plan = timed(k++, [&] { return (*p)->plan(cost, part::Objective::throughput); })) {
        best_peer = std::min(best_peer, bottleneck_of(cost, plan->stages));
      }
    }
    if (small) {
      auto ex = part::make_planner("exhaustive");
      if (auto plan = timed(3, [&] { return (*ex)->plan(cost, part::Objective::throughput); })) {
        best_peer = std::min(best_peer, bottleneck_of(cost, plan->stages));
        ++exhaustive;
      }
    }
    if (!ours) {
      EXPECT_FALSE(std::isfinite(best_peer)) << name << ": a peer planned, adaptlink did not: " << ours.error().to_string();
      continue;
    }
    const double w = bottleneck_of(cost, ours->stages);
    EXPECT_LE(w, best_peer * (1 + 1e-9)) << name;
    ++compared;
    if (w < best_peer * (1 - 1e-6)) ++strictly_better;
  }
  EXPECT_GE(compared, 180);
  EXPECT_GE(exhaustive, 30);
  std::printf("compared %d, exhaustive on %d, adaptlink strictly better than every peer on %d; planning ms: adaptlink "
              "%.0f, pipeedge %.0f, edgeshard %.0f, exhaustive %.0f\n",
              compared, exhaustive, strictly_better, ms[0], ms[1], ms[2], ms[3]);
}

// make_plan's certificate: at saturation on one pipeline the exact search's bound is adaptlink's own throughput (gap
// 0), every planner's plan is at or below it, and batched plans carry none.
TEST(Certificate, BoundsEveryPlannerAndIsTightForAdaptlinkAtSaturation) {
  std::mt19937_64 rng(1604);
  int certified = 0, batched_plans = 0;
  for (int t = 0; t < 40; ++t) {
    auto problem = part::make_problem(random_cluster(rng, 3 + static_cast<int>(rng() % 6), 2 + static_cast<int>(rng() % 12),
                                                     "cert-" + std::to_string(t)));
    const auto& cost = *problem->cost;
    const auto& name = problem->scenario.name;
    auto ours = part::make_plan(cost, "adaptlink", part::Objective::throughput);
    if (!ours) continue;
    ASSERT_GT(ours->upper_bound_rps, 0) << name;
    EXPECT_EQ(ours->bound_kind, "one pipeline") << name;
    EXPECT_NEAR(ours->predicted.throughput_rps, ours->upper_bound_rps, 1e-8 * ours->upper_bound_rps) << name;
    const auto j = part::to_json(*ours, cost);
    EXPECT_NEAR(j.at("certificate").at("gap").get<double>(), 0.0, 1e-8) << name;
    for (const char* other : {"uniform", "memory", "pipeedge", "edgeshard"}) {
      auto p = part::make_plan(cost, other, part::Objective::throughput);
      if (!p) continue;
      EXPECT_NEAR(p->upper_bound_rps, ours->upper_bound_rps, 1e-12 * ours->upper_bound_rps) << name << " " << other;
      EXPECT_LE(p->predicted.throughput_rps, p->upper_bound_rps * (1 + 1e-9)) << name << " " << other;
    }
    ++certified;
    part::Scenario batched = problem->scenario;
    batched.planner.max_batch = 8;
    batched.workload.in_flight = 8;
    batched.planner.max_in_flight = 8;
    auto bp = part::make_problem(std::move(batched));
    if (auto b = part::make_plan(*bp->cost, "adaptlink", part::Objective::throughput); b && b->max_batch > 1) {
      EXPECT_EQ(b->upper_bound_rps, 0) << name << ": a batched plan has no proven bound";
      EXPECT_TRUE(part::to_json(*b, *bp->cost).at("certificate").is_null()) << name;
      ++batched_plans;
    }
  }
  EXPECT_GE(certified, 25);
  EXPECT_GE(batched_plans, 20);
}

// From 64 devices on, a replicated plan's JSON lists each replica's stages without their node names (first_layer and
// last_layer say the same); below, with them. The top-level stages keep them.
TEST(PlanJson, ListsReplicasCompactlyFrom64Devices) {
  for (const int n : {8, part::kCompactDevices}) {
    std::mt19937_64 rng(7);
    part::Scenario s = random_cluster(rng, n, 2, "compact");
    for (auto& d : s.devices) d.mem_bytes = 64e9;
    auto problem = part::make_problem(std::move(s));
    const auto& cost = *problem->cost;
    part::Plan plan;
    plan.planner = "adaptlink";
    for (int r = 0; r < 2; ++r) {
      part::Replica rep;
      rep.devices = {r};
      rep.stages = {part::Stage{r, 0, cost.num_nodes() - 1}};
      part::evaluate(cost, rep.stages);
      plan.replicas.push_back(rep);
    }
    plan.stages = plan.replicas[0].stages;
    const auto j = part::to_json(plan, cost);
    ASSERT_EQ(j.at("replicas").size(), 2u);
    const auto& stage = j.at("replicas")[1].at("stages")[0];
    EXPECT_EQ(stage.at("first_layer"), 0);
    EXPECT_EQ(stage.at("last_layer"), cost.num_nodes() - 1);
    EXPECT_EQ(stage.contains("nodes"), n < part::kCompactDevices) << n << " devices";
    EXPECT_TRUE(j.at("stages")[0].contains("nodes"));
  }
}

// Many distinct devices, some named in direct links (so the last stage's type stays in the state): the table is
// bounded by leaving out the slowest types, the result says so, and it is still a valid plan.
TEST(MinBottleneck, ManyDistinctDevicesStayBoundedAndStillPlan) {
  std::mt19937_64 rng(40);
  part::Scenario s = random_cluster(rng, 40, 8, "distinct40");
  for (size_t d = 0; d < s.devices.size(); ++d) {
    s.devices[d].tflops = 0.5 + 0.1 * static_cast<double>(d);  // all distinct
    s.devices[d].mem_bytes = 2e9 + 1e8 * static_cast<double>(d);
  }
  s.network.direct[{0, 1}] = {500, 0.5};
  auto problem = part::make_problem(std::move(s));
  const auto& cost = *problem->cost;
  const auto start = std::chrono::steady_clock::now();
  const auto got = part::min_bottleneck_pipeline(cost, part::active_devices(problem->scenario));
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(got.capped);
  EXPECT_EQ(got.lower_bound_ms, 0);
  EXPECT_LE(got.cells, 1 << 18);
  ASSERT_FALSE(got.stages.empty());
  EXPECT_NEAR(bottleneck_of(cost, got.stages), got.bottleneck_ms, 1e-12 * got.bottleneck_ms);
  EXPECT_LT(ms, 20000);
}

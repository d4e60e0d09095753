// Peer planners (edgeshard, pipeedge, memory) and the benchmark suite (scenarios/suite/): the suite's
// shape, feasible contiguous plans from every peer, adaptlink at least as good as every peer on every
// suite scenario, its geometric-mean margin over uniform and its distance to the aggregate-compute bound
// on the compute-bound scenarios (predictions of plan.hpp's evaluate()).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>

#include "adaptlink/planner/planner.hpp"
#include "adaptlink/planner/replicas.hpp"
#include "brute_force.hpp"
#include "small_llava.hpp"
#include "adaptlink/partition/problem.hpp"

namespace fs = std::filesystem;
namespace part = adaptlink::partition;

namespace {

const std::vector<std::string> kPlanners = {"uniform", "proportional", "memory", "edgeshard", "pipeedge", "adaptlink"};
const std::vector<std::string> kPeers = {"proportional", "memory", "edgeshard", "pipeedge"};

std::vector<fs::path> suite_files() {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(fs::path(ADAPTLINK_SOURCE_DIR) / "scenarios" / "suite")) {
    if (e.path().extension() == ".toml") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

struct SuiteCase {
  fs::path file;
  std::unique_ptr<part::Problem> problem;
};

std::vector<SuiteCase> load_suite() {
  std::vector<SuiteCase> out;
  for (const auto& f : suite_files()) {
    auto problem = part::load_problem(f);
    EXPECT_TRUE(problem.has_value()) << f << ": " << (problem ? "" : problem.error().to_string());
    if (problem) out.push_back({f, std::move(*problem)});
  }
  return out;
}

// The aggregate-compute bound: sum over active devices of the throughput each reaches with the whole
// model alone, free communication and unlimited memory (bench/tools/suite_bound.cpp computes the same).
double bound_rps(const part::CostModel& cost) {
  const int last = cost.num_nodes() - 1;
  double rps = 0;
  for (int d : part::active_devices(cost.scenario())) {
    rps += 1e3 / (cost.prefill_ms(d, 0, last) + cost.decode_total_ms(d, 0, last));
  }
  return rps;
}

// Compute-bound (same definition as bench/tools/suite_bound.cpp): every link an activation may cross
// is gigabit or faster (>= 900 Mbit/s), and one request's activations at a decoder cut (prefill + one
// per decode step) keep the slowest link busy for less than 5% of the bound's time per request
// (doubled in a star, where a stage's access link carries its incoming and outgoing cut).
bool compute_bound(const part::CostModel& cost) {
  const auto& sc = cost.scenario();
  const auto active = part::active_devices(sc);
  double min_mbps = std::numeric_limits<double>::infinity();
  for (size_t a = 0; a < active.size(); ++a) {
    if (sc.network.topology == part::Topology::star) {
      min_mbps = std::min(min_mbps, sc.network.access_link(active[a]).bandwidth_mbps);
    }
    for (size_t b = a + 1; b < active.size(); ++b) {
      if (auto l = sc.network.direct_link(active[a], active[b])) min_mbps = std::min(min_mbps, l->bandwidth_mbps);
    }
  }
  const int cut = cost.graph().first_decoder_index();
  const double bytes = cost.graph().prefill_out_bytes(cut, cost.shape()) +
                       cost.shape().output_tokens * cost.graph().decode_out_bytes(cut);
  const double busy_ms = bytes * 8.0 / (min_mbps * 1e6) * 1e3;
  const double hops = sc.network.topology == part::Topology::star ? 2.0 : 1.0;
  return min_mbps >= 900 && hops * busy_ms < 0.05 * 1e3 / bound_rps(cost);
}

// Contiguous, covering, one stage per device, every stage within its device's memory.
void expect_valid_stages(const std::vector<part::Stage>& stages, const part::CostModel& cost, const std::string& what) {
  ASSERT_FALSE(stages.empty()) << what;
  const auto& sc = cost.scenario();
  EXPECT_EQ(stages.front().first_node, 0) << what;
  EXPECT_EQ(stages.back().last_node, cost.graph().head_index()) << what;
  std::set<int> devices;
  for (size_t s = 0; s < stages.size(); ++s) {
    const auto& st = stages[s];
    EXPECT_LE(st.first_node, st.last_node) << what;
    if (s > 0) {
      EXPECT_EQ(st.first_node, stages[s - 1].last_node + 1) << what << " stage " << s;
    }
    EXPECT_TRUE(devices.insert(st.device).second) << what << ": device used twice";
    EXPECT_EQ(sc.devices[st.device].role, part::Role::active) << what;
    EXPECT_LE(st.memory_bytes, sc.devices[st.device].mem_bytes) << what << " stage " << s;
    EXPECT_DOUBLE_EQ(st.memory_bytes, cost.memory_bytes(st.first_node, st.last_node)) << what;
  }
}

// A valid one-pipeline plan, or replicas that are each valid on their own problem (the KV cache of their own
// in_flight), on disjoint active devices, sharing out the whole workload.
// Checked on the cost model the plan runs on (its admission limit's KV cache, plan.hpp's PlanCost).
void expect_valid_plan(const part::Plan& plan, const part::Problem& p, const std::string& what) {
  EXPECT_TRUE(plan.predicted.feasible) << what;
  const part::PlanCost runs(*p.cost, plan);
  EXPECT_GE(plan.in_flight, 1) << what;
  EXPECT_LE(plan.in_flight, p.scenario.workload.in_flight) << what << ": admits more than the population";
  EXPECT_EQ(runs.scenario().workload.in_flight, plan.in_flight) << what;
  if (plan.replicas.empty()) {
    expect_valid_stages(plan.stages, runs.get(), what);
    return;
  }
  ASSERT_GE(plan.replicas.size(), 2u) << what;
  EXPECT_EQ(plan.stages, plan.replicas.front().stages) << what;
  std::set<int> devices;
  long long in_flight = 0, requests = 0;
  double sum_rps = 0;
  for (size_t r = 0; r < plan.replicas.size(); ++r) {
    const auto& rep = plan.replicas[r];
    const auto name = what + " replica " + std::to_string(r);
    for (int d : rep.devices) {
      EXPECT_TRUE(devices.insert(d).second) << name << ": device in two replicas";
      EXPECT_EQ(p.scenario.devices[d].role, part::Role::active) << name;
    }
    auto own = part::replica_problem(runs.get(), rep.devices, rep.in_flight, rep.requests);
    expect_valid_stages(rep.stages, *own.cost, name);
    for (const auto& st : rep.stages) {
      EXPECT_NE(std::find(rep.devices.begin(), rep.devices.end(), st.device), rep.devices.end()) << name;
    }
    EXPECT_GE(rep.in_flight, 1) << name;
    EXPECT_GE(rep.requests, rep.in_flight) << name;
    in_flight += rep.in_flight;
    requests += rep.requests;
    sum_rps += rep.predicted.throughput_rps;
  }
  EXPECT_EQ(in_flight, plan.in_flight) << what;
  EXPECT_EQ(requests, p.scenario.workload.requests) << what;
  // Counted over the merged window, the plan's throughput is near the sum of the replicas' own.
  EXPECT_NEAR(plan.predicted.throughput_rps / sum_rps, 1.0, 0.1) << what;
}

}  // namespace

TEST(Suite, SpansTheDeploymentsItClaims) {
  auto suite = load_suite();
  ASSERT_GE(suite.size(), 20u);
  std::set<std::string> presets, names;
  bool star = false, mesh = false, wifi = false, gigabit = false, homogeneous = false, uniform_infeasible = false;
  bool short_out = false, long_out = false;
  size_t min_devices = 100, max_devices = 0;
  for (const auto& c : suite) {
    const auto& sc = c.problem->scenario;
    EXPECT_EQ(sc.name, c.file.stem().string()) << "name = the file's stem";
    EXPECT_TRUE(names.insert(sc.name).second);
    presets.insert(sc.model.preset);
    star |= sc.network.topology == part::Topology::star;
    mesh |= sc.network.topology == part::Topology::mesh;
    wifi |= sc.network.default_link.bandwidth_mbps <= 600;
    gigabit |= sc.network.default_link.bandwidth_mbps >= 940;
    short_out |= sc.workload.shape.output_tokens <= 16;
    long_out |= sc.workload.shape.output_tokens >= 512;
    min_devices = std::min(min_devices, sc.devices.size());
    max_devices = std::max(max_devices, sc.devices.size());
    std::set<std::string> kinds;
    for (const auto& d : sc.devices) kinds.insert(d.kind);
    homogeneous |= kinds.size() == 1;
    // Every suite scenario must be plannable (what `adaptlink-sim validate` checks).
    EXPECT_TRUE(part::make_plan(*c.problem->cost, "adaptlink", part::Objective::throughput)) << sc.name;
    uniform_infeasible |= !part::make_plan(*c.problem->cost, "uniform", part::Objective::throughput);
  }
  EXPECT_EQ(min_devices, 2u);
  EXPECT_EQ(max_devices, 16u);
  EXPECT_TRUE(star && mesh && wifi && gigabit && homogeneous && uniform_infeasible && short_out && long_out);
  for (const char* preset : {"llava-1.5-7b", "llava-1.5-13b", "llava-v1.6-vicuna-7b", "llava-v1.6-mistral-7b"}) {
    EXPECT_TRUE(presets.count(preset)) << preset;
  }
}

// One pass plans every planner on every suite scenario and checks validity and adaptlink >= each peer.
TEST(Suite, PeersArePlausibleAndAdaptlinkIsAtLeastAsGoodAsEachPeer) {
  auto suite = load_suite();
  std::map<std::string, double> min_ratio;
  for (const auto& c : suite) {
    const auto& p = *c.problem;
    const auto& name = p.scenario.name;
    std::map<std::string, double> rps, bound;
    for (const auto& planner : kPlanners) {
      auto plan = part::make_plan(*p.cost, planner, part::Objective::throughput);
      if (!plan) {
        // Only the fixed splits may fail, and then by naming the stage that does not fit.
        EXPECT_TRUE(planner == "uniform" || planner == "proportional" || planner == "memory")
            << name << ": " << planner << ": " << plan.error().message;
        EXPECT_NE(plan.error().message.find("needs"), std::string::npos) << plan.error().message;
        continue;
      }
      EXPECT_EQ(plan->planner, planner);
      expect_valid_plan(*plan, p, name + "/" + planner);
      rps[planner] = plan->predicted.throughput_rps;
      bound[planner] = planner == "adaptlink" ? plan->search_bound_rps : plan->predicted.bound_rps;
    }
    ASSERT_TRUE(rps.count("adaptlink")) << name;
    for (const auto& [planner, x] : rps) {
      // The search optimises the closed-form bound: no peer's plan has a better one. The replay then
      // chooses among adaptlink's near-best plans and refines the winner (adaptlink.cpp,
      // ReplayRanker): by the reported (replayed) prediction adaptlink is at least as good as every
      // peer on every suite scenario, up to rounding.
      EXPECT_GE(bound["adaptlink"], bound[planner] * (1 - 1e-9)) << name << ": adaptlink's bound below " << planner;
      EXPECT_GE(rps["adaptlink"], x * (1 - 1e-9)) << name << ": adaptlink below " << planner;
      const double r = rps["adaptlink"] / x;
      if (!min_ratio.count(planner) || r < min_ratio[planner]) min_ratio[planner] = r;
    }
  }
  for (const auto& [planner, r] : min_ratio) std::printf("min adaptlink / %s over the suite: %.4f\n", planner.c_str(), r);
}

TEST(Suite, AdaptlinkGeometricMeanOverUniformIsAtLeast1p5) {
  auto suite = load_suite();
  double log_sum = 0;
  int n = 0;
  for (const auto& c : suite) {
    const auto& cost = *c.problem->cost;
    auto uni = part::make_plan(cost, "uniform", part::Objective::throughput);
    if (!uni) continue;  // memory-tight scenarios: uniform is infeasible, no ratio
    auto adapt = part::make_plan(cost, "adaptlink", part::Objective::throughput);
    ASSERT_TRUE(adapt);
    log_sum += std::log(adapt->predicted.throughput_rps / uni->predicted.throughput_rps);
    ++n;
  }
  ASSERT_GE(n, 15);
  const double geomean = std::exp(log_sum / n);
  std::printf("adaptlink / uniform, geometric mean over %d scenarios: %.3f\n", n, geomean);
  EXPECT_GE(geomean, 1.5);
}

// The "85 % of the aggregate-compute bound" read as achieved (replayed) throughput at the scenario's
// in_flight, over the suite's 200 requests. One pipeline reaches it on 2 of the 9 compute-bound scenarios
// (lowest 0.609): with in_flight about the number of stages, a token's trip through every stage leaves stages
// idle however the layers are cut. Replicas (independent pipelines on device groups, replicas.hpp) reach it on
// all 9 (lowest 0.865, generic-mixed-mesh, whose four 4 GB boards hold the model only as a 4-stage pipeline;
// over 100 requests that replica's warm-up weighs more and it reads 0.829).
// What this test holds: every compute-bound scenario at >= 0.85, decode-first never below fifo by more than 1 %,
// and nothing above the bound.
TEST(Suite, AdaptlinkThroughputAgainstTheComputeBoundOnComputeBoundScenarios) {
  auto suite = load_suite();
  int n = 0, at_85 = 0;
  for (const auto& c : suite) {
    const auto& cost = *c.problem->cost;
    if (!compute_bound(cost)) continue;
    ++n;
    auto adapt = part::make_plan(cost, "adaptlink", part::Objective::throughput);
    ASSERT_TRUE(adapt);
    auto fifo_scenario = c.problem->scenario;
    fifo_scenario.planner.schedule = part::Schedule::fifo;
    auto fifo_problem = part::make_problem(fifo_scenario);
    auto fifo = part::make_plan(*fifo_problem->cost, "adaptlink", part::Objective::throughput);
    ASSERT_TRUE(fifo);
    const double bound = bound_rps(cost);
    const double ratio = adapt->predicted.throughput_rps / bound;
    const double fifo_ratio = fifo->predicted.throughput_rps / bound;
    std::printf("%-32s adaptlink / bound %.3f (fifo %.3f), %zu replicas\n", c.problem->scenario.name.c_str(), ratio,
                fifo_ratio, adapt->replicas.size());
    EXPECT_GE(ratio, 0.85) << c.problem->scenario.name;
    EXPECT_GE(ratio, 0.99 * fifo_ratio) << c.problem->scenario.name;
    EXPECT_LE(adapt->predicted.bound_rps / bound, 1 + 1e-9) << c.problem->scenario.name << ": above the upper bound?";
    at_85 += ratio >= 0.85 ? 1 : 0;
  }
  EXPECT_GE(n, 5) << "the suite should hold several compute-bound scenarios";
  EXPECT_EQ(at_85, n);
}

TEST(Peers, EdgeshardKeepsTheInputOnTheSourceDevice) {
  for (const auto& c : load_suite()) {
    auto plan = part::make_plan(*c.problem->cost, "edgeshard", part::Objective::throughput);
    ASSERT_TRUE(plan) << c.problem->scenario.name;
    EXPECT_EQ(plan->stages.front().device, part::active_devices(c.problem->scenario).front())
        << c.problem->scenario.name;
  }
}

TEST(Peers, HomogeneousDevicesGiveTheUniformSplit) {
  auto problem = part::load_problem(fs::path(ADAPTLINK_SOURCE_DIR) / "scenarios" / "suite" / "homogeneous-nx4-gbe.toml");
  ASSERT_TRUE(problem);
  const auto& cost = *(*problem)->cost;
  auto uni = part::make_plan(cost, "uniform", part::Objective::throughput);
  ASSERT_TRUE(uni);
  for (const char* name : {"edgeshard", "pipeedge"}) {
    auto plan = part::make_plan(cost, name, part::Objective::throughput);
    ASSERT_TRUE(plan) << name;
    EXPECT_NEAR(plan->predicted.throughput_rps / uni->predicted.throughput_rps, 1.0, 0.01) << name;
  }
}

TEST(Peers, ModelThatFitsNowhereNamesTheShortfall) {
  auto problem = part::load_problem(fs::path(ADAPTLINK_SOURCE_DIR) / "scenarios" / "suite" / "agx-nano-pair-wifi5.toml");
  ASSERT_TRUE(problem);
  auto& sc = (*problem)->scenario;
  for (auto& d : sc.devices) d.mem_bytes = 3e9;  // 6 GB in all for ~14 GB of weights
  for (const char* name : {"edgeshard", "pipeedge", "memory"}) {
    auto plan = part::make_plan(*(*problem)->cost, name, part::Objective::throughput);
    ASSERT_FALSE(plan) << name;
    EXPECT_NE(plan.error().message.find(name), std::string::npos) << plan.error().message;
    EXPECT_NE(plan.error().message.find("needs"), std::string::npos) << plan.error().message;
  }
}

TEST(Peers, AreRegistered) {
  const auto names = part::planner_names();
  for (const char* name : {"memory", "edgeshard", "pipeedge"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
    auto p = part::make_planner(name);
    ASSERT_TRUE(p) << name;
    EXPECT_EQ((*p)->name(), name);
  }
}

namespace {

// Each peer's own objective (its cost model, not evaluate()): the bottleneck of a plan.
double own_bottleneck(const part::CostModel& cost, const std::vector<part::Stage>& stages, bool edgeshard) {
  const auto& net = cost.scenario().network;
  const double steps = cost.shape().output_tokens;
  double w = 0;
  for (size_t s = 0; s < stages.size(); ++s) {
    const auto& st = stages[s];
    const double decode = cost.decode_total_ms(st.device, st.first_node, st.last_node);
    w = std::max(w, edgeshard ? decode / steps : decode + cost.prefill_ms(st.device, st.first_node, st.last_node));
    if (s + 1 == stages.size()) continue;
    const int a = st.device, b = stages[s + 1].device, c = st.last_node;
    double mbps = 0, bytes = 0;
    if (edgeshard) {
      auto direct = net.direct_link(a, b);
      mbps = direct ? direct->bandwidth_mbps
                    : std::min(net.access_link(a).bandwidth_mbps, net.access_link(b).bandwidth_mbps);
      bytes = cost.graph().decode_out_bytes(c);
    } else {  // the pair's direct link, else the slower of the two devices' one bandwidth figure
      auto bw = [&](int d) {
        return net.topology == part::Topology::star ? net.access_link(d).bandwidth_mbps
                                                    : net.default_link.bandwidth_mbps;
      };
      auto direct = net.direct_link(a, b);
      mbps = direct ? direct->bandwidth_mbps : std::min(bw(a), bw(b));
      bytes = cost.graph().prefill_out_bytes(c, cost.shape()) + steps * cost.graph().decode_out_bytes(c);
    }
    w = std::max(w, bytes * 8.0 / (mbps * 1e6) * 1e3);
  }
  return w;
}

// Brute force over ordered device subsets and cuts: the smallest own bottleneck of a plan that fits (EdgeShard's
// first stage on the source device, device 0).
double brute_force_bottleneck(const part::CostModel& cost, bool edgeshard) {
  double best = std::numeric_limits<double>::infinity();
  adaptlink::testing::for_each_plan(
      cost, [&](const std::vector<part::Stage>& stages) { best = std::min(best, own_bottleneck(cost, stages, edgeshard)); },
      [&](int d, int first) { return !edgeshard || (first == 0) == (d == 0); });
  return best;
}

}  // namespace

// The device-type DP is exact for each peer's own objective: compare with brute force on small instances.
TEST(Peers, DynamicProgramsAreExactForTheirOwnObjective) {
  std::mt19937_64 rng(8);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  int compared = 0;
  for (int t = 0; t < 60; ++t) {
    part::Scenario s;
    s.name = "peers-" + std::to_string(t);
    s.model.llava = adaptlink::testing::small_llava();
    const int n = 2 + static_cast<int>(rng() % 3);  // 2..4 devices, some identical
    for (int d = 0; d < n; ++d) {
      part::Device dev;
      dev.name = "d" + std::to_string(d);
      const int kind = static_cast<int>(rng() % 3);
      dev.tflops = 1.0 + 4.0 * kind;
      dev.mem_bw_gbs = 30 + 60 * kind;
      dev.mem_bytes = (0.8 + 1.2 * u(rng)) * 1e9;
      s.devices.push_back(dev);
    }
    s.network.topology = rng() % 2 ? part::Topology::mesh : part::Topology::star;
    s.network.default_link = {100 + 900 * u(rng), 1.0};
    if (s.network.topology == part::Topology::star) {
      for (int d = 0; d < n; ++d) s.network.access[d] = {50 + 950 * u(rng), 1.0};
    } else if (rng() % 2) {
      s.network.direct[{0, 1}] = {50 + 950 * u(rng), 0.5};
    }
    s.workload.in_flight = 1 + static_cast<int>(rng() % 4);
    s.planner.max_in_flight = s.workload.in_flight;  // the searches at one admission limit (make_plan's choice of it: test_admission.cpp)
    s.workload.shape.output_tokens = 4 + static_cast<int>(rng() % 60);
    auto problem = part::make_problem(std::move(s));
    const auto& cost = *problem->cost;
    for (bool edgeshard : {true, false}) {
      const char* name = edgeshard ? "edgeshard" : "pipeedge";
      const double truth = brute_force_bottleneck(cost, edgeshard);
      auto plan = part::make_plan(cost, name, part::Objective::throughput);
      ASSERT_EQ(plan.has_value(), std::isfinite(truth)) << problem->scenario.name << " " << name;
      if (!plan) continue;
      ++compared;
      expect_valid_plan(*plan, *problem, problem->scenario.name + "/" + name);
      EXPECT_NEAR(own_bottleneck(cost, plan->stages, edgeshard), truth, 1e-9 * truth)
          << problem->scenario.name << " " << name;
    }
  }
  EXPECT_GE(compared, 60);
}

TEST(Peers, ManyDistinctDevicesStayBounded) {
  part::Scenario s;
  s.name = "distinct16";
  s.model.llava = adaptlink::testing::small_llava();
  s.model.llava.text.num_hidden_layers = 32;
  for (int d = 0; d < 16; ++d) {
    part::Device dev;
    dev.name = "d" + std::to_string(d);
    dev.tflops = 1 + 1.1 * d;
    dev.mem_bw_gbs = 30 + 13.3 * d;
    dev.mem_bytes = (1 + 0.3 * d) * 1e9;
    s.devices.push_back(dev);
  }
  auto problem = part::make_problem(std::move(s));
  for (const char* name : {"edgeshard", "pipeedge"}) {
    auto plan = part::make_plan(*problem->cost, name, part::Objective::throughput);
    ASSERT_TRUE(plan) << name;
    expect_valid_plan(*plan, *problem, name);
    EXPECT_LT(plan->solve_ms, 20000) << name;
  }
}

// pipeedge plans with the scenario's per-pair links: on small instances (2-4 devices, some of one type, star and mesh,
// direct links on about half the pairs, where the test above has at most one) its DP finds the brute-force optimum of
// PipeEdge's own model (own_bottleneck), and most of those plans cross a direct link.
TEST(PipeEdge, EqualsTheBruteForceOptimumOfItsModelWithPerPairLinks) {
  std::mt19937_64 rng(20261203);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  auto planner = part::make_planner("pipeedge");
  ASSERT_TRUE(planner);
  int compared = 0, with_direct = 0, direct_used = 0;
  for (int t = 0; t < 150; ++t) {
    part::Scenario s;
    s.name = "pairs-" + std::to_string(t);
    s.model.llava = adaptlink::testing::small_llava();
    s.model.dtype = adaptlink::models::Dtype::fp16;
    const int n = 2 + static_cast<int>(rng() % 3);
    for (int d = 0; d < n; ++d) {
      part::Device dev;
      if (d > 0 && rng() % 3 == 0) {
        dev = s.devices.back();  // another of the same type
      } else {
        dev.tflops = 0.3 * std::pow(30.0, u(rng));
        dev.mem_bw_gbs = 17 * std::pow(10.0, u(rng));
        dev.mem_bytes = 1.2e9 * std::pow(4.0, u(rng));
      }
      dev.name = "d" + std::to_string(d);
      s.devices.push_back(dev);
    }
    s.network.topology = rng() % 2 == 0 ? part::Topology::mesh : part::Topology::star;
    s.network.default_link = {50 * std::pow(20.0, u(rng)), 1};
    for (int d = 0; d < n; ++d) {
      if (s.network.topology == part::Topology::star) s.network.access[d] = {50 * std::pow(20.0, u(rng)), 1};
      for (int e = d + 1; e < n; ++e) {
        if (rng() % 2 == 0) s.network.direct[{d, e}] = {20 * std::pow(50.0, u(rng)), 1};
      }
    }
    s.workload.arrival = part::Arrival::closed;
    s.workload.in_flight = 1;
    s.workload.requests = 8;
    s.workload.shape.prompt_tokens = 32;
    s.workload.shape.output_tokens = 16;
    s.planner.max_batch = 1;
    s.planner.max_in_flight = 1;
    s.planner.backups = false;
    s.planner.replicas = false;
    const bool direct = !s.network.direct.empty();
    auto problem = part::make_problem(std::move(s));
    const auto& cost = *problem->cost;
    const double truth = brute_force_bottleneck(cost, false);
    auto plan = (*planner)->plan(cost, part::Objective::throughput);
    if (!std::isfinite(truth)) {
      EXPECT_FALSE(plan) << "pairs-" << t << ": nothing fits, yet pipeedge planned";
      continue;
    }
    ASSERT_TRUE(plan) << "pairs-" << t << ": " << plan.error().to_string();
    EXPECT_NEAR(own_bottleneck(cost, plan->stages, false), truth, 1e-9 * truth) << "pairs-" << t;
    ++compared;
    if (direct) {
      ++with_direct;
      for (size_t k = 0; k + 1 < plan->stages.size(); ++k) {
        if (cost.scenario().network.direct_link(plan->stages[k].device, plan->stages[k + 1].device)) {
          ++direct_used;
          break;
        }
      }
    }
  }
  std::printf("pipeedge = brute force on %d instances (%d with direct links; %d plans cross one)\n", compared,
              with_direct, direct_used);
  EXPECT_GE(compared, 100);
  EXPECT_GE(direct_used, 20);
}

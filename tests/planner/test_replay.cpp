// The replay predictor's ranking options (plan.hpp ReplayOptions): stopping at the steady window's end
// and cutting a replay that cannot beat a given throughput change nothing that ranking relies on; and
// adaptlink's replay-aware choice is deterministic and never below the plans it ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "adaptlink/planner/planner.hpp"
#include "adaptlink/planner/replay.hpp"
#include "adaptlink/partition/problem.hpp"

namespace fs = std::filesystem;
namespace part = adaptlink::partition;

namespace {

std::unique_ptr<part::Problem> suite_problem(const std::string& name) {
  auto problem = part::load_problem(fs::path(ADAPTLINK_SOURCE_DIR) / "scenarios" / "suite" / (name + ".toml"));
  EXPECT_TRUE(problem.has_value()) << name;
  return problem ? std::move(*problem) : nullptr;
}

// A star with Wi-Fi links, a mesh, and sixteen devices with as many requests in flight.
const char* kScenarios[] = {"jetson-quartet-wifi5", "llava13b-gbe-lab", "sixteen-mixed-gbe"};

}  // namespace

TEST(Replay, StoppingAtTheWindowsEndGivesTheSameThroughput) {
  for (const char* name : kScenarios) {
    auto problem = suite_problem(name);
    ASSERT_TRUE(problem);
    const auto& cost = *problem->cost;
    for (const char* planner : {"uniform", "pipeedge"}) {
      auto plan = part::make_plan(cost, planner, part::Objective::throughput);
      ASSERT_TRUE(plan) << name << " " << planner;
      auto stages = plan->stages;
      const auto bound = part::evaluate(cost, stages);
      // As many requests as predict() replays: the scenario's, at most kReplayRequests.
      const long long requests = std::min<long long>(problem->scenario.workload.requests, part::kReplayRequests);
      const auto whole = part::replay(cost, stages, requests, bound.bottleneck_ms);
      part::ReplayOptions opt;
      opt.stop_at_window_end = true;
      const auto stopped = part::replay(cost, stages, requests, bound.bottleneck_ms, opt);
      ASSERT_GT(whole.throughput_rps, 0) << name << " " << planner;
      EXPECT_EQ(stopped.throughput_rps, whole.throughput_rps) << name << " " << planner;
      EXPECT_FALSE(stopped.cut);
      // predict() reports the same replay (clamped to the bound).
      EXPECT_DOUBLE_EQ(plan->predicted.throughput_rps, std::min(whole.throughput_rps, bound.throughput_rps));
    }
  }
}

TEST(Replay, CutOnlyWhenThePlanCannotBeatTheGivenThroughput) {
  for (const char* name : kScenarios) {
    auto problem = suite_problem(name);
    ASSERT_TRUE(problem);
    const auto& cost = *problem->cost;
    auto plan = part::make_plan(cost, "proportional", part::Objective::throughput);
    ASSERT_TRUE(plan) << name;
    auto stages = plan->stages;
    const double stagger = part::evaluate(cost, stages).bottleneck_ms;
    const auto whole = part::replay(cost, stages, 100, stagger);
    part::ReplayOptions opt;
    opt.stop_at_window_end = true;
    opt.beat_rps = whole.throughput_rps * 0.999;  // it beats this: runs to the end, same result
    const auto below = part::replay(cost, stages, 100, stagger, opt);
    EXPECT_FALSE(below.cut) << name;
    EXPECT_EQ(below.throughput_rps, whole.throughput_rps) << name;
    opt.beat_rps = whole.throughput_rps * 1.001;  // it cannot beat this: cut, no throughput
    const auto above = part::replay(cost, stages, 100, stagger, opt);
    EXPECT_TRUE(above.cut) << name;
    EXPECT_EQ(above.throughput_rps, 0) << name;
  }
}

// The replay-aware refinement spends a budget counted in replayed events, not time: the same scenario
// gives the same plan every time; and its choice replays at least as high as the bound-best plan of the
// search and every seed (uniform, proportional, memory).
TEST(Replay, AdaptlinkChoiceIsDeterministicAndAtLeastItsSeeds) {
  for (const char* name : kScenarios) {
    auto problem = suite_problem(name);
    ASSERT_TRUE(problem);
    const auto& cost = *problem->cost;
    auto a = part::make_plan(cost, "adaptlink", part::Objective::throughput);
    auto b = part::make_plan(cost, "adaptlink", part::Objective::throughput);
    ASSERT_TRUE(a && b) << name;
    EXPECT_EQ(a->stages, b->stages) << name;
    EXPECT_EQ(a->predicted.throughput_rps, b->predicted.throughput_rps) << name;
    // The search's bound-best plan is the one with search_bound_rps; the choice may trade bound for
    // replayed throughput, never replayed throughput for bound.
    EXPECT_LE(a->predicted.bound_rps, a->search_bound_rps * (1 + 1e-9)) << name;
    for (const char* seed : {"uniform", "proportional", "memory"}) {
      auto s = part::make_plan(cost, seed, part::Objective::throughput);
      if (!s) continue;
      EXPECT_GE(a->predicted.throughput_rps, s->predicted.throughput_rps * (1 - 1e-12)) << name << " " << seed;
    }
  }
}

// The steady-state skip (replay.cpp): once a state after a completion repeats an earlier one, shifted in time and in
// requests, the replay plays the repeats at once. Against the same replay event by event, on every suite scenario
// as it is, batched (max_batch 8), fifo and with one request in flight, under three planners: every completion
// time, time to first token and per output token, the steady throughput and the mean latency agree to 1e-9; and
// the skip does run (most replays skip most of their window).
TEST(Replay, SteadyStateSkipGivesTheFullReplaysResults) {
  const auto close = [](double a, double b) { return std::abs(a - b) <= 1e-9 * std::max({1.0, std::abs(a), std::abs(b)}); };
  int replays = 0, skipping = 0;
  long long skipped = 0, window = 0;
  for (const auto& e : fs::directory_iterator(fs::path(ADAPTLINK_SOURCE_DIR) / "scenarios" / "suite")) {
    auto loaded = part::load_scenario(e.path());
    ASSERT_TRUE(loaded) << e.path();
    for (int variant = 0; variant < 4; ++variant) {
      auto scenario = *loaded;
      if (variant == 1) scenario.planner.max_batch = 8;
      if (variant == 2) scenario.planner.schedule = part::Schedule::fifo;
      if (variant == 3) scenario.workload.in_flight = 1;
      const auto problem = part::make_problem(scenario);
      const auto& cost = *problem->cost;
      for (const char* planner : {"uniform", "proportional", "pipeedge"}) {
        auto plan = part::make_plan(cost, planner, part::Objective::throughput);
        if (!plan) continue;
        auto stages = plan->stages;
        const double stagger = part::evaluate(cost, stages).bottleneck_ms;
        const long long requests = part::replay_requests(scenario.workload);
        part::ReplayOptions off;
        off.skip_steady = false;
        const auto full = part::replay(cost, stages, requests, stagger, off);
        const auto fast = part::replay(cost, stages, requests, stagger);
        const std::string where = e.path().stem().string() + " variant " + std::to_string(variant) + " " + planner;
        ++replays;
        EXPECT_EQ(full.skipped, 0);
        skipping += fast.skipped > 0;
        skipped += fast.skipped;
        window += requests - 2 * std::min<long long>(requests, scenario.workload.in_flight);
        ASSERT_EQ(fast.completions_ms.size(), full.completions_ms.size()) << where;
        EXPECT_TRUE(close(fast.throughput_rps, full.throughput_rps))
            << where << ": " << fast.throughput_rps << " skipped vs " << full.throughput_rps;
        EXPECT_TRUE(close(fast.mean_latency_ms, full.mean_latency_ms)) << where;
        for (size_t i = 0; i < full.completions_ms.size(); ++i) {
          ASSERT_TRUE(close(fast.completions_ms[i], full.completions_ms[i]) && close(fast.ttft_ms[i], full.ttft_ms[i]) &&
                      close(fast.tpot_ms[i], full.tpot_ms[i]))
              << where << ": completion " << i << " at " << fast.completions_ms[i] << " vs " << full.completions_ms[i];
        }
      }
    }
  }
  std::printf("%d replays, %d skipped periods, %lld of %lld window completions skipped\n", replays, skipping, skipped,
              window);
  EXPECT_GT(replays, 200);
  EXPECT_GT(skipping, replays / 2);
  EXPECT_GT(skipped, window / 2);
}

// Validation of the simulator against the closed forms of partition/plan.hpp, recomputed in helpers.hpp from
// CostModel numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "adaptlink/sim/simulator.hpp"
#include "helpers.hpp"

namespace adaptlink::sim::testing {
namespace {

// One request in flight: the simulated latency is the sum of stage times and transfer times.
TEST(Validation, OneRequestLatencyIsSumOfStagesAndTransfers) {
  for (const auto& file : bundled_scenarios()) {
    auto sc = load(file);
    sc.workload.arrival = part::Arrival::closed;
    sc.workload.in_flight = 1;
    sc.workload.requests = 3;
    auto p = problem(sc);
    for (const std::string name : {"uniform", "adaptlink"}) {
      SCOPED_TRACE(file.filename().string() + " / " + name);
      auto pl = plan(*p, name);
      const double expected = alone_ms(*p->cost, pl);
      auto report = simulate(*p->cost, pl);
      ASSERT_TRUE(report) << report.error().to_string();
      EXPECT_EQ(report->requests_completed, 3);
      EXPECT_EQ(report->requests_lost, 0);
      EXPECT_NEAR(report->latency_ms.p50, expected, 1e-3 * expected);
      EXPECT_NEAR(report->latency_ms.p99, expected, 1e-3 * expected);
      // The planner's R0 is the same number.
      EXPECT_NEAR(pl.predicted.alone_ms, expected, 1e-3 * expected);
      // Closed loop with one request: throughput = 1 / latency.
      EXPECT_NEAR(report->throughput_rps, 1e3 / expected, 1e-3 * 1e3 / expected);
      EXPECT_NEAR(report->tokens_per_s, report->throughput_rps * sc.workload.shape.output_tokens, 1e-9);
    }
  }
}

// Many requests in flight: throughput = 1 / bottleneck (the busiest stage or link per request). "Many" is
// 20x the knee R0/W: balanced plans have several near-equal bottleneck stages, and a closed network with
// FIFO stages needs that population to keep the slowest one busy all the time (see sim/README.md).
// Decode-first is work-conserving too, so the bottleneck stays busy; but with that many requests decoding,
// new prefills wait for gaps and completions come in bursts, so the finite steady window (4 x in_flight
// requests) reads up to ~1.2 % low (0.2 % with 16 x): it gets 2 %.
TEST(Validation, SaturatedThroughputIsOneOverBottleneck) {
  for (const auto& file : bundled_scenarios()) {
    for (const auto schedule : {part::Schedule::fifo, part::Schedule::decode_first}) {
      const double tolerance = schedule == part::Schedule::fifo ? 0.01 : 0.02;
      auto loaded = load(file);
      loaded.planner.schedule = schedule;
      auto original = problem(loaded);
      for (const std::string name : {"uniform", "adaptlink"}) {
        SCOPED_TRACE(file.filename().string() + " / " + name +
                     (schedule == part::Schedule::fifo ? " / fifo" : " / decode-first"));
        auto pl = plan(*original, name);
        const double w = bottleneck_ms(*original->cost, pl);
        const double r0 = alone_ms(*original->cost, pl);
        auto sc = original->scenario;
        sc.workload.arrival = part::Arrival::closed;
        sc.workload.in_flight = 20 * static_cast<int>(std::ceil(r0 / w));
        sc.workload.requests = 4 * sc.workload.in_flight;
        auto p = problem(sc);
        auto report = simulate(*p->cost, pl);
        ASSERT_TRUE(report) << report.error().to_string();
        const double expected = 1e3 / w;
        EXPECT_NEAR(report->throughput_rps, expected, tolerance * expected) << "in_flight " << sc.workload.in_flight;
        // The bottleneck device is busy all the time.
        double busiest = 0;
        for (const auto& [name_, u] : report->device_utilization) busiest = std::max(busiest, u);
        if (std::abs(w - pl.predicted.bottleneck_ms) < 1e-6 * w) {
          EXPECT_GT(busiest, 0.98);
        }
      }
    }
  }
}

// The bundled scenarios as written. The closed-form bound min(in_flight / R0, 1 / W) is reached at
// both ends (one request; many requests); the bundled scenarios sit at the knee (in_flight ~ R0 / W),
// where FIFO stages and head-of-line blocking behind prefills cost 5-25 %. The planner's reported
// prediction replays the plan (partition/src/replay.cpp: FIFO stages, equal-share links, the same
// staggered start and steady window), an implementation independent of SimGrid's: the two agree
// within 2 % (issue 4), and both stay below the bound.
struct Row {
  std::string scenario, planner;
  double predicted = 0, simulated = 0, bound = 0;
};

std::vector<Row> bundled_rows() {
  std::vector<Row> rows;
  for (const auto& file : bundled_scenarios()) {
    auto p = problem(load(file));
    const bool poisson = p->scenario.workload.arrival == part::Arrival::poisson;
    for (const std::string name : {"uniform", "proportional", "memory", "adaptlink"}) {
      auto pl = plan(*p, name);
      SimOptions options;
      if (poisson) options.max_requests = 1000;  // the arrival rate is a sample mean: keep its noise small
      auto result = run_simulation(*p->cost, pl, options);
      if (!result) {
        ADD_FAILURE() << result.error().to_string();
        continue;
      }
      double predicted = pl.predicted.throughput_rps;
      double bound = pl.predicted.bound_rps;
      // Poisson: compare with the arrival rate the seed actually produced.
      if (poisson) predicted = bound = std::min(result->stats.offered_rps, 1e3 / pl.predicted.bottleneck_ms);
      rows.push_back({file.filename().string(), name, predicted, result->report.throughput_rps, bound});
      std::printf("%-28s %-13s predicted %.5f  simulated %.5f  ratio %.4f\n", rows.back().scenario.c_str(),
                  name.c_str(), predicted, rows.back().simulated, rows.back().simulated / predicted);
    }
  }
  return rows;
}

TEST(Validation, BundledScenariosAgreeWithPredictionWithin2Percent) {
  const auto rows = bundled_rows();
  EXPECT_GE(rows.size(), 20u);
  for (const auto& row : rows) {
    SCOPED_TRACE(row.scenario + " / " + row.planner);
    EXPECT_NEAR(row.simulated, row.predicted, 0.02 * row.predicted);
    EXPECT_LE(row.simulated, row.bound * 1.005);
  }
}

// Poisson arrivals below the capacity: throughput = the arrival rate; above it: the capacity.
TEST(Validation, PoissonThroughputIsMinOfRateAndCapacity) {
  auto sc = load(source_dir() / "scenarios" / "jetson-quartet.toml");
  sc.workload.arrival = part::Arrival::poisson;
  for (double load_factor : {0.5, 2.0}) {
    auto p0 = problem(sc);
    auto pl = plan(*p0, "adaptlink");
    const double capacity = 1e3 / bottleneck_ms(*p0->cost, pl);
    auto sc2 = sc;
    sc2.workload.rate_per_s = load_factor * capacity;
    auto p = problem(sc2);
    SimOptions options;
    options.max_requests = 400;
    auto result = run_simulation(*p->cost, pl, options);
    ASSERT_TRUE(result) << result.error().to_string();
    const double expected = std::min(result->stats.offered_rps, capacity);
    EXPECT_NEAR(result->report.throughput_rps, expected, 0.02 * expected) << "load " << load_factor;
  }
}

}  // namespace
}  // namespace adaptlink::sim::testing

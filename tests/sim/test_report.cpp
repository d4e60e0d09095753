#include <gtest/gtest.h>

#include "adaptlink/partition/report.hpp"

namespace adaptlink::partition {
namespace {

TEST(Report, PercentilesInterpolateLinearly) {
  std::vector<double> v{4, 1, 3, 2, 5};
  EXPECT_DOUBLE_EQ(percentile(v, 0.5), 3);
  EXPECT_DOUBLE_EQ(percentile(v, 0.0), 1);
  EXPECT_DOUBLE_EQ(percentile(v, 1.0), 5);
  EXPECT_DOUBLE_EQ(percentile(v, 0.95), 4.8);
  std::vector<double> empty;
  EXPECT_EQ(percentile(empty, 0.5), 0);
  auto s = summarize_latencies({10});
  EXPECT_EQ(s.p50, 10);
  EXPECT_EQ(s.p99, 10);
}

TEST(Report, SteadyWindowSkipsRampAndDrain) {
  auto w = steady_window(100, 4, true);
  EXPECT_EQ(w.first, 4);
  EXPECT_EQ(w.last, 96);
  w = steady_window(10, 4, true);  // too short: whole run
  EXPECT_EQ(w.first, 0);
  EXPECT_EQ(w.last, 10);
  w = steady_window(50, 2, false);  // Poisson: whole run from the first arrival
  EXPECT_EQ(w.first, 0);
  EXPECT_EQ(w.last, 50);
}

TEST(Report, JsonRoundTripAndErrors) {
  RunReport r;
  r.scenario = "s";
  r.backend = "exec";
  r.planner = "adaptlink";
  r.requests_completed = 10;
  r.requests_lost = 1;
  r.throughput_rps = 0.5;
  r.tokens_per_s = 64;
  r.latency_ms = {1, 2, 3};
  r.device_utilization = {{"a", 0.5}, {"b", 1.0}};
  r.bubble_fraction = 0.25;
  r.faults.push_back({20, "b", "dropout", 20.5, 21.0, 1000, 17});
  r.faults.push_back({30, "b", "rejoin", std::nullopt, std::nullopt, std::nullopt, 0});
  auto j = to_json(r);
  EXPECT_TRUE(j["faults"][1]["detected_s"].is_null());
  EXPECT_DOUBLE_EQ(r.mean_utilization(), 0.75);
  auto back = report_from_json(j);
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_EQ(to_json(*back), j);
  j.erase("throughput_rps");
  auto bad = report_from_json(j, "x.json");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().to_string(), "x.json: 'throughput_rps': missing");
}

}  // namespace
}  // namespace adaptlink::partition

#include <gtest/gtest.h>

#include "adaptlink/runtime/report.hpp"

namespace adaptlink::runtime {
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
  auto record = [](double at_s, const char* device, partition::FaultKind kind) {
    FaultRecord f;
    f.at_s = at_s;
    f.device = device;
    f.kind = kind;
    return f;
  };
  FaultRecord dropout = record(20, "b", partition::FaultKind::dropout);
  dropout.detected_s = 20.5;
  dropout.recovered_s = 21.0;
  dropout.recovery_ms = 1000;
  dropout.recomputed_tokens = 17;
  dropout.cause = LossCause::heartbeat_timeout;
  dropout.action = RecoveryAction::switch_over;
  dropout.moves = {{1, "b", "spare", true}};
  r.faults.push_back(dropout);
  FaultRecord rejoin = record(30, "b", partition::FaultKind::rejoin);
  rejoin.action = RecoveryAction::rebalance;
  rejoin.placement = {{"a", 0, 4}, {"b", 5, 9}};
  r.faults.push_back(rejoin);
  r.faults.push_back(record(40, "a", partition::FaultKind::slowdown));
  auto j = to_json(r);
  EXPECT_TRUE(j["faults"][1]["detected_s"].is_null());
  EXPECT_EQ(j["faults"][0]["kind"], "dropout");
  EXPECT_EQ(j["faults"][0]["cause"], "heartbeat-timeout");
  EXPECT_EQ(j["faults"][0]["action"], "switch-over");
  EXPECT_EQ(j["faults"][0]["moves"][0]["to"], "spare");
  EXPECT_EQ(j["faults"][1]["action"], "rebalance");
  EXPECT_EQ(j["faults"][1]["placement"][1]["first_layer"], 5);
  EXPECT_FALSE(j["faults"][2].contains("action"));  // a slowdown has no recovery decision
  EXPECT_DOUBLE_EQ(r.mean_utilization(), 0.75);
  auto back = report_from_json(j);
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_EQ(to_json(*back), j);
  j.erase("throughput_rps");
  auto bad = report_from_json(j, "x.json");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().to_string(), "x.json: 'throughput_rps': missing");
  auto unknown = to_json(r);
  unknown["faults"][0]["kind"] = "meteor";
  EXPECT_FALSE(report_from_json(unknown));
  unknown = to_json(r);
  unknown["faults"][0]["action"] = 3;
  EXPECT_FALSE(report_from_json(unknown));
}

}  // namespace
}  // namespace adaptlink::runtime

// adaptlink-run profile's library part: every node measured once with real inputs, times that the partition
// parser reads back, and testbed entries that are the measured times x testbed_slowdown.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "adaptlink/exec/profile.hpp"
#include "adaptlink/partition/problem.hpp"
#include "adaptlink/partition/profile.hpp"
#include "adaptlink/partition/testbed.hpp"

namespace adaptlink::exec {
namespace {

namespace fs = std::filesystem;
namespace part = adaptlink::partition;

const fs::path kFixture = fs::path(ADAPTLINK_SOURCE_DIR) / "tests" / "fixtures" / "llava_llama_mha_tied";

// One measurement for the whole suite (1 repeat, a short request): about 50 ms.
const MeasuredProfile& measured() {
  static const MeasuredProfile profile = [] {
    ProfileOptions o;
    o.shape.images = 1;
    o.shape.prompt_tokens = 12;
    o.shape.output_tokens = 20;
    o.repeats = 1;
    auto p = measure_profile(kFixture, o);
    EXPECT_TRUE(p) << p.error().to_string();
    return std::move(p).value();
  }();
  return profile;
}

// A scenario on the fixture's own config (so node names match), three devices of 9, 3 and 4.5 TFLOP/s.
part::Scenario fixture_scenario() {
  const std::string text = fmt::format(R"(name = "fixture-trio"
[model]
config = "{}"
dtype = "fp32"
[[devices]]
name = "fast"
tflops = 9
mem_gb = 1
mem_bw_gbs = 100
[[devices]]
name = "slow"
tflops = 3
mem_gb = 1
mem_bw_gbs = 100
[[devices]]
name = "mid"
tflops = 4.5
mem_gb = 1
mem_bw_gbs = 100
role = "standby"
[workload]
images_per_request = 1
prompt_tokens = 12
output_tokens = 20
)",
                                       (kFixture / "config.json").string());
  auto sc = part::parse_scenario(text, fs::temp_directory_path() / "fixture-trio.toml");
  EXPECT_TRUE(sc) << sc.error().to_string();
  return std::move(sc).value();
}

TEST(ExecProfile, EveryNodeOnceWithNonNegativeTimes) {
  const auto& p = measured();
  ASSERT_EQ(static_cast<int>(p.nodes.size()), p.graph.size());
  std::set<std::string> names;
  for (int i = 0; i < p.graph.size(); ++i) {
    const auto& n = p.nodes[static_cast<size_t>(i)];
    const auto& node = p.graph.node(i);
    EXPECT_EQ(n.name, node.name);
    EXPECT_TRUE(names.insert(n.name).second) << n.name << " twice";
    // Every node ran (an image is in the request): a real, positive time.
    EXPECT_GT(n.prefill_ms, 0) << n.name;
    EXPECT_GE(n.decode_ms_at_zero, 0) << n.name;
    EXPECT_GE(n.decode_ms_per_token, 0) << n.name;
    // The batch dimension: one time per batch size for every node that decodes, growing with the batch but less
    // than that many single steps (the weights are read once).
    ASSERT_EQ(p.batch_sizes, (std::vector<int>{2, 4, 8, 16}));
    if (!node.is_vision()) {
      ASSERT_EQ(n.decode_batch_ms_at_zero.size(), 4u) << n.name;
      EXPECT_GT(n.decode_batch_ms_at_zero[3], 0) << n.name;
      EXPECT_LT(n.decode_batch_ms_at_zero[3], 16 * (n.decode_ms_at_zero + 1e-3)) << n.name;
    }
    if (node.is_vision()) {
      EXPECT_EQ(n.decode_ms_at_zero, 0) << n.name;
      EXPECT_TRUE(n.decode_samples.empty());
      EXPECT_TRUE(n.decode_batch_ms_at_zero.empty());
    } else if (node.kind == models::NodeKind::decoder_layer) {
      // Cache lengths 0, L/2, L (L = 12 + 4 image tokens + 20), the single timed step one past each.
      ASSERT_EQ(n.decode_samples.size(), 3u) << n.name;
      EXPECT_EQ(n.decode_samples[0].first, 1);
      EXPECT_EQ(n.decode_samples[1].first, 18 + 1);
      EXPECT_EQ(n.decode_samples[2].first, 36 + 1);
      EXPECT_GT(n.decode_ms_at_zero + n.decode_ms_per_token, 0) << n.name;
    } else {
      ASSERT_EQ(n.decode_samples.size(), 1u) << n.name;
      EXPECT_GT(n.decode_ms_at_zero, 0) << n.name;
      EXPECT_EQ(n.decode_ms_per_token, 0) << n.name;
    }
  }
  EXPECT_EQ(p.shape.prompt_tokens, 12);
  EXPECT_EQ(p.repeats, 1);
  EXPECT_EQ(p.dtype, "fp32");
  // The batch table reaches the profile file and back.
  const auto times = p.times();
  ASSERT_EQ(times.decode_batch_ms_at_zero.size(), p.nodes.size());
  EXPECT_EQ(times.batch_sizes, p.batch_sizes);
}

TEST(ExecProfile, TestbedFileRoundTripsAndScalesByTheSlowdown) {
  const auto& p = measured();
  const auto sc = fixture_scenario();
  ASSERT_TRUE(check_scenario_model(p.graph, kFixture, sc));
  const auto json = testbed_profile_json(p, sc);
  EXPECT_NE(json["comment"].get<std::string>().find("testbed_slowdown"), std::string::npos);
  EXPECT_EQ(json["request_shape"]["prompt_tokens"], 12);
  ASSERT_EQ(json["profiles"].size(), 3u);

  auto problem = part::make_problem(sc);
  auto parsed = part::parse_profile(nlohmann::json::parse(json.dump(2)), *problem->cost, "testbed.json");
  ASSERT_TRUE(parsed) << parsed.error().to_string();
  ASSERT_EQ(parsed->size(), 3u);
  const auto times = p.times();
  const double factors[] = {1.0, 3.0, 2.0};  // 9/9, 9/3, 9/4.5
  for (int d = 0; d < 3; ++d) {
    const auto& entry = (*parsed)[static_cast<size_t>(d)];
    ASSERT_EQ(entry.devices, std::vector<int>{d});
    EXPECT_DOUBLE_EQ(part::testbed_slowdown(sc, d), factors[d]);
    for (size_t i = 0; i < times.prefill_ms.size(); ++i) {
      EXPECT_EQ(entry.times.prefill_ms[i], times.prefill_ms[i] * factors[d]) << d << " " << i;
      EXPECT_EQ(entry.times.decode_ms_at_zero[i], times.decode_ms_at_zero[i] * factors[d]) << d << " " << i;
      EXPECT_EQ(entry.times.decode_ms_per_token[i], times.decode_ms_per_token[i] * factors[d]) << d << " " << i;
    }
  }
  // Applied, the cost model's stage times are the sums of the scaled node times.
  for (const auto& e : *parsed) {
    for (int d : e.devices) problem->cost->set_profile(d, e.times);
  }
  double sum = 0;
  for (double x : times.prefill_ms) sum += x;
  EXPECT_NEAR(problem->cost->prefill_ms(1, 0, p.graph.size() - 1), 3 * sum, 1e-9 * sum);
}

TEST(ExecProfile, DeviceFileIsUnscaled) {
  const auto& p = measured();
  const auto json = device_profile_json(p, "slow");
  EXPECT_EQ(json["device"], "slow");
  auto problem = part::make_problem(fixture_scenario());
  auto parsed = part::parse_profile(json, *problem->cost, "device.json");
  ASSERT_TRUE(parsed) << parsed.error().to_string();
  ASSERT_EQ(parsed->size(), 1u);
  EXPECT_EQ((*parsed)[0].devices, std::vector<int>{1});
  EXPECT_EQ((*parsed)[0].times.prefill_ms, p.times().prefill_ms);
  EXPECT_EQ((*parsed)[0].times.decode_ms_per_token, p.times().decode_ms_per_token);
}

TEST(ExecProfile, AnotherModelsScenarioIsNamed) {
  auto sc = part::load_scenario(fs::path(ADAPTLINK_SOURCE_DIR) / "scenarios" / "jetson-quartet.toml");
  ASSERT_TRUE(sc);
  auto st = check_scenario_model(measured().graph, kFixture, *sc);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message.find("scenario 'jetson-quartet' describes another model (59 nodes, 32 decoder layers)"),
            std::string::npos)
      << st.error().message;
}

TEST(ExecProfile, BadInputIsAnError) {
  ProfileOptions o;
  o.repeats = 0;
  auto r = measure_profile(kFixture, o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("repeats must be >= 1"), std::string::npos);
  o.repeats = 1;
  o.shape.images = 0;
  o.shape.prompt_tokens = 0;
  r = measure_profile(kFixture, o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("nothing to measure"), std::string::npos);
  r = measure_profile("/nonexistent/checkpoint", ProfileOptions{});
  EXPECT_FALSE(r);
}

TEST(ExecProfile, TextOnlyRequestsLeaveTheVisionTowerAtZero) {
  ProfileOptions o;
  o.shape.images = 0;
  o.shape.prompt_tokens = 5;
  o.shape.output_tokens = 4;
  o.repeats = 1;
  auto p = measure_profile(kFixture, o);
  ASSERT_TRUE(p) << p.error().to_string();
  for (const auto& n : p->nodes) {
    if (p->graph.node(p->graph.text_embed_index()).name == n.name) break;
    EXPECT_EQ(n.prefill_ms, 0) << n.name;
  }
  EXPECT_GT(p->nodes.back().prefill_ms, 0);
}

TEST(ExecProfileFit, LeastSquaresClampedToNonNegative) {
  auto [a, b] = fit_decode({{0, 1.0}, {10, 2.0}, {20, 3.0}});
  EXPECT_NEAR(a, 1.0, 1e-12);
  EXPECT_NEAR(b, 0.1, 1e-12);
  std::tie(a, b) = fit_decode({{1, 1.0}, {11, 2.2}, {21, 2.9}});  // noisy: least squares, not two points
  EXPECT_NEAR(b, 0.095, 1e-12);
  EXPECT_NEAR(a, (1.0 + 2.2 + 2.9) / 3 - 0.095 * 11, 1e-12);
  std::tie(a, b) = fit_decode({{0, 2.0}, {10, 1.5}, {20, 1.0}});  // falling: flat at the mean
  EXPECT_EQ(b, 0);
  EXPECT_NEAR(a, 1.5, 1e-12);
  std::tie(a, b) = fit_decode({{10, 0.5}, {20, 2.0}, {30, 3.5}});  // negative intercept: through the origin
  EXPECT_EQ(a, 0);
  EXPECT_NEAR(b, (5.0 + 40 + 105) / (100.0 + 400 + 900), 1e-12);
  std::tie(a, b) = fit_decode({{5, 0.7}});
  EXPECT_NEAR(a, 0.7, 1e-12);
  EXPECT_EQ(b, 0);
}

}  // namespace
}  // namespace adaptlink::exec

// Profile files written by profile_to_json read back through parse_profile (one definition of the format),
// the request_shape check, and the testbed's per-device slowdown factors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "adaptlink/partition/problem.hpp"
#include "adaptlink/partition/profile.hpp"
#include "adaptlink/partition/testbed.hpp"

namespace part = adaptlink::partition;

namespace {

std::unique_ptr<part::Problem> load(const std::string& name) {
  auto p = part::load_problem(std::string(ADAPTLINK_SOURCE_DIR) + "/scenarios/" + name + ".toml");
  EXPECT_TRUE(p) << (p ? "" : p.error().to_string());
  return std::move(*p);
}

// Distinct, non-round times per node so that a swapped or rounded entry shows.
part::NodeTimes ramp(int nodes, double base) {
  part::NodeTimes t;
  for (int i = 0; i < nodes; ++i) {
    t.prefill_ms.push_back(base + 0.1234567 * i);
    t.decode_ms_at_zero.push_back(base / 7 + 0.01 * i);
    t.decode_ms_per_token.push_back(1e-5 * (i + 1) / 3);
  }
  return t;
}

TEST(ProfileFile, WriterRoundTripsThroughTheParser) {
  auto p = load("jetson-quartet");
  const int n = p->cost->num_nodes();
  std::vector<part::ProfileEntry> entries = {{"agx", "", ramp(n, 2.0)},
                                             {"", "jetson-orin-nx-16gb", ramp(n, 5.0)},
                                             {"xavier", "", ramp(n, 9.0)}};
  part::ProfileMeta meta{"measured here", p->scenario.workload.shape};
  const auto j = part::profile_to_json(p->graph, entries, meta);
  EXPECT_EQ(j["comment"], "measured here");
  EXPECT_EQ(j["request_shape"]["prompt_tokens"], 64);
  ASSERT_EQ(j["profiles"].size(), 3u);
  EXPECT_EQ(j["profiles"][0]["nodes"][0]["name"], "vision.embed");

  // Through text, as a file would go.
  auto parsed = part::parse_profile(nlohmann::json::parse(j.dump(2)), *p->cost, "w.json");
  ASSERT_TRUE(parsed) << parsed.error().to_string();
  ASSERT_EQ(parsed->size(), 3u);
  EXPECT_EQ((*parsed)[0].devices, std::vector<int>{p->scenario.device_index("agx")});
  EXPECT_EQ((*parsed)[1].devices, std::vector<int>{p->scenario.device_index("nx")});
  for (size_t e = 0; e < entries.size(); ++e) {
    EXPECT_EQ((*parsed)[e].times.prefill_ms, entries[e].times.prefill_ms) << e;
    EXPECT_EQ((*parsed)[e].times.decode_ms_at_zero, entries[e].times.decode_ms_at_zero) << e;
    EXPECT_EQ((*parsed)[e].times.decode_ms_per_token, entries[e].times.decode_ms_per_token) << e;
  }

  // One entry: the single-object form, metadata inside it.
  const auto one = part::profile_to_json(p->graph, {entries[0]}, meta);
  EXPECT_EQ(one["device"], "agx");
  EXPECT_FALSE(one.contains("profiles"));
  auto parsed_one = part::parse_profile(one, *p->cost, "one.json");
  ASSERT_TRUE(parsed_one) << parsed_one.error().to_string();
  EXPECT_EQ((*parsed_one)[0].times.prefill_ms, entries[0].times.prefill_ms);
}

TEST(ProfileFile, AppliedProfilesDriveTheCostModel) {
  auto p = load("jetson-quartet");
  const int n = p->cost->num_nodes();
  const auto times = ramp(n, 1.0);
  const auto path = std::filesystem::temp_directory_path() / "adaptlink-partition-profile.json";
  std::ofstream(path) << part::profile_to_json(p->graph, {{"nano", "", times}}).dump();
  ASSERT_TRUE(part::apply_profiles({path.string()}, *p->cost));
  std::filesystem::remove(path);
  const int nano = p->scenario.device_index("nano");
  double prefill = 0;
  for (double x : times.prefill_ms) prefill += x;
  EXPECT_NEAR(p->cost->prefill_ms(nano, 0, n - 1), prefill, 1e-9 * prefill);
  const int d = p->graph.first_decoder_index();
  EXPECT_NEAR(p->cost->decode_step_ms(nano, d, d, 300),
              times.decode_ms_at_zero[d] + 300 * times.decode_ms_per_token[d], 1e-12);
  // A missing file is an error that names it.
  auto st = part::apply_profiles({"/nonexistent/p.json"}, *p->cost);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().file, "/nonexistent/p.json");
}

TEST(ProfileFile, RequestShapeMustBeTheScenarios) {
  auto p = load("jetson-quartet");
  const int n = p->cost->num_nodes();
  auto shape = p->scenario.workload.shape;
  shape.output_tokens = 7;  // only says where the decode fit was sampled: accepted
  auto j = part::profile_to_json(p->graph, {{"agx", "", ramp(n, 1)}}, {"", shape});
  EXPECT_TRUE(part::parse_profile(j, *p->cost, "p.json"));
  shape.prompt_tokens = 16;
  j = part::profile_to_json(p->graph, {{"agx", "", ramp(n, 1)}, {"nx", "", ramp(n, 1)}}, {"", shape});
  auto r = part::parse_profile(j, *p->cost, "p.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().to_string().find("p.json: request_shape: the times were measured for 1 image(s) and 16 prompt "
                                       "tokens, scenario 'jetson-quartet' asks for 1 and 64"),
            std::string::npos)
      << r.error().to_string();
  j = part::profile_to_json(p->graph, {{"agx", "", ramp(n, 1)}});
  j["request_shape"] = {{"image", 1}};
  r = part::parse_profile(j, *p->cost, "p.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("profile.request_shape: unknown key 'image'"), std::string::npos)
      << r.error().message;
  j = {{"profiles", nlohmann::json::array({part::profile_to_json(p->graph, {{"agx", "", ramp(n, 1)}})})},
       {"extra", 1}};
  r = part::parse_profile(j, *p->cost, "p.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("unknown key 'extra'"), std::string::npos) << r.error().message;
}

TEST(Testbed, SlowdownIsTheFastestDevicesTflopsOverTheDevices) {
  auto p = load("jetson-quartet");
  const auto& sc = p->scenario;
  // agx 19.125, nx 6.75, nano 4.5, xavier 3.06 TFLOP/s (catalogue).
  EXPECT_DOUBLE_EQ(part::testbed_slowdown(sc, sc.device_index("agx")), 1.0);
  EXPECT_DOUBLE_EQ(part::testbed_slowdown(sc, sc.device_index("nx")), 19.125 / 6.75);
  EXPECT_DOUBLE_EQ(part::testbed_slowdown(sc, sc.device_index("nano")), 4.25);
  EXPECT_DOUBLE_EQ(part::testbed_slowdown(sc, sc.device_index("xavier")), 19.125 / 3.06);

  // A device with a third of the fastest one's TFLOP/s takes 3x as long; standby devices count too.
  auto copy = sc;
  copy.devices[0].tflops = 3;
  copy.devices[1].tflops = 9;
  copy.devices[1].role = part::Role::standby;
  copy.devices[2].tflops = 9;
  copy.devices[3].tflops = 4.5;
  EXPECT_DOUBLE_EQ(part::testbed_slowdown(copy, 0), 3.0);
  EXPECT_DOUBLE_EQ(part::testbed_slowdown(copy, 1), 1.0);
  EXPECT_DOUBLE_EQ(part::testbed_slowdown(copy, 3), 2.0);

  const auto t = part::scaled(ramp(4, 2.0), 3.0);
  EXPECT_DOUBLE_EQ(t.prefill_ms[2], 3 * (2.0 + 2 * 0.1234567));
  EXPECT_DOUBLE_EQ(t.decode_ms_per_token[3], 3 * 4e-5 / 3);
}

}  // namespace

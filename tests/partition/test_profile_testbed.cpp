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

namespace {

// Batched decode in the cost model, without a profile: per node, max(sum of flops / peak, (weights once + each
// member's KV and activation bytes) / bandwidth), by hand from the graph's costs; batch 1 is the single step.
TEST(CostModelBatch, RooflineReadsTheWeightsOncePerBatch) {
  auto p = load("jetson-quartet");
  const int agx = p->scenario.device_index("agx");
  const auto& dev = p->scenario.devices[static_cast<size_t>(agx)];
  const int d = p->graph.first_decoder_index();
  const std::vector<int> pasts = {100, 350, 700};
  double flops = 0, bytes = 0;
  for (int past : pasts) {
    const auto c = p->graph.decode_cost(d, past);
    flops += c.flops;
    bytes += c.bytes;
  }
  bytes -= 2 * p->graph.node(d).weight_read_bytes;
  const double want = std::max(flops / (dev.tflops * 1e12), bytes / (dev.mem_bw_gbs * 1e9)) * 1e3;
  EXPECT_NEAR(p->cost->node_decode_batch_ms(agx, d, pasts), want, 1e-12 * want);
  const std::vector<int> one = {350};
  EXPECT_EQ(p->cost->decode_batch_ms(agx, d, d + 3, one), p->cost->decode_step_ms(agx, d, d + 3, 350));
  // Memory-bound decode: three steps cost far less than three single steps, more than one.
  double singles = 0;
  for (int past : pasts) singles += p->cost->node_decode_step_ms(agx, d, past);
  EXPECT_LT(want, 0.5 * singles);
  EXPECT_GT(want, p->cost->node_decode_step_ms(agx, d, 350));
  // A request's share of full batches falls with the batch size.
  const int last = p->graph.size() - 1;
  EXPECT_EQ(p->cost->decode_total_share_ms(agx, d, last, 1), p->cost->decode_total_ms(agx, d, last));
  EXPECT_LT(p->cost->decode_total_share_ms(agx, d, last, 8), 0.25 * p->cost->decode_total_ms(agx, d, last));
}

// A profile's batch dimension: written, read back, and interpolated by the cost model (linear in the batch size
// between the measured ones, batch 1 the single step, the last segment's slope beyond); a profile without one still
// loads; a malformed one is refused with the field named.
TEST(CostModelBatch, ProfileBatchTableRoundTripsAndDrivesTheCostModel) {
  auto p = load("jetson-quartet");
  const int n = p->cost->num_nodes();
  auto times = ramp(n, 1.0);
  times.batch_sizes = {2, 4, 8};
  for (int i = 0; i < n; ++i) {
    const double z = times.decode_ms_at_zero[static_cast<size_t>(i)];
    times.decode_batch_ms_at_zero.push_back({1.1 * z, 1.5 * z, 2.3 * z});
  }
  const auto json = part::profile_to_json(p->graph, {{"nano", "", times}});
  auto parsed = part::parse_profile(json, *p->cost, "p.json");
  ASSERT_TRUE(parsed) << parsed.error().to_string();
  EXPECT_EQ((*parsed)[0].times.batch_sizes, times.batch_sizes);
  EXPECT_EQ((*parsed)[0].times.decode_batch_ms_at_zero, times.decode_batch_ms_at_zero);
  const int nano = p->scenario.device_index("nano");
  p->cost->set_profile(nano, (*parsed)[0].times);
  const int d = p->graph.first_decoder_index();
  const double z = times.decode_ms_at_zero[static_cast<size_t>(d)];
  const double k = times.decode_ms_per_token[static_cast<size_t>(d)];
  auto batch = [&](std::vector<int> pasts) { return p->cost->node_decode_batch_ms(nano, d, pasts); };
  EXPECT_NEAR(batch({10, 20}), 1.1 * z + 30 * k, 1e-12);
  EXPECT_NEAR(batch({0, 0, 0}), (1.1 + 0.2) * z, 1e-12);          // between 2 and 4
  EXPECT_NEAR(batch(std::vector<int>(6, 0)), 1.9 * z, 1e-12);      // between 4 and 8
  EXPECT_NEAR(batch(std::vector<int>(16, 1)), (2.3 + 1.6) * z + 16 * k, 1e-12);  // past 8: 0.2 z per member
  EXPECT_NEAR(batch({5}), z + 5 * k, 1e-12);
  // Refused: sizes not ascending, a node without its times, a table of the wrong length.
  auto bad = json;
  bad["batch_sizes"] = {4, 2, 8};
  EXPECT_FALSE(part::parse_profile(bad, *p->cost, "p.json"));
  bad = json;
  bad["nodes"][d].erase("decode_batch_ms_at_zero");
  auto missing = part::parse_profile(bad, *p->cost, "p.json");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("decode_batch_ms_at_zero' is missing"), std::string::npos);
  bad = json;
  bad["nodes"][d]["decode_batch_ms_at_zero"] = {1.0, 2.0};
  EXPECT_FALSE(part::parse_profile(bad, *p->cost, "p.json"));
  bad = json;
  bad.erase("batch_sizes");
  auto orphan = part::parse_profile(bad, *p->cost, "p.json");
  ASSERT_FALSE(orphan);
  EXPECT_NE(orphan.error().message.find("needs the entry's 'batch_sizes'"), std::string::npos);
}

}  // namespace

#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "adaptlink/partition/profile.hpp"
#include "adaptlink/sim/simulator.hpp"
#include "helpers.hpp"

namespace adaptlink::sim::testing {
namespace {

// The parser lives in partition/ (exec/ plans with profiles too); the simulator applies what it sets.
using part::load_profile;
using part::parse_profile;

nlohmann::json profile_for(const part::CostModel& cost, const std::string& key, const std::string& value,
                           double prefill_ms, double zero_ms, double per_token_ms) {
  nlohmann::json nodes = nlohmann::json::array();
  for (int i = 0; i < cost.num_nodes(); ++i) {
    nodes.push_back({{"name", cost.graph().node(i).name},
                     {"prefill_ms", prefill_ms},
                     {"decode_ms_at_zero", zero_ms},
                     {"decode_ms_per_token", per_token_ms}});
  }
  return {{key, value}, {"nodes", nodes}};
}

TEST(Profile, ReplacesTheRooflineOfTheNamedDevice) {
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  auto& cost = *p->cost;
  const int agx = p->scenario.device_index("agx");
  const int nx = p->scenario.device_index("nx");
  const double nx_before = cost.prefill_ms(nx, 0, cost.num_nodes() - 1);
  auto profiles = parse_profile(profile_for(cost, "device", "agx", 2.0, 0.5, 0.001), cost, "p.json");
  ASSERT_TRUE(profiles) << profiles.error().to_string();
  ASSERT_EQ(profiles->size(), 1u);
  for (int d : (*profiles)[0].devices) cost.set_profile(d, (*profiles)[0].times);
  EXPECT_DOUBLE_EQ(cost.prefill_ms(agx, 0, 9), 20.0);
  const int last = cost.num_nodes() - 1;
  EXPECT_NEAR(cost.decode_step_ms(agx, last, last, 100), 0.5 + 0.1, 1e-12);
  EXPECT_DOUBLE_EQ(cost.prefill_ms(nx, 0, cost.num_nodes() - 1), nx_before);

  // The simulator then runs with those times: one request alone takes the new closed form.
  auto sc = p->scenario;
  sc.workload.in_flight = 1;
  sc.workload.requests = 2;
  auto q = problem(sc);
  for (int d : (*profiles)[0].devices) q->cost->set_profile(d, (*profiles)[0].times);
  auto pl = plan(*q, "adaptlink");
  auto r = simulate(*q->cost, pl);
  ASSERT_TRUE(r);
  const double expected = alone_ms(*q->cost, pl);
  EXPECT_NEAR(r->latency_ms.p50, expected, 1e-3 * expected);
}

TEST(Profile, KindAndListForms) {
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  const auto kind = p->scenario.devices[0].kind;
  ASSERT_FALSE(kind.empty());
  nlohmann::json list = {{"profiles",
                          {profile_for(*p->cost, "kind", kind, 1, 1, 0), profile_for(*p->cost, "device", "nx", 1, 1, 0)}}};
  auto profiles = parse_profile(list, *p->cost, "p.json");
  ASSERT_TRUE(profiles) << profiles.error().to_string();
  ASSERT_EQ(profiles->size(), 2u);
  EXPECT_EQ((*profiles)[0].devices, std::vector<int>{0});
}

TEST(Profile, ErrorsNameTheFileAndTheProblem) {
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  const auto& cost = *p->cost;
  auto j = profile_for(cost, "device", "agx", 1, 1, 0);
  j["nodes"].erase(j["nodes"].size() - 1);
  auto r = parse_profile(j, cost, "p.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().to_string().find("p.json: profile: node 'head'"), std::string::npos) << r.error().to_string();

  j = profile_for(cost, "device", "toaster", 1, 1, 0);
  r = parse_profile(j, cost, "p.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("no device 'toaster'"), std::string::npos);

  j = profile_for(cost, "device", "agx", 1, 1, 0);
  j["nodes"][3]["prefill_ms"] = -1;
  r = parse_profile(j, cost, "p.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("nodes[3]: 'prefill_ms' must be >= 0"), std::string::npos) << r.error().message;

  j = profile_for(cost, "device", "agx", 1, 1, 0);
  j["nodes"][0]["prefil_ms"] = 1;
  r = parse_profile(j, cost, "p.json");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("unknown key 'prefil_ms'"), std::string::npos);

  const auto file = std::filesystem::temp_directory_path() / "adaptlink-bad-profile.json";
  std::ofstream(file) << "{\"device\": ";
  auto loaded = load_profile(file, cost);
  ASSERT_FALSE(loaded);
  EXPECT_EQ(loaded.error().file, file.string());
  std::filesystem::remove(file);
  EXPECT_FALSE(load_profile("/nonexistent/profile.json", cost));
}

}  // namespace
}  // namespace adaptlink::sim::testing

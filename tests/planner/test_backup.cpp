// Backup placement: every backup fits its holder, no device backs itself, standby devices are used
// first, the highest dropout rate is served first, and stages without room are listed.
#include <gtest/gtest.h>

#include "adaptlink/planner/backup.hpp"
#include "adaptlink/planner/planner.hpp"
#include "adaptlink/partition/problem.hpp"

namespace part = adaptlink::partition;

namespace {

std::unique_ptr<part::Problem> load(const std::string& name) {
  auto p = part::load_problem(std::string(ADAPTLINK_SOURCE_DIR) + "/scenarios/" + name + ".toml");
  EXPECT_TRUE(p) << (p ? "" : p.error().to_string());
  return std::move(*p);
}

void expect_consistent(const part::Problem& p, const part::Plan& plan) {
  std::vector<double> used(p.scenario.devices.size(), 0.0);
  for (const auto& st : plan.stages) used[st.device] += st.memory_bytes;
  std::vector<int> covered(plan.stages.size(), 0);
  for (const auto& b : plan.backups) {
    double sum = 0;
    for (int s : b.covers) {
      EXPECT_NE(plan.stages[s].device, b.device) << "a device backs up its own stage";
      sum += plan.stages[s].memory_bytes;
      covered[s]++;
    }
    EXPECT_DOUBLE_EQ(sum, b.memory_bytes);
    used[b.device] += b.memory_bytes;
  }
  for (size_t d = 0; d < used.size(); ++d) EXPECT_LE(used[d], p.scenario.devices[d].mem_bytes) << d;
  for (int s : plan.unbacked_stages) EXPECT_EQ(covered[s], 0);
  for (size_t s = 0; s < covered.size(); ++s) {
    EXPECT_LE(covered[s], 1);
    const bool listed = std::count(plan.unbacked_stages.begin(), plan.unbacked_stages.end(), static_cast<int>(s)) > 0;
    EXPECT_EQ(covered[s] == 0, listed) << "stage " << s;
  }
}

}  // namespace

TEST(Backup, StandbyHoldsTheDroppingDevicesStageFirst) {
  auto p = load("jetson-quartet-dropout");
  auto plan = part::make_plan(*p->cost, "adaptlink", part::Objective::throughput);
  ASSERT_TRUE(plan);
  part::place_backups(*p->cost, *plan);
  expect_consistent(*p, *plan);
  const int nx = p->scenario.device_index("nx");
  const int spare = p->scenario.device_index("spare");
  int nx_stage = -1;
  for (size_t s = 0; s < plan->stages.size(); ++s)
    if (plan->stages[s].device == nx) nx_stage = static_cast<int>(s);
  ASSERT_GE(nx_stage, 0);
  bool spare_covers_nx = false;
  for (const auto& b : plan->backups)
    if (b.device == spare) spare_covers_nx = std::count(b.covers.begin(), b.covers.end(), nx_stage) > 0;
  EXPECT_TRUE(spare_covers_nx) << "the standby should back up the device with the highest dropout rate";
  // The quartet has plenty of spare memory (AGX 60 GB): every stage is backed.
  EXPECT_TRUE(plan->unbacked_stages.empty());
}

TEST(Backup, NoSpareMemoryMeansUnbackedStagesAreListed) {
  auto p = load("jetson-quartet");
  auto plan = part::make_plan(*p->cost, "adaptlink", part::Objective::throughput);
  ASSERT_TRUE(plan);
  // Squeeze every device to its stage's needs: nothing can hold a backup.
  for (const auto& st : plan->stages) p->scenario.devices[st.device].mem_bytes = st.memory_bytes;
  part::place_backups(*p->cost, *plan);
  expect_consistent(*p, *plan);
  EXPECT_TRUE(plan->backups.empty());
  EXPECT_EQ(plan->unbacked_stages.size(), plan->stages.size());
}

TEST(Backup, RedeployTimeIsWeightsOverTheLink) {
  auto p = load("jetson-quartet");
  auto plan = part::make_plan(*p->cost, "uniform", part::Objective::throughput);
  ASSERT_TRUE(plan);
  const auto& st = plan->stages[1];
  const auto link = p->scenario.network.access_link(st.device);
  const double expected = link.latency_ms + p->cost->weight_bytes(st.first_node, st.last_node) * 8 /
                                                (link.bandwidth_mbps * 1e6) * 1e3;
  EXPECT_NEAR(part::redeploy_ms(*p->cost, st, st.device), expected, 1e-9 * expected);
  EXPECT_GT(expected, 10000);  // eight 7B layers over Wi-Fi take tens of seconds
}

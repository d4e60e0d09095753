// runtime::RecoveryPolicy as tables of cluster states -> decisions, with a stand-in planner (no planner library):
// switch-over to a backup, the re-plan and its rule, the memory-checked least-loaded redeploy, the backup holder
// lost first, the same stage lost twice, a rejoin's rebalance and the dropout that cancels it.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>

#include "adaptlink/partition/problem.hpp"
#include "adaptlink/runtime/recovery.hpp"

namespace adaptlink::runtime {
namespace {

using partition::Stage;

// Three 16 GB boards in a pipeline and a standby spare; LLaVA-1.5-7B fp16 (13.5 GB of weights) in three stages.
std::unique_ptr<partition::Problem> problem(double spare_gb = 16, double active_gb = 16) {
  const std::string text = fmt::format(R"(
name = "recovery"
[model]
preset = "llava-1.5-7b"
dtype = "fp16"
[[devices]]
name = "a"
tflops = 10
mem_gb = {1}
mem_bw_gbs = 100
[[devices]]
name = "b"
tflops = 20
mem_gb = {1}
mem_bw_gbs = 100
[[devices]]
name = "c"
tflops = 10
mem_gb = {1}
mem_bw_gbs = 100
[[devices]]
name = "spare"
tflops = 10
mem_gb = {0}
mem_bw_gbs = 100
role = "standby"
[network]
bandwidth_mbps = 400
latency_ms = 2.0
[workload]
in_flight = 2
prompt_tokens = 32
output_tokens = 16
)",
                                       spare_gb, active_gb);
  auto sc = partition::parse_scenario(text, "recovery.toml");
  EXPECT_TRUE(sc) << sc.error().to_string();
  return partition::make_problem(std::move(*sc));
}

constexpr int A = 0, B = 1, C = 2, SPARE = 3;

// Contiguous stages over `devices`, the decoder layers split evenly (vision and text_embed with the first).
std::vector<Stage> split(const partition::CostModel& cost, const std::vector<int>& devices) {
  const int n = cost.num_nodes();
  const int first_decoder = cost.graph().first_decoder_index();
  const int per = (n - first_decoder) / static_cast<int>(devices.size());
  std::vector<Stage> stages;
  int next = 0;
  for (size_t i = 0; i < devices.size(); ++i) {
    Stage st;
    st.device = devices[i];
    st.first_node = next;
    st.last_node = i + 1 == devices.size() ? n - 1 : first_decoder + per * static_cast<int>(i + 1) - 1;
    next = st.last_node + 1;
    stages.push_back(st);
  }
  return stages;
}

// The stand-in planner: splits evenly over the active devices that have memory, in scenario order, and records the
// scenario it was given.
struct EvenPlanner {
  std::shared_ptr<std::vector<partition::Scenario>> seen = std::make_shared<std::vector<partition::Scenario>>();
  PlanFunction function() const {
    return [seen = seen](const partition::CostModel& cost) -> Expected<partition::Plan> {
      seen->push_back(cost.scenario());
      std::vector<int> devices;
      for (size_t d = 0; d < cost.scenario().devices.size(); ++d) {
        const auto& dev = cost.scenario().devices[d];
        if (dev.role == partition::Role::active && dev.mem_bytes > 0) devices.push_back(static_cast<int>(d));
      }
      if (devices.empty()) return make_error("no device");
      partition::Plan plan;
      plan.stages = split(cost, devices);
      return plan;
    };
  }
};

Placement three_stages(const partition::CostModel& cost, bool spare_backs_b) {
  Placement p;
  p.stages = split(cost, {A, B, C});
  if (spare_backs_b) p.backups.push_back({SPARE, {1}, cost.memory_bytes(p.stages[1].first_node, p.stages[1].last_node)});
  return p;
}

ClusterState all_up(const partition::CostModel& cost, Placement p) {
  return ClusterState::start(cost, std::move(p), std::vector<bool>(4, true));
}

std::vector<NodeRange> text_nodes(const partition::CostModel& cost, const Stage& st) {
  const int from = std::max(st.first_node, cost.graph().text_embed_index());
  if (from > st.last_node) return {};
  return {{from, st.last_node}};
}

TEST(Recovery, ABackupHolderTakesOverItsStageWithoutLoading) {
  auto p = problem();
  const auto& cost = *p->cost;
  const RecoveryPolicy policy(cost, EvenPlanner{}.function(), true);
  auto state = all_up(cost, three_stages(cost, true));
  auto plan = policy.on_dropout(state, B);
  ASSERT_TRUE(plan) << plan.error().to_string();
  EXPECT_EQ(plan->action, RecoveryAction::switch_over);
  ASSERT_EQ(plan->moves.size(), 1u);
  EXPECT_EQ(plan->moves[0], (Move{1, B, SPARE, true}));
  EXPECT_EQ(plan->placement.stages[1].device, SPARE);
  EXPECT_TRUE(plan->placement.backups.empty());  // the copy became the stage
  EXPECT_EQ(plan->ready_ms, 0.0);
  EXPECT_EQ(plan->placement.epoch, 1);
  EXPECT_EQ(plan->rebuild[1], text_nodes(cost, state.placement.stages[1]));
  EXPECT_TRUE(plan->rebuild[0].empty() && plan->rebuild[2].empty());
  apply(state, *plan);
  EXPECT_FALSE(state.alive[B]);
  EXPECT_FALSE(state.holds_nodes(B, 0, 0));
  EXPECT_EQ(state.placement.stages[1].device, SPARE);
}

TEST(Recovery, WithoutACopyThePlannerReplansOnTheDevicesUpUnderTheRule) {
  auto p = problem();
  const auto& cost = *p->cost;
  EvenPlanner planner;
  const RecoveryPolicy policy(cost, planner.function(), false);
  auto state = all_up(cost, three_stages(cost, false));
  auto plan = policy.on_dropout(state, B);
  ASSERT_TRUE(plan) << plan.error().to_string();
  EXPECT_EQ(plan->action, RecoveryAction::replan);
  // The rule: the lost device is a standby without memory; the live standby stands in.
  ASSERT_EQ(planner.seen->size(), 1u);
  const auto& sc = planner.seen->front();
  EXPECT_EQ(sc.devices[B].role, partition::Role::standby);
  EXPECT_EQ(sc.devices[B].mem_bytes, 0);
  EXPECT_EQ(sc.devices[SPARE].role, partition::Role::active);
  EXPECT_FALSE(sc.planner.backups);
  EXPECT_FALSE(sc.planner.replicas);
  EXPECT_TRUE(sc.faults.empty());
  const auto want = split(cost, {A, C, SPARE});
  EXPECT_EQ(plan->placement.stages, want);
  EXPECT_TRUE(plan->stages_changed);
  // Loads: every device loads the nodes of its new stage that it did not hold, over its link.
  const auto before = state.placement.node_devices(cost.num_nodes());
  for (const auto& st : want) {
    double ms = 0;
    for (int n = st.first_node; n <= st.last_node;) {
      if (before[static_cast<size_t>(n)] == st.device) {
        ++n;
        continue;
      }
      int m = n;
      while (m + 1 <= st.last_node && before[static_cast<size_t>(m) + 1] != st.device) ++m;
      ms += partition::load_ms(cost, st.device, n, m);
      n = m + 1;
    }
    EXPECT_NEAR(plan->load_ms[static_cast<size_t>(st.device)], ms, 1e-9) << st.device;
  }
  EXPECT_EQ(plan->load_ms[B], 0.0);
  EXPECT_DOUBLE_EQ(plan->ready_ms, *std::max_element(plan->load_ms.begin(), plan->load_ms.end()));
  // Rebuilds: the text nodes whose device changed, per new stage.
  for (size_t s = 0; s < want.size(); ++s) {
    for (const auto& run : plan->rebuild[s]) {
      for (int n = run.first; n <= run.last; ++n) {
        EXPECT_NE(before[static_cast<size_t>(n)], want[s].device);
        EXPECT_GE(n, cost.graph().text_embed_index());
      }
    }
  }
  apply(state, *plan);
  EXPECT_EQ(state.placement.stages, want);
  EXPECT_TRUE(state.holds_nodes(SPARE, want[2].first_node, want[2].last_node));
}

TEST(Recovery, WithoutAPlanTheStageGoesToTheLeastLoadedDeviceWithRoom) {
  // The spare has no room for b's stage: a or c, whichever computes less, with room.
  auto p = problem(/*spare_gb=*/1);
  const auto& cost = *p->cost;
  const RecoveryPolicy policy(cost, nullptr, false);
  auto state = all_up(cost, three_stages(cost, false));
  auto plan = policy.on_dropout(state, B);
  ASSERT_TRUE(plan) << plan.error().to_string();
  EXPECT_EQ(plan->action, RecoveryAction::redeploy);
  ASSERT_EQ(plan->moves.size(), 1u);
  auto load = [&](int d) {
    const auto& st = state.placement.stages[static_cast<size_t>(d == A ? 0 : 2)];
    return cost.prefill_ms(d, st.first_node, st.last_node) + cost.decode_total_ms(d, st.first_node, st.last_node);
  };
  const int expect = load(A) <= load(C) ? A : C;
  EXPECT_EQ(plan->moves[0], (Move{1, B, expect, false}));
  const auto& st = state.placement.stages[1];
  EXPECT_NEAR(plan->load_ms[static_cast<size_t>(expect)], partition::redeploy_ms(cost, st, expect), 1e-9);
  EXPECT_GT(plan->ready_ms, 0);
  // With the spare's room it is the least loaded (it runs nothing).
  auto roomy = problem();
  const RecoveryPolicy roomy_policy(*roomy->cost, nullptr, false);
  auto moved = roomy_policy.on_dropout(all_up(*roomy->cost, three_stages(*roomy->cost, false)), B);
  ASSERT_TRUE(moved);
  EXPECT_EQ(moved->moves[0].to, SPARE);
}

TEST(Recovery, NoDeviceWithRoomIsAnErrorNamingTheStage) {
  // 5 GB boards: each holds its own stage and nothing more.
  auto p = problem(/*spare_gb=*/1, /*active_gb=*/5.5);
  const auto& cost = *p->cost;
  const RecoveryPolicy policy(cost, nullptr, false);
  auto plan = policy.on_dropout(all_up(cost, three_stages(cost, false)), B);
  ASSERT_FALSE(plan);
  EXPECT_NE(plan.error().message.find("device 'b' held stage 1"), std::string::npos) << plan.error().message;
  EXPECT_NE(plan.error().message.find("no surviving device"), std::string::npos);
}

TEST(Recovery, TheBackupHolderLostFirstLeavesARedeploy) {
  auto p = problem();
  const auto& cost = *p->cost;
  const RecoveryPolicy policy(cost, nullptr, true);
  auto state = all_up(cost, three_stages(cost, true));
  auto first = policy.on_dropout(state, SPARE);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->action, RecoveryAction::none);  // it held no stage
  EXPECT_TRUE(first->placement.backups.empty());   // its backups are gone with it
  apply(state, *first);
  auto second = policy.on_dropout(state, B);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->action, RecoveryAction::redeploy);
  EXPECT_NE(second->moves[0].to, SPARE);
  EXPECT_FALSE(second->moves[0].from_backup);
  EXPECT_GT(second->ready_ms, 0);
}

TEST(Recovery, TheSameStageLostTwiceMovesAgain) {
  auto p = problem();
  const auto& cost = *p->cost;
  const RecoveryPolicy policy(cost, nullptr, true);
  auto state = all_up(cost, three_stages(cost, true));
  auto first = policy.on_dropout(state, B);
  ASSERT_TRUE(first);
  apply(state, *first);
  auto second = policy.on_dropout(state, SPARE);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->action, RecoveryAction::redeploy);
  ASSERT_EQ(second->moves.size(), 1u);
  EXPECT_EQ(second->moves[0].stage, 1);
  EXPECT_EQ(second->moves[0].from, SPARE);
  EXPECT_TRUE(second->moves[0].to == A || second->moves[0].to == C);
  EXPECT_EQ(second->placement.epoch, 2);
  // A device lost twice: nothing happens the second time.
  apply(state, *second);
  auto again = policy.on_dropout(state, SPARE);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->ignored);
}

TEST(Recovery, ARejoinRebalancesAndADropoutCancelsThePendingRebalance) {
  auto p = problem();
  const auto& cost = *p->cost;
  EvenPlanner planner;
  const RecoveryPolicy policy(cost, planner.function(), true);
  auto state = all_up(cost, three_stages(cost, true));
  auto lost = policy.on_dropout(state, B);
  ASSERT_TRUE(lost);
  apply(state, *lost);
  EXPECT_TRUE(policy.on_rejoin(state, A).ignored);  // a's up: nothing to rejoin
  auto back = policy.on_rejoin(state, B);
  EXPECT_EQ(back.action, RecoveryAction::rebalance);
  EXPECT_TRUE(back.stages_changed);
  // The rule on a rejoin: the scenario's roles (the spare stays standby).
  EXPECT_EQ(planner.seen->back().devices[SPARE].role, partition::Role::standby);
  EXPECT_EQ(back.placement.stages, split(cost, {A, B, C}));
  EXPECT_NEAR(back.load_ms[B],
              partition::load_ms(cost, B, back.placement.stages[1].first_node, back.placement.stages[1].last_node), 1e-9);
  apply(state, back);
  ASSERT_TRUE(state.pending.has_value());
  EXPECT_TRUE(state.alive[B]);
  EXPECT_FALSE(state.holds_nodes(B, back.placement.stages[1].first_node, back.placement.stages[1].first_node));
  // c drops out before the switch: the rebalance is cancelled; c's stage has no copy, so the planner re-plans on the
  // devices up, b included (nothing left to rebalance after it).
  auto c_lost = policy.on_dropout(state, C);
  ASSERT_TRUE(c_lost);
  EXPECT_EQ(c_lost->action, RecoveryAction::replan);
  EXPECT_FALSE(c_lost->rebalance_after);
  EXPECT_EQ(c_lost->placement.stages, split(cost, {A, B, SPARE}));
  apply(state, *c_lost);
  EXPECT_FALSE(state.pending.has_value());
  // When c's stage moves instead (the planner has no plan for a dropout), the rebalance is planned again once c's
  // recovery is in place.
  PlanFunction rejoins_only = [even = planner.function()](const partition::CostModel& c) -> Expected<partition::Plan> {
    if (c.scenario().devices[SPARE].role == partition::Role::active) return make_error("no plan");
    return even(c);
  };
  const RecoveryPolicy moving(cost, rejoins_only, true);
  auto state3 = all_up(cost, three_stages(cost, true));
  apply(state3, *moving.on_dropout(state3, B));
  apply(state3, moving.on_rejoin(state3, B));
  ASSERT_TRUE(state3.pending.has_value());
  auto moved = moving.on_dropout(state3, C);
  ASSERT_TRUE(moved);
  EXPECT_EQ(moved->action, RecoveryAction::redeploy);
  EXPECT_TRUE(moved->rebalance_after);
  apply(state3, *moved);
  EXPECT_FALSE(state3.pending.has_value());
  EXPECT_EQ(moving.rebalance(state3).action, RecoveryAction::rebalance);
  // Without the dropout the switch commits: b holds its stage again and the spare drops what it does not need.
  auto state2 = all_up(cost, three_stages(cost, true));
  apply(state2, *policy.on_dropout(state2, B));
  apply(state2, policy.on_rejoin(state2, B));
  commit_rebalance(state2);
  EXPECT_EQ(state2.placement.stages, split(cost, {A, B, C}));
  EXPECT_TRUE(state2.holds_nodes(B, state2.placement.stages[1].first_node, state2.placement.stages[1].last_node));
  EXPECT_FALSE(state2.holds_nodes(SPARE, state2.placement.stages[1].first_node, state2.placement.stages[1].last_node));
}

TEST(Recovery, ARejoinThatKeepsTheStagesOnlyPreloadsTheNewBackups) {
  auto p = problem();
  const auto& cost = *p->cost;
  // A planner that keeps a, b, c and puts stage 1's backup on the spare.
  PlanFunction planner = [](const partition::CostModel& c) -> Expected<partition::Plan> {
    partition::Plan plan;
    plan.stages = split(c, {A, B, C});
    plan.backups.push_back({SPARE, {1}, 0});
    return plan;
  };
  const RecoveryPolicy policy(cost, planner, true);
  auto state = all_up(cost, three_stages(cost, true));
  auto lost = policy.on_dropout(state, SPARE);  // the backup holder: nothing moves
  ASSERT_TRUE(lost);
  apply(state, *lost);
  auto back = policy.on_rejoin(state, SPARE);
  EXPECT_EQ(back.action, RecoveryAction::rebalance);
  EXPECT_FALSE(back.stages_changed);
  const auto& st = state.placement.stages[1];
  EXPECT_NEAR(back.load_ms[SPARE], partition::load_ms(cost, SPARE, st.first_node, st.last_node), 1e-9);
  EXPECT_EQ(back.load_ms[A] + back.load_ms[B] + back.load_ms[C], 0.0);
}

TEST(Recovery, CommittedMemoryCountsStagesAndTheBackupsStillHeld) {
  auto p = problem();
  const auto& cost = *p->cost;
  auto state = all_up(cost, three_stages(cost, true));
  const auto& st = state.placement.stages[1];
  const double stage_bytes = cost.memory_bytes(st.first_node, st.last_node);
  EXPECT_DOUBLE_EQ(state.committed_bytes(cost, SPARE), stage_bytes);
  EXPECT_DOUBLE_EQ(state.committed_bytes(cost, B), stage_bytes);
  state.alive[SPARE] = false;
  EXPECT_EQ(state.committed_bytes(cost, SPARE), 0.0);
  // A device that came back empty holds no backup any more.
  state.alive[SPARE] = true;
  std::fill(state.holds[SPARE].begin(), state.holds[SPARE].end(), false);
  EXPECT_EQ(state.committed_bytes(cost, SPARE), 0.0);
}

TEST(Recovery, DescribeNamesDevicesInTheFaultRecord) {
  auto p = problem();
  const auto& cost = *p->cost;
  const RecoveryPolicy policy(cost, nullptr, true);
  auto state = all_up(cost, three_stages(cost, true));
  auto plan = policy.on_dropout(state, B);
  ASSERT_TRUE(plan);
  FaultRecord rec;
  describe(*plan, cost.scenario(), rec);
  ASSERT_TRUE(rec.action.has_value());
  EXPECT_EQ(*rec.action, RecoveryAction::switch_over);
  ASSERT_EQ(rec.moves.size(), 1u);
  EXPECT_EQ(rec.moves[0], (FaultMove{1, "b", "spare", true}));
  EXPECT_TRUE(rec.placement.empty());
}

}  // namespace
}  // namespace adaptlink::runtime

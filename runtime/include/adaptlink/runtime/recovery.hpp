// The recovery policy: who takes over a lost stage, when the planner re-plans, what a returning device gets.
// One piece of code for both back-ends: the simulator's fault actor calls it when it detects a dropout or a
// rejoin, the coordinator when it finds a worker lost or back; each then carries the decision out with its own
// mechanism (SimGrid actors and sleeps; routes, preloads and rebuild steps).
//
// On a dropout of device d (RecoveryPolicy::on_dropout):
//   1. every stage of d that a live device holds a preloaded copy of (a backup) moves there: the holder with the
//      least compute load (the compute time of the stages it runs; the lowest index on a tie), no load needed;
//   2. if some stage of d has no live copy, the planner re-plans (the re-plan rule below) and every device loads
//      the weights it lacks over its link; when the devices up cannot hold the model by the planner,
//   3. the stages without a copy are redeployed one by one on the live device with the least compute load that
//      has room for them (its stages, the backups it holds and the stage within its memory; standby devices
//      included), which loads their weights first. With no such device the dropout cannot be recovered (an error
//      naming the stage).
//   Requests in flight rebuild the KV caches of the text layers whose device changed (RecoveryPlan::rebuild).
//   A rebalance that was pending (a rejoin's, not yet switched) is cancelled; once this recovery is in place the
//   back-end plans it again (RecoveryPlan::rebalance_after, RecoveryPolicy::rebalance).
// On a rejoin (RecoveryPolicy::on_rejoin): the device is back, empty. The planner re-plans on the devices up; if the
// stages stay, devices preload the new plan's backups they lack; if they change, every device preloads what it
// lacks while the old placement serves and the back-end switches at a safe point (commit_rebalance). When no plan
// fits, or there is no planner, the device is a spare: a redeploy target for later dropouts.
//
// The re-plan rule: the scenario with every device that is not up made a standby without memory (it can hold
// neither a stage nor a backup); after a dropout the live standby devices stand in as active ones, after a rejoin
// the scenario's roles hold (standby devices go back to holding backups); backups when the running plan had any;
// one pipeline (no replicas), no faults; the base cost model's profiles and slowdowns.
//
// A placement serves once every device has loaded what it lacks for it (RecoveryPlan::load_ms: its stages' and its
// backups' weights over its link, partition::load_ms per contiguous run of nodes it does not hold).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <tuple>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/partition/cost_model.hpp"
#include "adaptlink/partition/plan.hpp"
#include "adaptlink/runtime/faults.hpp"
#include "adaptlink/runtime/placement.hpp"
#include "adaptlink/runtime/report.hpp"

namespace adaptlink::runtime {

struct NodeRange {
  int first = 0;
  int last = 0;
  bool operator==(const NodeRange&) const = default;
};

// A stage that changes device.
struct Move {
  int stage = 0;
  int from = -1;
  int to = -1;
  bool from_backup = false;  // `to` held a preloaded copy
  bool operator==(const Move&) const = default;
};

// A decision of the policy (dropout or rejoin of `device`), and what carrying it out involves.
struct RecoveryPlan {
  partition::FaultKind kind = partition::FaultKind::dropout;  // dropout | rejoin (rebalance(): rejoin)
  int device = -1;
  bool ignored = false;  // the device was already lost (dropout) or up (rejoin): nothing happens
  RecoveryAction action = RecoveryAction::none;
  std::vector<Move> moves;       // switch_over, redeploy
  Placement placement;           // what serves once the plan is in place (the current placement for none)
  bool stages_changed = false;   // placement's stages differ from the placement before
  std::vector<double> load_ms;   // per device: the weights it loads over its link before `placement` serves
  double ready_ms = 0;           // max of load_ms
  // Per stage of `placement`: the runs of its text nodes whose KV caches are rebuilt there (their device changed).
  std::vector<std::vector<NodeRange>> rebuild;
  bool rebalance_after = false;  // a dropout cancelled a pending rebalance: plan it again once this one is in place
};

// What the cluster looks like to the policy. Back-ends change it only through apply() and commit_rebalance().
struct ClusterState {
  Placement placement;
  std::vector<bool> alive;               // per scenario device: up (a device without a worker never is)
  std::vector<std::vector<bool>> holds;  // [device][node]: the node's weights are loaded there
  std::optional<RecoveryPlan> pending;   // a rejoin's rebalance, preloaded, waiting for its safe point

  // The placement's devices hold their stages' and backups' nodes.
  static ClusterState start(const partition::CostModel& cost, Placement placement, std::vector<bool> alive);
  [[nodiscard]] bool holds_nodes(int device, int first, int last) const;
  // Memory the device commits: its stages, and the backups whose nodes it holds (0 when it is down).
  [[nodiscard]] double committed_bytes(const partition::CostModel& cost, int device) const;
};

// The back-end's planner for a re-plan's problem (partition::make_plan with the scenario's planner and objective).
using PlanFunction = std::function<Expected<partition::Plan>(const partition::CostModel& cost)>;
// Re-plans by (backups, stand-in, devices up): sweeps and repeated fault sequences reuse them.
using ReplanCache = std::map<std::tuple<bool, bool, std::vector<bool>>, std::optional<Placement>>;

class RecoveryPolicy {
 public:
  // `plan` empty: never re-plan (moves only; a rejoined device is a spare). `with_backups`: re-plans place
  // backups. `cache` (optional, not owned) memoises re-plans.
  RecoveryPolicy(const partition::CostModel& cost, PlanFunction plan, bool with_backups,
                 ReplanCache* cache = nullptr);

  // An error when some stage of the lost device has nowhere to go.
  [[nodiscard]] Expected<RecoveryPlan> on_dropout(const ClusterState& state, int device) const;
  [[nodiscard]] RecoveryPlan on_rejoin(const ClusterState& state, int device) const;
  // A rebalance on the devices up (after a dropout that cancelled one).
  [[nodiscard]] RecoveryPlan rebalance(const ClusterState& state) const;

  // The re-plan rule's scenario (see above).
  [[nodiscard]] partition::Scenario replan_scenario(const std::vector<bool>& alive, bool stand_in) const;
  [[nodiscard]] const partition::CostModel& cost() const { return cost_; }

 private:
  [[nodiscard]] std::optional<Placement> replan(const std::vector<bool>& alive, bool stand_in) const;
  RecoveryPlan rebalance_on(const ClusterState& state, std::vector<bool> alive,
                            std::vector<std::vector<bool>> holds, RecoveryPlan p) const;
  void fill_loads(RecoveryPlan& p, const Placement& before, const std::vector<std::vector<bool>>& holds) const;

  const partition::CostModel& cost_;
  PlanFunction plan_;
  bool with_backups_;
  ReplanCache* cache_;
};

// The state once the back-end has carried `plan` out (a dropout's moves or re-placement, its loads done), or started
// to (a rebalance becomes pending; its preloads count once it switches). A dropout cancels a pending rebalance.
void apply(ClusterState& state, const RecoveryPlan& plan);
// The safe point of a pending rebalance: its placement serves; devices drop the weights it does not need.
void commit_rebalance(ClusterState& state);

// The decision in a report's faults[] entry (action, moves, placement by device name).
void describe(const RecoveryPlan& plan, const partition::Scenario& scenario, FaultRecord& record);

}  // namespace adaptlink::runtime

// When the simulated faults happen, are detected and are recovered from: the fault actor's agenda (SimGrid-free).
// The decisions are runtime::RecoveryPolicy's, taken at detection time with the cluster state of that moment, as
// the coordinator takes them on real workers; this only orders them in simulated time:
//   dropout   injected at at_s (the device stops), detected heartbeat_timeout_s later (the decision), recovered
//             once the plan's weights are loaded (ready_ms later: stages move, requests rebuild their caches);
//   rejoin    injected at at_s (the device runs again, empty), detected at its first heartbeat
//             (heartbeat_interval_s later: the decision); a rebalance switches ready_ms later, at a safe point;
//   slowdown, link   applied at at_s.
// Recoveries go one at a time, as the coordinator's do: while a dropout's recovery loads its weights, a further
// dropout is detected (decided) and a rebalance switches only once that recovery is in place; a rejoin is
// detected and its rebalance planned (on the placement the recovery leads to) meanwhile.
// A dropout detected before a pending rebalance switches cancels it; the rebalance is planned again once that
// dropout's recovery is in place. The engine (engine.cpp) carries each action out; sweeps run the agenda without
// an engine to learn whether a fault list can be survived (dry_run).
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/runtime/recovery.hpp"
#include "pipeline.hpp"

namespace adaptlink::sim::detail {

class FaultTimeline {
 public:
  enum class What {
    inject,   // fault `fault` happens (dropout: the device stops; rejoin: it runs again; slowdown; link)
    detect,   // fault `fault` is detected: `plan` is the policy's decision (ignored: nothing to do)
    recover,  // a dropout's `plan` is ready: its stages move (or the re-placement takes over)
    switch_placement,  // a rebalance's `plan` switches at a safe point (for fault `fault`, a rejoin)
  };
  struct Action {
    double at_s = 0;
    What what = What::inject;
    size_t fault = 0;  // index into the setup's faults
    runtime::RecoveryPlan plan;  // detect, recover, switch_placement
    // switch_placement: the rejoins whose rebalance it is (a rejoin while one is pending, or a re-plan of one a
    // dropout cancelled, takes the earlier ones over), and which pending rebalance it is.
    std::vector<size_t> completes;
    long long id = 0;
  };

  FaultTimeline(const FaultSetup& setup, const runtime::Placement& placement, int devices);

  [[nodiscard]] bool done() const { return agenda_.empty(); }
  [[nodiscard]] double next_time() const;
  // Takes the next action and decides what it needs (the policy at a detection). An error: a dropout that leaves
  // some stage nowhere to run.
  Expected<Action> next();
  // The engine finished a dropout's recovery (`recover`): plans the rebalance it cancelled, if any.
  void recovered(const Action& recover, double now_s);
  // Whether a switch_placement action is still the pending rebalance (a later dropout may have cancelled it).
  [[nodiscard]] bool still_pending(const Action& switch_action) const;
  // The rebalance switched: its placement serves.
  void switched();
  [[nodiscard]] const runtime::ClusterState& state() const { return state_; }

  // Runs the whole agenda without an engine: an error when some dropout cannot be recovered.
  static Expected<Ok> dry_run(const FaultSetup& setup, const runtime::Placement& placement, int devices);

 private:
  void schedule(Action action);
  [[nodiscard]] bool waits(const Action& a) const;  // held back behind a recovery in progress

  const FaultSetup& setup_;
  runtime::RecoveryPolicy policy_;
  runtime::ClusterState state_;
  std::multimap<double, Action> agenda_;  // by time; equal times in insertion order
  bool recovering_ = false;   // a dropout's recovery is scheduled and not yet in place
  long long pending_id_ = 0;  // the rebalance pending in state_ (0: none)
  long long next_id_ = 0;
  std::vector<size_t> pending_faults_;    // the rejoins the pending rebalance completes
  std::vector<size_t> cancelled_faults_;  // the rejoins of a rebalance a dropout cancelled (planned again after it)
};

}  // namespace adaptlink::sim::detail

#include "fault_timeline.hpp"

#include <algorithm>

#include "adaptlink/planner/planner.hpp"

namespace adaptlink::sim::detail {

namespace {

runtime::RecoveryPolicy make_policy(const FaultSetup& setup) {
  runtime::PlanFunction plan = [planner = setup.planner, objective = setup.objective](const partition::CostModel& c) {
    return partition::make_plan(c, planner, objective);
  };
  return runtime::RecoveryPolicy(*setup.cost, std::move(plan), setup.with_backups, setup.cache);
}

}  // namespace

FaultTimeline::FaultTimeline(const FaultSetup& setup, const runtime::Placement& placement, int devices)
    : setup_(setup),
      policy_(make_policy(setup)),
      state_(runtime::ClusterState::start(*setup.cost, placement, std::vector<bool>(static_cast<size_t>(devices), true))) {
  for (size_t i = 0; i < setup.faults.size(); ++i) schedule({setup.faults[i].at_s, What::inject, i, {}, {}, 0});
}

void FaultTimeline::schedule(Action action) { agenda_.emplace(action.at_s, std::move(action)); }

bool FaultTimeline::waits(const Action& a) const {
  const auto& fault = setup_.faults[a.fault];
  if (a.what == What::detect && fault.kind == partition::FaultKind::rejoin) {
    // A device back before its dropout was detected: that dropout is detected (decided) first.
    for (const auto& [t, other] : agenda_) {
      if (other.what == What::detect && other.fault < a.fault &&
          setup_.faults[other.fault].kind == partition::FaultKind::dropout &&
          setup_.faults[other.fault].device == fault.device) {
        return true;
      }
    }
  }
  if (!recovering_) return false;
  return a.what == What::switch_placement || (a.what == What::detect && fault.kind == partition::FaultKind::dropout);
}

double FaultTimeline::next_time() const {
  auto it = agenda_.begin();
  while (waits(it->second)) ++it;  // a recover is scheduled: the loop ends there
  return it->first;
}

Expected<FaultTimeline::Action> FaultTimeline::next() {
  auto it = agenda_.begin();
  while (waits(it->second)) ++it;
  const double now = it->first;
  Action a = std::move(it->second);
  agenda_.erase(it);
  a.at_s = std::max(a.at_s, now);  // a detection that waited for a recovery is taken now
  if (a.what == What::recover) recovering_ = false;
  const auto& fault = setup_.faults[a.fault];
  const int device = setup_.cost->scenario().device_index(fault.device);
  if (a.what == What::inject) {
    if (fault.kind == partition::FaultKind::dropout) {
      schedule({a.at_s + setup_.heartbeat.heartbeat_timeout_s, What::detect, a.fault, {}, {}, 0});
    } else if (fault.kind == partition::FaultKind::rejoin) {
      schedule({a.at_s + setup_.heartbeat.heartbeat_interval_s, What::detect, a.fault, {}, {}, 0});
    }
    return a;
  }
  if (a.what != What::detect) return a;
  if (fault.kind == partition::FaultKind::dropout) {
    auto plan = policy_.on_dropout(state_, device);
    if (!plan) {
      auto e = plan.error();
      e.message = fmt::format("fault at {} s: {}", fault.at_s, e.message);
      return e;
    }
    if (!plan->ignored && state_.pending) {  // this dropout cancels the pending rebalance
      cancelled_faults_.insert(cancelled_faults_.end(), pending_faults_.begin(), pending_faults_.end());
      pending_faults_.clear();
      pending_id_ = 0;
    }
    runtime::apply(state_, *plan);
    a.plan = std::move(*plan);
    if (!a.plan.ignored && a.plan.action != runtime::RecoveryAction::none) {
      schedule({a.at_s + a.plan.ready_ms * 1e-3, What::recover, a.fault, a.plan, {}, 0});
      recovering_ = true;
    } else if (!a.plan.ignored && a.plan.rebalance_after) {
      recovered(a, a.at_s);  // nothing to recover: the cancelled rebalance is planned again at once
    }
    return a;
  }
  auto plan = policy_.on_rejoin(state_, device);
  if (!plan.ignored && plan.action == runtime::RecoveryAction::rebalance) {
    pending_faults_.push_back(a.fault);  // a rejoin while a rebalance is pending takes it over
    pending_id_ = ++next_id_;
    schedule({a.at_s + plan.ready_ms * 1e-3, What::switch_placement, a.fault, plan, pending_faults_, pending_id_});
  }
  runtime::apply(state_, plan);
  a.plan = std::move(plan);
  return a;
}

void FaultTimeline::recovered(const Action& recover, double now_s) {
  if (!recover.plan.rebalance_after || cancelled_faults_.empty()) return;
  auto plan = policy_.rebalance(state_);
  runtime::apply(state_, plan);
  if (plan.action != runtime::RecoveryAction::rebalance) {
    cancelled_faults_.clear();  // the devices up keep the running placement
    return;
  }
  pending_faults_ = std::exchange(cancelled_faults_, {});
  pending_id_ = ++next_id_;
  schedule({now_s + plan.ready_ms * 1e-3, What::switch_placement, pending_faults_.back(), plan, pending_faults_,
            pending_id_});
}

bool FaultTimeline::still_pending(const Action& switch_action) const {
  return state_.pending.has_value() && switch_action.id == pending_id_;
}

void FaultTimeline::switched() {
  runtime::commit_rebalance(state_);
  pending_id_ = 0;
  pending_faults_.clear();
}

Expected<Ok> FaultTimeline::dry_run(const FaultSetup& setup, const runtime::Placement& placement, int devices) {
  FaultTimeline timeline(setup, placement, devices);
  while (!timeline.done()) {
    auto a = timeline.next();
    if (!a) return a.error();
    if (a->what == What::recover) timeline.recovered(*a, a->at_s);
    if (a->what == What::switch_placement && timeline.still_pending(*a)) timeline.switched();
  }
  return Ok{};
}

}  // namespace adaptlink::sim::detail

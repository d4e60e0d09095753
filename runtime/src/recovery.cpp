#include "adaptlink/runtime/recovery.hpp"

#include <algorithm>
#include <memory>

namespace adaptlink::runtime {

namespace {

using partition::CostModel;
using partition::Stage;

using Holds = std::vector<std::vector<bool>>;

// Per device: the nodes of the stages it runs and of the backups it preloads in `p`.
Holds placed_nodes(const CostModel& cost, const Placement& p) {
  Holds out(static_cast<size_t>(cost.num_devices()), std::vector<bool>(static_cast<size_t>(cost.num_nodes()), false));
  auto mark = [&](int device, const Stage& st) {
    for (int n = st.first_node; n <= st.last_node; ++n) out[static_cast<size_t>(device)][static_cast<size_t>(n)] = true;
  };
  for (const auto& st : p.stages) mark(st.device, st);
  for (const auto& b : p.backups) {
    for (int c : b.covers) mark(b.device, p.stages[static_cast<size_t>(c)]);
  }
  return out;
}

bool covers(const std::vector<bool>& held, int first, int last) {
  for (int n = first; n <= last; ++n) {
    if (!held[static_cast<size_t>(n)]) return false;
  }
  return true;
}

// Compute time (ms) of the stages the device runs in `p`: the "load" a takeover or redeploy target is chosen by.
double compute_load_ms(const CostModel& cost, const Placement& p, int device) {
  double ms = 0;
  for (const auto& st : p.stages) {
    if (st.device == device) {
      ms += cost.prefill_ms(device, st.first_node, st.last_node) + cost.decode_total_ms(device, st.first_node, st.last_node);
    }
  }
  return ms;
}

// Removes the backups `device` held from `p` (it is lost: they are gone).
void drop_backups_of(Placement& p, int device) {
  std::erase_if(p.backups, [device](const partition::Backup& b) { return b.device == device; });
}

// The text nodes of each stage of `after` whose device differs in `before`, as contiguous runs.
std::vector<std::vector<NodeRange>> changed_text_runs(const CostModel& cost, const Placement& before,
                                                      const Placement& after) {
  const auto old_device = before.node_devices(cost.num_nodes());
  const int te = cost.graph().text_embed_index();
  std::vector<std::vector<NodeRange>> out(after.stages.size());
  for (size_t s = 0; s < after.stages.size(); ++s) {
    const auto& st = after.stages[s];
    for (int n = std::max(st.first_node, te); n <= st.last_node; ++n) {
      if (old_device[static_cast<size_t>(n)] == st.device) continue;
      if (!out[s].empty() && out[s].back().last == n - 1) {
        out[s].back().last = n;
      } else {
        out[s].push_back({n, n});
      }
    }
  }
  return out;
}

}  // namespace

// --- Placement, WorkerMap ------------------------------------------------------------------------------------

std::vector<int> Placement::node_devices(int nodes) const {
  std::vector<int> out(static_cast<size_t>(nodes), -1);
  for (const auto& st : stages) {
    for (int n = st.first_node; n <= st.last_node && n < nodes; ++n) out[static_cast<size_t>(n)] = st.device;
  }
  return out;
}

std::vector<int> Placement::stages_on(int device) const {
  std::vector<int> out;
  for (size_t s = 0; s < stages.size(); ++s) {
    if (stages[s].device == device) out.push_back(static_cast<int>(s));
  }
  return out;
}

WorkerMap WorkerMap::identity(int n) {
  WorkerMap m;
  for (int i = 0; i < n; ++i) {
    m.worker_of_device.push_back(i);
    m.device_of_worker.push_back(i);
  }
  return m;
}

// --- ClusterState ----------------------------------------------------------------------------------------------

ClusterState ClusterState::start(const CostModel& cost, Placement placement, std::vector<bool> alive) {
  ClusterState s;
  s.holds = placed_nodes(cost, placement);
  for (size_t d = 0; d < alive.size(); ++d) {
    if (!alive[d]) std::fill(s.holds[d].begin(), s.holds[d].end(), false);
  }
  s.placement = std::move(placement);
  s.alive = std::move(alive);
  return s;
}

bool ClusterState::holds_nodes(int device, int first, int last) const {
  return covers(holds[static_cast<size_t>(device)], first, last);
}

double ClusterState::committed_bytes(const CostModel& cost, int device) const {
  if (!alive[static_cast<size_t>(device)]) return 0;
  double bytes = 0;
  for (const auto& st : placement.stages) {
    if (st.device == device) bytes += cost.memory_bytes(st.first_node, st.last_node);
  }
  for (const auto& b : placement.backups) {
    if (b.device != device) continue;
    for (int c : b.covers) {
      const auto& st = placement.stages[static_cast<size_t>(c)];
      if (holds_nodes(device, st.first_node, st.last_node)) bytes += cost.memory_bytes(st.first_node, st.last_node);
    }
  }
  return bytes;
}

// --- RecoveryPolicy --------------------------------------------------------------------------------------------

RecoveryPolicy::RecoveryPolicy(const CostModel& cost, PlanFunction plan, bool with_backups, ReplanCache* cache)
    : cost_(cost), plan_(std::move(plan)), with_backups_(with_backups), cache_(cache) {}

partition::Scenario RecoveryPolicy::replan_scenario(const std::vector<bool>& alive, bool stand_in) const {
  partition::Scenario s = cost_.scenario();
  for (size_t d = 0; d < s.devices.size(); ++d) {
    if (!alive[d]) {
      s.devices[d].role = partition::Role::standby;
      s.devices[d].mem_bytes = 0;
    } else if (stand_in) {
      s.devices[d].role = partition::Role::active;
    }
  }
  s.planner.backups = with_backups_;
  s.planner.replicas = false;
  s.faults.clear();
  return s;
}

std::optional<Placement> RecoveryPolicy::replan(const std::vector<bool>& alive, bool stand_in) const {
  if (!plan_) return std::nullopt;
  const auto key = std::make_tuple(with_backups_, stand_in, alive);
  if (cache_ != nullptr) {
    if (auto it = cache_->find(key); it != cache_->end()) return it->second;
  }
  const auto scenario = replan_scenario(alive, stand_in);
  const CostModel cost(cost_, scenario);
  std::optional<Placement> out;
  if (auto made = plan_(cost)) out = Placement{made->stages, made->backups, 0};
  if (cache_ != nullptr) (*cache_)[key] = out;
  return out;
}

void RecoveryPolicy::fill_loads(RecoveryPlan& p, const Placement& before, const Holds& holds) const {
  const int n = cost_.num_devices();
  p.load_ms.assign(static_cast<size_t>(n), 0.0);
  const auto wanted = placed_nodes(cost_, p.placement);
  for (int d = 0; d < n; ++d) {
    const auto& want = wanted[static_cast<size_t>(d)];
    const auto& have = holds[static_cast<size_t>(d)];
    for (int node = 0; node < cost_.num_nodes();) {
      if (!want[static_cast<size_t>(node)] || have[static_cast<size_t>(node)]) {
        ++node;
        continue;
      }
      int last = node;
      while (last + 1 < cost_.num_nodes() && want[static_cast<size_t>(last) + 1] && !have[static_cast<size_t>(last) + 1]) {
        ++last;
      }
      p.load_ms[static_cast<size_t>(d)] += partition::load_ms(cost_, d, node, last);
      node = last + 1;
    }
  }
  p.ready_ms = *std::max_element(p.load_ms.begin(), p.load_ms.end());
  p.stages_changed = !p.placement.same_stages(before);
  p.rebuild = changed_text_runs(cost_, before, p.placement);
}

Expected<RecoveryPlan> RecoveryPolicy::on_dropout(const ClusterState& state, int device) const {
  RecoveryPlan p;
  p.kind = partition::FaultKind::dropout;
  p.device = device;
  p.placement = state.placement;
  p.load_ms.assign(static_cast<size_t>(cost_.num_devices()), 0.0);
  p.rebuild.assign(state.placement.stages.size(), {});
  if (!state.alive[static_cast<size_t>(device)]) {
    p.ignored = true;
    return p;
  }
  p.rebalance_after = state.pending.has_value();
  auto alive = state.alive;
  alive[static_cast<size_t>(device)] = false;
  Holds holds = state.holds;
  std::fill(holds[static_cast<size_t>(device)].begin(), holds[static_cast<size_t>(device)].end(), false);
  ClusterState after = state;  // the cluster without the lost device, to search in
  after.alive = alive;
  after.holds = holds;
  drop_backups_of(after.placement, device);
  p.placement = after.placement;
  const auto lost = state.placement.stages_on(device);
  if (lost.empty()) return p;  // held no stage: nothing to recover

  // 1.-2. Every lost stage backed up by a live holder, else a re-plan.
  auto holder_of = [&](const Stage& st, const Placement& loads) {
    int best = -1;
    double best_load = 0;
    for (int d = 0; d < cost_.num_devices(); ++d) {
      if (!alive[static_cast<size_t>(d)] || !after.holds_nodes(d, st.first_node, st.last_node)) continue;
      const double load = compute_load_ms(cost_, loads, d);
      if (best < 0 || load < best_load) {
        best = d;
        best_load = load;
      }
    }
    return best;
  };
  bool backed = true;
  for (int s : lost) backed = backed && holder_of(state.placement.stages[static_cast<size_t>(s)], after.placement) >= 0;
  if (!backed) {
    if (auto next = replan(alive, /*stand_in=*/true)) {
      p.action = RecoveryAction::replan;
      p.placement = std::move(*next);
      p.placement.epoch = state.placement.epoch + 1;
      p.rebalance_after = false;  // the re-plan takes every device that is up
      fill_loads(p, state.placement, holds);
      return p;
    }
  }

  // 3. Move the stages one by one: to a holder of a copy, else redeploy where there is room.
  auto& working = p.placement;
  working.epoch = state.placement.epoch + 1;
  std::vector<double> committed(static_cast<size_t>(cost_.num_devices()), 0.0);
  for (int d = 0; d < cost_.num_devices(); ++d) committed[static_cast<size_t>(d)] = after.committed_bytes(cost_, d);
  bool all_backed = true;
  for (int s : lost) {
    auto& st = working.stages[static_cast<size_t>(s)];
    int target = holder_of(st, working);
    const bool from_backup = target >= 0;
    const double need = cost_.memory_bytes(st.first_node, st.last_node);
    if (!from_backup) {
      all_backed = false;
      double best_load = 0;
      for (int d = 0; d < cost_.num_devices(); ++d) {
        if (!alive[static_cast<size_t>(d)] ||
            committed[static_cast<size_t>(d)] + need > cost_.scenario().devices[static_cast<size_t>(d)].mem_bytes) {
          continue;
        }
        const double load = compute_load_ms(cost_, working, d);
        if (target < 0 || load < best_load) {
          target = d;
          best_load = load;
        }
      }
      if (target < 0) {
        return make_error("device '{}' held stage {} (nodes {}..{}) and no surviving device has a backup of it or "
                          "{:.2f} GB free to redeploy it",
                          cost_.scenario().devices[static_cast<size_t>(device)].name, s, st.first_node, st.last_node,
                          need / 1e9);
      }
      committed[static_cast<size_t>(target)] += need;
      for (int n = st.first_node; n <= st.last_node;) {  // the nodes it lacks, over its link
        if (after.holds[static_cast<size_t>(target)][static_cast<size_t>(n)]) {
          ++n;
          continue;
        }
        int m = n;
        while (m + 1 <= st.last_node && !after.holds[static_cast<size_t>(target)][static_cast<size_t>(m) + 1]) ++m;
        p.load_ms[static_cast<size_t>(target)] += partition::load_ms(cost_, target, n, m);
        n = m + 1;
      }
    } else {
      // The copy becomes the stage: it is no longer a backup of it.
      for (auto& b : working.backups) {
        if (b.device != target) continue;
        if (std::erase(b.covers, s) > 0) b.memory_bytes -= need;
      }
      std::erase_if(working.backups, [](const partition::Backup& b) { return b.covers.empty(); });
    }
    p.moves.push_back({s, device, target, from_backup});
    st.device = target;
    for (int n = st.first_node; n <= st.last_node; ++n) after.holds[static_cast<size_t>(target)][static_cast<size_t>(n)] = true;
  }
  p.action = all_backed ? RecoveryAction::switch_over : RecoveryAction::redeploy;
  p.ready_ms = *std::max_element(p.load_ms.begin(), p.load_ms.end());
  p.stages_changed = true;
  p.rebuild = changed_text_runs(cost_, state.placement, working);
  return p;
}

RecoveryPlan RecoveryPolicy::on_rejoin(const ClusterState& state, int device) const {
  RecoveryPlan p;
  p.kind = partition::FaultKind::rejoin;
  p.device = device;
  p.placement = state.placement;
  p.load_ms.assign(static_cast<size_t>(cost_.num_devices()), 0.0);
  p.rebuild.assign(state.placement.stages.size(), {});
  if (state.alive[static_cast<size_t>(device)]) {
    p.ignored = true;
    return p;
  }
  auto alive = state.alive;
  alive[static_cast<size_t>(device)] = true;
  Holds holds = state.holds;
  std::fill(holds[static_cast<size_t>(device)].begin(), holds[static_cast<size_t>(device)].end(), false);
  return rebalance_on(state, std::move(alive), std::move(holds), std::move(p));
}

RecoveryPlan RecoveryPolicy::rebalance(const ClusterState& state) const {
  RecoveryPlan p;
  p.kind = partition::FaultKind::rejoin;
  p.placement = state.placement;
  p.load_ms.assign(static_cast<size_t>(cost_.num_devices()), 0.0);
  p.rebuild.assign(state.placement.stages.size(), {});
  return rebalance_on(state, state.alive, state.holds, std::move(p));
}

RecoveryPlan RecoveryPolicy::rebalance_on(const ClusterState& state, std::vector<bool> alive, Holds holds,
                                          RecoveryPlan p) const {
  auto next = replan(alive, /*stand_in=*/false);
  if (!next) return p;  // no plan fits (or no planner): a returning device is a spare
  if (next->same_stages(state.placement)) {
    // The stages stay; devices preload the new plan's backups they lack.
    p.placement.backups = next->backups;
    fill_loads(p, state.placement, holds);
    const bool same_backups = std::equal(
        next->backups.begin(), next->backups.end(), state.placement.backups.begin(), state.placement.backups.end(),
        [](const auto& a, const auto& b) { return a.device == b.device && a.covers == b.covers; });
    if (!(p.ready_ms > 0) && same_backups) return p;
    p.action = RecoveryAction::rebalance;
    return p;
  }
  p.placement = std::move(*next);
  p.placement.epoch = state.placement.epoch + 1;
  p.action = RecoveryAction::rebalance;
  fill_loads(p, state.placement, holds);
  return p;
}

// --- state transitions -----------------------------------------------------------------------------------------

void apply(ClusterState& state, const RecoveryPlan& plan) {
  if (plan.ignored) return;
  const auto d = static_cast<size_t>(plan.device);
  const auto wanted = [&](const Placement& p) {
    Holds out(state.holds.size(), std::vector<bool>(state.holds.empty() ? 0 : state.holds[0].size(), false));
    for (const auto& st : p.stages) {
      for (int n = st.first_node; n <= st.last_node; ++n) out[static_cast<size_t>(st.device)][static_cast<size_t>(n)] = true;
    }
    for (const auto& b : p.backups) {
      for (int c : b.covers) {
        const auto& st = p.stages[static_cast<size_t>(c)];
        for (int n = st.first_node; n <= st.last_node; ++n) out[static_cast<size_t>(b.device)][static_cast<size_t>(n)] = true;
      }
    }
    return out;
  };
  if (plan.kind == partition::FaultKind::dropout) {
    state.alive[d] = false;
    std::fill(state.holds[d].begin(), state.holds[d].end(), false);
    state.pending.reset();
    state.placement = plan.placement;
    if (plan.action == RecoveryAction::replan) {
      state.holds = wanted(plan.placement);  // the re-placement's devices hold what it needs, and nothing else
      for (size_t x = 0; x < state.alive.size(); ++x) {
        if (!state.alive[x]) std::fill(state.holds[x].begin(), state.holds[x].end(), false);
      }
      return;
    }
    const auto add = wanted(plan.placement);  // a move's target holds its new stage
    for (size_t x = 0; x < add.size(); ++x) {
      for (size_t n = 0; n < add[x].size(); ++n) state.holds[x][n] = state.holds[x][n] || (add[x][n] && state.alive[x]);
    }
    return;
  }
  if (plan.device >= 0) {
    state.alive[d] = true;
    std::fill(state.holds[d].begin(), state.holds[d].end(), false);  // back empty
  }
  // A rebalance's preloads count as held once it switches (commit_rebalance): a dropout that cancels it first finds
  // the devices as they were.
  if (plan.action == RecoveryAction::rebalance) state.pending = plan;
}

void commit_rebalance(ClusterState& state) {
  if (!state.pending) return;
  state.placement = state.pending->placement;
  state.pending.reset();
  // Every device keeps the weights of its stages and backups, and drops the rest.
  for (auto& row : state.holds) std::fill(row.begin(), row.end(), false);
  auto mark = [&](int device, const Stage& st) {
    if (!state.alive[static_cast<size_t>(device)]) return;
    for (int n = st.first_node; n <= st.last_node; ++n) state.holds[static_cast<size_t>(device)][static_cast<size_t>(n)] = true;
  };
  for (const auto& st : state.placement.stages) mark(st.device, st);
  for (const auto& b : state.placement.backups) {
    for (int c : b.covers) mark(b.device, state.placement.stages[static_cast<size_t>(c)]);
  }
}

void describe(const RecoveryPlan& plan, const partition::Scenario& scenario, FaultRecord& record) {
  if (plan.ignored) return;
  record.action = plan.action;
  record.moves.clear();
  record.placement.clear();
  auto name = [&](int d) { return d >= 0 ? scenario.devices[static_cast<size_t>(d)].name : std::string(); };
  for (const auto& m : plan.moves) record.moves.push_back({m.stage, name(m.from), name(m.to), m.from_backup});
  if ((plan.action == RecoveryAction::replan || plan.action == RecoveryAction::rebalance) && plan.stages_changed) {
    for (const auto& st : plan.placement.stages) record.placement.push_back({name(st.device), st.first_node, st.last_node});
  }
}

}  // namespace adaptlink::runtime

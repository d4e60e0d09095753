#include <algorithm>
#include <map>
#include <optional>
#include <utility>

#include "adaptlink/planner/backup.hpp"
#include "adaptlink/planner/planner.hpp"
#include "adaptlink/partition/problem.hpp"
#include "pipeline.hpp"

namespace adaptlink::sim::detail {

namespace {


// Registers the route from -> to (once) and returns its index, or -1 when nothing crosses the network.
class RouteTable {
 public:
  RouteTable(const partition::CostModel& cost, PipelineSpec& spec) : cost_(cost), spec_(spec) {}

  Expected<int> get(int from, int to) {
    if (from == to) return -1;
    auto key = std::make_pair(from, to);
    if (auto it = index_.find(key); it != index_.end()) return it->second;
    const auto& hops = cost_.route(from, to);
    if (hops.empty()) return -1;
    const int ap = static_cast<int>(spec_.device_names.size());
    std::vector<HopSpec> route;
    if (hops.size() == 1) {
      route.push_back({hops[0].link, from, to});
    } else if (hops.size() == 2) {
      route.push_back({hops[0].link, from, ap});
      route.push_back({hops[1].link, ap, to});
      spec_.has_access_point = true;
    } else {
      return make_error("route {} -> {} has {} hops; the simulator supports direct links and star routes",
                        spec_.device_names[from], spec_.device_names[to], hops.size());
    }
    for (const auto& hop : hops) {
      auto& link = spec_.links.at(static_cast<size_t>(hop.link));
      if (hop.spec.bandwidth_mbps <= 0) {
        return make_error("link '{}' has no bandwidth ({} Mbit/s)", link.name, hop.spec.bandwidth_mbps);
      }
      link.bandwidth_bps = hop.spec.bandwidth_mbps * 1e6 / 8.0;
      link.latency_s = hop.spec.latency_ms * 1e-3;
    }
    const int index = static_cast<int>(spec_.routes.size());
    spec_.routes.push_back(std::move(route));
    index_[key] = index;
    return index;
  }

  Expected<TransferSpec> transfer(int from, int to, double bytes) {
    TransferSpec t;
    if (bytes <= 0) return t;
    auto route = get(from, to);
    if (!route) return route.error();
    if (*route >= 0) {
      t.bytes = bytes;
      t.route = *route;
    }
    return t;
  }

 private:
  const partition::CostModel& cost_;
  PipelineSpec& spec_;
  std::map<std::pair<int, int>, int> index_;
};

// Stage specs (compute times on each stage's device, transfers between them) and the back edge.
Expected<Ok> make_stages(const partition::CostModel& cost, const std::vector<partition::Stage>& stages, int text_stage,
                         RouteTable& routes, std::vector<StageSpec>& out, TransferSpec& back_edge) {
  const auto& graph = cost.graph();
  const auto& shape = cost.shape();
  const int prefill_tokens = graph.prefill_tokens(shape);
  out.clear();
  for (size_t s = 0; s < stages.size(); ++s) {
    const auto& st = stages[s];
    const int dev = st.device;
    StageSpec stage;
    stage.device = dev;
    stage.first_node = st.first_node;
    stage.last_node = st.last_node;
    stage.prefill_s = cost.prefill_ms(dev, st.first_node, st.last_node) * 1e-3;
    for (int n = st.first_node; n <= st.last_node; ++n) stage.prefill_node_s.push_back(cost.prefill_ms(dev, n, n) * 1e-3);
    if (static_cast<int>(s) >= text_stage) {
      stage.decode_s.resize(static_cast<size_t>(shape.output_tokens));
      for (int k = 0; k < shape.output_tokens; ++k) {
        stage.decode_s[static_cast<size_t>(k)] =
            cost.decode_step_ms(dev, st.first_node, st.last_node, prefill_tokens + k) * 1e-3;
      }
    }
    if (s + 1 < stages.size()) {
      const int next = stages[s + 1].device;
      auto pre = routes.transfer(dev, next, graph.prefill_out_bytes(st.last_node, shape));
      if (!pre) return pre.error();
      stage.prefill_out = *pre;
      if (static_cast<int>(s) >= text_stage) {
        auto dec = routes.transfer(dev, next, graph.decode_out_bytes(st.last_node));
        if (!dec) return dec.error();
        stage.decode_out = *dec;
      }
    }
    out.push_back(std::move(stage));
  }
  auto back = routes.transfer(stages.back().device, stages[static_cast<size_t>(text_stage)].device,
                              partition::kTokenBytes);
  if (!back) return back.error();
  back_edge = *back;
  return Ok{};
}

// Per node: the device that runs it in `p`.
std::vector<int> node_devices(const partition::CostModel& cost, const Placement& p) {
  std::vector<int> out(static_cast<size_t>(cost.num_nodes()), -1);
  for (const auto& st : p.stages) {
    for (int n = st.first_node; n <= st.last_node; ++n) out[static_cast<size_t>(n)] = st.device;
  }
  return out;
}

// Per node and device: whether the device holds the node's weights (runs it, or preloads it as a backup).
std::vector<std::vector<bool>> held_weights(const partition::CostModel& cost, const Placement& p) {
  std::vector<std::vector<bool>> held(static_cast<size_t>(cost.num_devices()),
                                      std::vector<bool>(static_cast<size_t>(cost.num_nodes()), false));
  for (const auto& st : p.stages) {
    for (int n = st.first_node; n <= st.last_node; ++n) held[static_cast<size_t>(st.device)][static_cast<size_t>(n)] = true;
  }
  for (const auto& b : p.backups) {
    for (int c : b.covers) {
      const auto& st = p.stages[static_cast<size_t>(c)];
      for (int n = st.first_node; n <= st.last_node; ++n) held[static_cast<size_t>(b.device)][static_cast<size_t>(n)] = true;
    }
  }
  return held;
}

// The planner's plan on the devices that are up: scenario-active devices that are alive (standby devices stay
// standby, as in the first plan, unless `standby_too`: after a dropout they stand in), with backups when the
// running plan had any, on holders that are up.
std::optional<Placement> replan(const partition::CostModel& cost, const partition::Plan& plan, bool backups,
                                const std::vector<bool>& alive, ReplanCache* cache, bool standby_too = false) {
  auto key = std::make_pair(backups, alive);
  key.second.push_back(standby_too);
  if (cache != nullptr) {
    if (auto it = cache->find(key); it != cache->end()) return it->second;
  }
  auto scenario = cost.scenario();  // a copy with the lost devices out of planning
  for (size_t d = 0; d < scenario.devices.size(); ++d) {
    if (!alive[d]) {
      scenario.devices[d].role = partition::Role::standby;
    } else if (standby_too) {
      scenario.devices[d].role = partition::Role::active;
    }
  }
  scenario.planner.backups = backups;
  scenario.planner.replicas = false;  // recovery and rebalance move stages of one pipeline
  scenario.faults.clear();
  auto problem = partition::make_problem(std::move(scenario));
  auto made = partition::make_plan(*problem->cost, plan.planner, plan.objective);
  if (!made) {
    if (cache != nullptr) (*cache)[key] = std::nullopt;
    return std::nullopt;
  }
  Placement p;
  p.stages = made->stages;
  for (const auto& b : made->backups) {
    if (alive[static_cast<size_t>(b.device)]) p.backups.push_back(b);
  }
  p.text_stage = partition::text_entry_stage(cost, p.stages);
  if (cache != nullptr) (*cache)[key] = p;
  return p;
}

// A rejoin's rebalance onto `next`: weights to load, KV caches to rebuild, the switch time.
Expected<Ok> plan_rebalance(const partition::CostModel& cost, const Placement& current, const Placement& next,
                            double ready_s, int prefill_tokens, RouteTable& routes, FaultSpec& fs) {
  const auto before = node_devices(cost, current);
  const auto held = held_weights(cost, current);
  const int te = cost.graph().text_embed_index();
  // Each device loads the weights of its new nodes that it does not hold yet, over its own link; devices load
  // in parallel while the old plan keeps serving.
  std::vector<double> load_ms(static_cast<size_t>(cost.num_devices()), 0.0);
  fs.replay_s_per_token_after.assign(next.stages.size(), 0.0);
  fs.replay_from_node.assign(next.stages.size(), -1);
  for (size_t s = 0; s < next.stages.size(); ++s) {
    const auto& st = next.stages[s];
    const auto d = static_cast<size_t>(st.device);
    for (int n = st.first_node; n <= st.last_node;) {
      // Contiguous runs of nodes to load, and of text nodes whose device changes (their KV caches are rebuilt).
      if (!held[d][static_cast<size_t>(n)]) {
        int m = n;
        while (m + 1 <= st.last_node && !held[d][static_cast<size_t>(m) + 1]) ++m;
        partition::Stage run = st;
        run.first_node = n;
        run.last_node = m;
        load_ms[d] += partition::redeploy_ms(cost, run, st.device);
        n = m + 1;
      } else {
        ++n;
      }
    }
    for (int n = std::max(st.first_node, te); n <= st.last_node;) {
      if (before[static_cast<size_t>(n)] != st.device) {
        int m = n;
        while (m + 1 <= st.last_node && before[static_cast<size_t>(m) + 1] != st.device) ++m;
        if (fs.replay_from_node[s] < 0) fs.replay_from_node[s] = n;
        fs.replay_s_per_token_after[s] += cost.prefill_ms(st.device, n, m) * 1e-3 / prefill_tokens;
        n = m + 1;
      } else {
        ++n;
      }
    }
  }
  fs.load_s = *std::max_element(load_ms.begin(), load_ms.end()) * 1e-3;
  fs.switch_s = ready_s + fs.load_s;
  fs.text_stage_after = next.text_stage;
  return make_stages(cost, next.stages, next.text_stage, routes, fs.stages_after, fs.back_edge_after);
}

}  // namespace

Expected<Ok> add_faults(const partition::CostModel& cost, const partition::Plan& plan, PipelineSpec& spec,
                        const std::vector<partition::Fault>& faults, double detect_timeout_s,
                        double heartbeat_interval_s, ReplanCache* cache) {
  const auto& scenario = cost.scenario();
  const int n = cost.num_devices();
  Placement current{plan.stages, plan.backups, spec.text_stage};
  const bool with_backups = !plan.backups.empty();
  std::vector<bool> alive(static_cast<size_t>(n), true);
  std::vector<bool> has_backups(static_cast<size_t>(n), true);  // false once lost: a rejoined device comes back empty
  // Memory a device already commits: its stages and the backups it preloads.
  std::vector<double> used(static_cast<size_t>(n), 0.0);
  auto recount = [&] {
    std::fill(used.begin(), used.end(), 0.0);
    for (const auto& st : current.stages) used[static_cast<size_t>(st.device)] += cost.memory_bytes(st.first_node, st.last_node);
    for (const auto& b : current.backups) {
      if (alive[static_cast<size_t>(b.device)]) used[static_cast<size_t>(b.device)] += b.memory_bytes;
    }
  };
  recount();
  RouteTable routes(cost, spec);
  const int te = cost.graph().text_embed_index();

  // A rejoin's rebalance waits for the weights to load (from its detection on) and switches at `switch_s`; a
  // dropout before that cancels it and a new one is planned once that dropout is handled (a rejoin plans anew).
  struct Pending {
    size_t fault = 0;
    Placement next;
  };
  std::optional<Pending> pending;
  auto plan_pending = [&](size_t fault, double ready_s) -> Expected<Ok> {
    if (pending) spec.faults[pending->fault].rebalance = false;  // superseded: the new plan takes every device up
    pending.reset();
    auto& fs = spec.faults[fault];
    fs.rebalance = false;
    auto next = replan(cost, plan, with_backups, alive, cache);
    if (!next) return Ok{};  // the devices that are up cannot hold the model: keep the running placement
    if (next->stages == current.stages) {
      // The stages stay; the devices that are back preload the new plan's backups they lack, over their links.
      const auto held = held_weights(cost, current);
      std::vector<double> load_ms(static_cast<size_t>(n), 0.0);
      for (const auto& b : next->backups) {
        const auto d = static_cast<size_t>(b.device);
        if (has_backups[d]) continue;  // still holds what it held
        for (int c : b.covers) {
          const auto& st = next->stages[static_cast<size_t>(c)];
          for (int node = st.first_node; node <= st.last_node; ++node) {
            if (held[d][static_cast<size_t>(node)]) continue;
            partition::Stage one = st;
            one.first_node = one.last_node = node;
            load_ms[d] += partition::redeploy_ms(cost, one, b.device);
          }
        }
      }
      const double load_s = *std::max_element(load_ms.begin(), load_ms.end()) * 1e-3;
      if (!(load_s > 0)) return Ok{};  // nothing to move or load
      fs.rebalance = true;
      fs.stages_changed = false;
      fs.load_s = load_s;
      fs.switch_s = ready_s + load_s;
      pending = Pending{fault, std::move(*next)};
      return Ok{};
    }
    fs.stages_changed = true;
    if (auto planned = plan_rebalance(cost, current, *next, ready_s, spec.prefill_tokens, routes, fs); !planned) {
      return planned.error();
    }
    fs.rebalance = true;
    pending = Pending{fault, std::move(*next)};
    return Ok{};
  };
  auto commit_pending = [&] {
    const size_t fault = pending->fault;
    spec.events.push_back({static_cast<int>(fault), true, spec.faults[fault].switch_s});
    current = std::move(pending->next);
    std::fill(has_backups.begin(), has_backups.end(), true);  // the new plan's holders preload in the background
    recount();
    pending.reset();
  };

  std::vector<const partition::Fault*> order;
  for (const auto& f : faults) order.push_back(&f);
  std::stable_sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->at_s < b->at_s; });
  for (const auto* f : order) {
    if (pending && spec.faults[pending->fault].switch_s <= f->at_s) commit_pending();
    FaultSpec fs;
    fs.at_s = f->at_s;
    fs.device = scenario.device_index(f->device);
    if (fs.device < 0) return make_error("fault at {} s names an unknown device '{}'", f->at_s, f->device);
    fs.factor = f->factor;
    fs.bandwidth_bps = f->bandwidth_mbps * 1e6 / 8.0;
    switch (f->kind) {
      case partition::FaultKind::dropout: fs.kind = FaultKindSpec::dropout; fs.kind_name = "dropout"; break;
      case partition::FaultKind::rejoin: fs.kind = FaultKindSpec::rejoin; fs.kind_name = "rejoin"; break;
      case partition::FaultKind::slowdown: fs.kind = FaultKindSpec::slowdown; fs.kind_name = "slowdown"; break;
      case partition::FaultKind::link: fs.kind = FaultKindSpec::link; fs.kind_name = "link"; break;
    }
    const size_t index = spec.faults.size();
    std::optional<size_t> replan_after;  // a rebalance this dropout cancelled
    if (fs.kind == FaultKindSpec::dropout && alive[static_cast<size_t>(fs.device)]) {
      if (pending) {
        spec.faults[pending->fault].rebalance = false;
        replan_after = pending->fault;
        pending.reset();
      }
      const int lost = fs.device;
      alive[static_cast<size_t>(lost)] = false;
      has_backups[static_cast<size_t>(lost)] = false;
      used[static_cast<size_t>(lost)] = 0;
      fs.detect_s = detect_timeout_s;
      // A stage of the lost device without a live backup: the planner re-plans on the devices still up (standby
      // ones included), the devices load the weights they lack over their links, and the pipeline switches
      // (detection + load; as a rejoin's rebalance). When the devices up cannot hold the model by the planner,
      // the stages move alone (below).
      bool backed = true;
      for (size_t s = 0; s < current.stages.size(); ++s) {
        if (current.stages[s].device != lost) continue;
        bool found = false;
        for (const auto& b : current.backups) {
          found = found || (alive[static_cast<size_t>(b.device)] && has_backups[static_cast<size_t>(b.device)] &&
                            std::find(b.covers.begin(), b.covers.end(), static_cast<int>(s)) != b.covers.end());
        }
        backed = backed && found;
      }
      if (!backed) {
        if (auto next = replan(cost, plan, with_backups, alive, cache, true)) {
          if (auto planned = plan_rebalance(cost, current, *next, f->at_s + detect_timeout_s, spec.prefill_tokens,
                                            routes, fs);
              !planned) {
            return planned.error();
          }
          fs.replanned = true;
          fs.stages_changed = true;
          replan_after.reset();  // the re-plan takes every device that is up, a rejoined one included
          if (pending) spec.faults[pending->fault].rebalance = false;
          current = std::move(*next);
          std::fill(has_backups.begin(), has_backups.end(), true);
          has_backups[static_cast<size_t>(lost)] = false;
          recount();
          spec.faults.push_back(std::move(fs));
          spec.events.push_back({static_cast<int>(index), false, f->at_s});
          spec.events.push_back({static_cast<int>(index), true, spec.faults[index].switch_s});
          continue;
        }
      }
      bool all_backed = true;
      for (size_t s = 0; s < current.stages.size(); ++s) {
        if (current.stages[s].device != lost) continue;
        const auto& st = current.stages[s];
        int target = -1;
        for (const auto& b : current.backups) {
          if (alive[static_cast<size_t>(b.device)] && has_backups[static_cast<size_t>(b.device)] &&
              std::find(b.covers.begin(), b.covers.end(), static_cast<int>(s)) != b.covers.end()) {
            target = b.device;
            break;
          }
        }
        if (target < 0) {
          all_backed = false;
          // Redeploy: the least-loaded surviving device with room for the stage.
          const double need = cost.memory_bytes(st.first_node, st.last_node);
          double best_load = 0;
          for (int d = 0; d < n; ++d) {
            if (!alive[static_cast<size_t>(d)] || used[static_cast<size_t>(d)] + need > scenario.devices[d].mem_bytes) {
              continue;
            }
            double load = 0;
            for (const auto& other : current.stages) {
              if (other.device == d) {
                load += cost.prefill_ms(d, other.first_node, other.last_node) * 1e-3 +
                        cost.decode_total_ms(d, other.first_node, other.last_node) * 1e-3;
              }
            }
            if (target < 0 || load < best_load) {
              target = d;
              best_load = load;
            }
          }
          if (target < 0) {
            return make_error("fault at {} s: device '{}' held stage {} (nodes {}..{}) and no surviving device has "
                              "a backup of it or {:.2f} GB free to redeploy it",
                              f->at_s, f->device, s, st.first_node, st.last_node, need / 1e9);
          }
          used[static_cast<size_t>(target)] += need;
          fs.load_s += partition::redeploy_ms(cost, st, target) * 1e-3;
        }
        current.stages[s].device = target;
        fs.moved.push_back(static_cast<int>(s));
        const int ft = std::max(st.first_node, te);
        fs.replay_s_per_token.push_back(
            ft <= st.last_node ? cost.prefill_ms(target, ft, st.last_node) * 1e-3 / spec.prefill_tokens : 0.0);
      }
      fs.from_backup = all_backed && !fs.moved.empty();
      fs.text_stage_after = current.text_stage;
      if (auto made = make_stages(cost, current.stages, current.text_stage, routes, fs.stages_after, fs.back_edge_after);
          !made) {
        return made.error();
      }
    }
    if (fs.kind == FaultKindSpec::rejoin && !alive[static_cast<size_t>(fs.device)]) {
      // Back, empty, at its first heartbeat; taken back in by a rebalance once the weights it needs are loaded.
      alive[static_cast<size_t>(fs.device)] = true;
      fs.detect_s = heartbeat_interval_s;
    }
    spec.faults.push_back(std::move(fs));
    spec.events.push_back({static_cast<int>(index), false, f->at_s});
    const auto& added = spec.faults[index];
    if (added.kind == FaultKindSpec::rejoin && added.detect_s > 0) {
      if (auto planned = plan_pending(index, added.at_s + added.detect_s); !planned) return planned.error();
    } else if (replan_after) {
      // The cancelled rebalance is planned again on the devices still up, once this dropout is handled.
      if (auto planned = plan_pending(*replan_after, added.at_s + added.detect_s + added.load_s); !planned) {
        return planned.error();
      }
    }
  }
  if (pending) commit_pending();
  return Ok{};
}

Expected<PipelineSpec> build_pipeline(const partition::CostModel& cost, const partition::Plan& plan,
                                      long long max_requests, std::uint64_t seed, bool stagger_start) {
  const auto& scenario = cost.scenario();
  const auto& graph = cost.graph();
  const auto& shape = cost.shape();
  PipelineSpec spec;
  spec.scenario = scenario.name;
  spec.planner = plan.planner;
  for (const auto& d : scenario.devices) {
    spec.device_names.push_back(d.name);
    spec.device_speed_flops.push_back(d.tflops > 0 ? d.tflops * 1e12 : 1e12);
  }
  for (const auto& name : cost.link_names()) spec.links.push_back({name, 0, 0});

  if (plan.stages.empty()) return make_error("plan '{}' has no stages", plan.planner);
  int expected_first = 0;
  for (size_t s = 0; s < plan.stages.size(); ++s) {
    const auto& st = plan.stages[s];
    if (st.device < 0 || st.device >= cost.num_devices()) {
      return make_error("plan '{}': stage {} has no valid device ({})", plan.planner, s, st.device);
    }
    if (st.first_node != expected_first || st.last_node < st.first_node || st.last_node >= graph.size()) {
      return make_error("plan '{}': stage {} covers nodes [{}, {}], expected a range starting at {}", plan.planner, s,
                        st.first_node, st.last_node, expected_first);
    }
    expected_first = st.last_node + 1;
  }
  if (expected_first != graph.size()) {
    return make_error("plan '{}' covers nodes up to {} of {}", plan.planner, expected_first - 1, graph.size() - 1);
  }
  spec.text_stage = partition::text_entry_stage(cost, plan.stages);

  const int prefill_tokens = graph.prefill_tokens(shape);
  spec.prefill_tokens = prefill_tokens;
  spec.decode_first = cost.scenario().planner.schedule == partition::Schedule::decode_first;
  spec.output_tokens = shape.output_tokens;
  RouteTable routes(cost, spec);
  if (auto made = make_stages(cost, plan.stages, spec.text_stage, routes, spec.stages, spec.back_edge); !made) {
    return made.error();
  }
  // Per-request busy time of the busiest resource (a stage, or a link's serialisation): the closed loop's
  // first batch is admitted this far apart, the spacing completions have in steady state once the
  // bottleneck is saturated. Admitting them all at t = 0 instead makes them run in lockstep forever
  // (FIFO stages, identical requests, no noise), and each generation then pays every prefill in a burst.
  auto stages = plan.stages;
  const double bottleneck_s = partition::evaluate(cost, stages).bottleneck_ms / 1e3;
  spec.ramp_gap_s = stagger_start ? bottleneck_s : 0.0;

  const auto& workload = scenario.workload;
  spec.arrival = workload.arrival == partition::Arrival::closed ? ArrivalKind::closed : ArrivalKind::poisson;
  spec.requests = max_requests > 0 ? max_requests : workload.requests;
  spec.in_flight = std::max(1, workload.in_flight);
  spec.rate_per_s = workload.rate_per_s;
  spec.seed = seed;
  if (spec.requests <= 0) return make_error("workload.requests must be positive (got {})", spec.requests);
  if (spec.arrival == ArrivalKind::poisson && !(spec.rate_per_s > 0)) {
    return make_error("workload.rate_per_s must be positive for Poisson arrivals (got {})", spec.rate_per_s);
  }
  return spec;
}

}  // namespace adaptlink::sim::detail

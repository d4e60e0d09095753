#include <algorithm>
#include <map>
#include <utility>

#include "adaptlink/partition/backup.hpp"
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

// Stage specs (compute times on `devices[s]`, transfers between them) and the back edge.
Expected<Ok> make_stages(const partition::CostModel& cost, const partition::Plan& plan, const std::vector<int>& devices,
                         int text_stage, RouteTable& routes, std::vector<StageSpec>& out, TransferSpec& back_edge) {
  const auto& graph = cost.graph();
  const auto& shape = cost.shape();
  const int prefill_tokens = graph.prefill_tokens(shape);
  out.clear();
  for (size_t s = 0; s < plan.stages.size(); ++s) {
    const auto& st = plan.stages[s];
    const int dev = devices[s];
    StageSpec stage;
    stage.device = dev;
    stage.prefill_s = cost.prefill_ms(dev, st.first_node, st.last_node) * 1e-3;
    if (static_cast<int>(s) >= text_stage) {
      stage.decode_s.resize(static_cast<size_t>(shape.output_tokens));
      for (int k = 0; k < shape.output_tokens; ++k) {
        stage.decode_s[static_cast<size_t>(k)] =
            cost.decode_step_ms(dev, st.first_node, st.last_node, prefill_tokens + k) * 1e-3;
      }
    }
    if (s + 1 < plan.stages.size()) {
      const int next = devices[s + 1];
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
  auto back = routes.transfer(devices.back(), devices[static_cast<size_t>(text_stage)], partition::kTokenBytes);
  if (!back) return back.error();
  back_edge = *back;
  return Ok{};
}

}  // namespace

Expected<Ok> add_faults(const partition::CostModel& cost, const partition::Plan& plan, PipelineSpec& spec,
                        const std::vector<partition::Fault>& faults, double detect_timeout_s,
                        double heartbeat_interval_s) {
  const auto& scenario = cost.scenario();
  const int n = cost.num_devices();
  std::vector<int> devices;
  for (const auto& st : plan.stages) devices.push_back(st.device);
  std::vector<bool> alive(static_cast<size_t>(n), true);
  std::vector<bool> has_backups(static_cast<size_t>(n), true);  // false once lost: a rejoined device comes back empty
  // Memory a device already commits: its stages and the backups it preloads.
  std::vector<double> used(static_cast<size_t>(n), 0.0);
  for (const auto& st : plan.stages) used[static_cast<size_t>(st.device)] += cost.memory_bytes(st.first_node, st.last_node);
  for (const auto& b : plan.backups) used[static_cast<size_t>(b.device)] += b.memory_bytes;
  RouteTable routes(cost, spec);
  const int te = cost.graph().text_embed_index();

  std::vector<const partition::Fault*> order;
  for (const auto& f : faults) order.push_back(&f);
  std::stable_sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->at_s < b->at_s; });
  for (const auto* f : order) {
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
    if (fs.kind == FaultKindSpec::dropout && alive[static_cast<size_t>(fs.device)]) {
      const int lost = fs.device;
      alive[static_cast<size_t>(lost)] = false;
      has_backups[static_cast<size_t>(lost)] = false;
      used[static_cast<size_t>(lost)] = 0;
      fs.detect_s = detect_timeout_s;
      bool all_backed = true;
      for (size_t s = 0; s < plan.stages.size(); ++s) {
        if (devices[s] != lost) continue;
        const auto& st = plan.stages[s];
        int target = -1;
        for (const auto& b : plan.backups) {
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
            for (size_t t = 0; t < devices.size(); ++t) {
              if (devices[t] == d) load += spec.stages[t].prefill_s + cost.decode_total_ms(d, plan.stages[t].first_node, plan.stages[t].last_node) * 1e-3;
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
        devices[s] = target;
        fs.moved.push_back(static_cast<int>(s));
        const int ft = std::max(st.first_node, te);
        fs.replay_s_per_token.push_back(
            ft <= st.last_node ? cost.prefill_ms(target, ft, st.last_node) * 1e-3 / spec.prefill_tokens : 0.0);
      }
      fs.from_backup = all_backed && !fs.moved.empty();
      if (auto made = make_stages(cost, plan, devices, spec.text_stage, routes, fs.stages_after, fs.back_edge_after);
          !made) {
        return made.error();
      }
    }
    if (fs.kind == FaultKindSpec::rejoin && !alive[static_cast<size_t>(fs.device)]) {
      // Back, empty: a redeploy target for later dropouts; the pipeline is not rebalanced.
      alive[static_cast<size_t>(fs.device)] = true;
      fs.detect_s = heartbeat_interval_s;
    }
    spec.faults.push_back(std::move(fs));
  }
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
  spec.output_tokens = shape.output_tokens;
  RouteTable routes(cost, spec);
  std::vector<int> devices;
  for (const auto& st : plan.stages) devices.push_back(st.device);
  if (auto made = make_stages(cost, plan, devices, spec.text_stage, routes, spec.stages, spec.back_edge); !made) {
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

#include "pipeline.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <utility>

namespace adaptlink::sim::detail {

namespace {

// Registers the route from -> to in `spec` (once) and returns its index, or -1 when nothing crosses the network.
Expected<int> register_route(const partition::CostModel& cost, PipelineSpec& spec, int from, int to) {
  if (from == to) return -1;
  const auto key = std::make_pair(from, to);
  if (auto it = spec.route_index.find(key); it != spec.route_index.end()) return it->second;
  const auto& hops = cost.route(from, to);
  if (hops.empty()) return -1;
  const int ap = static_cast<int>(spec.device_names.size());
  std::vector<HopSpec> route;
  if (hops.size() == 1) {
    route.push_back({hops[0].link, from, to});
  } else if (hops.size() == 2) {
    route.push_back({hops[0].link, from, ap});
    route.push_back({hops[1].link, ap, to});
    spec.has_access_point = true;
  } else {
    return make_error("route {} -> {} has {} hops; the simulator supports direct links and star routes",
                      spec.device_names[from], spec.device_names[to], hops.size());
  }
  for (const auto& hop : hops) {
    auto& link = spec.links.at(static_cast<size_t>(hop.link));
    if (hop.spec.bandwidth_mbps <= 0) {
      return make_error("link '{}' has no bandwidth ({} Mbit/s)", link.name, hop.spec.bandwidth_mbps);
    }
    link.bandwidth_bps = hop.spec.bandwidth_mbps * 1e6 / 8.0;
    link.latency_s = hop.spec.latency_ms * 1e-3;
  }
  const int index = static_cast<int>(spec.routes.size());
  spec.routes.push_back(std::move(route));
  spec.route_index[key] = index;
  return index;
}

// A transfer of `bytes` from -> to, with its route from `route(from, to)`.
template <class RouteOf>
Expected<TransferSpec> transfer(RouteOf&& route, int from, int to, double bytes) {
  TransferSpec t;
  if (bytes <= 0) return t;
  auto r = route(from, to);
  if (!r) return r.error();
  if (*r >= 0) {
    t.bytes = bytes;
    t.route = *r;
  }
  return t;
}

// Stage specs (compute times on each stage's device, transfers between them) and the back edge.
template <class RouteOf>
Expected<Flat> make_flat(const partition::CostModel& cost, const std::vector<partition::Stage>& stages,
                         RouteOf&& route) {
  const auto& graph = cost.graph();
  const auto& shape = cost.shape();
  const int prefill_tokens = graph.prefill_tokens(shape);
  Flat flat;
  flat.text_stage = partition::text_entry_stage(cost, stages);
  for (size_t s = 0; s < stages.size(); ++s) {
    const auto& st = stages[s];
    const int dev = st.device;
    StageSpec stage;
    stage.device = dev;
    stage.first_node = st.first_node;
    stage.last_node = st.last_node;
    stage.prefill_s = cost.prefill_ms(dev, st.first_node, st.last_node) * 1e-3;
    for (int n = st.first_node; n <= st.last_node; ++n) stage.prefill_node_s.push_back(cost.prefill_ms(dev, n, n) * 1e-3);
    if (static_cast<int>(s) >= flat.text_stage) {
      stage.decode_s.resize(static_cast<size_t>(shape.output_tokens));
      for (int k = 0; k < shape.output_tokens; ++k) {
        stage.decode_s[static_cast<size_t>(k)] =
            cost.decode_step_ms(dev, st.first_node, st.last_node, prefill_tokens + k) * 1e-3;
      }
    }
    if (s + 1 < stages.size()) {
      const int next = stages[s + 1].device;
      auto pre = transfer(route, dev, next, graph.prefill_out_bytes(st.last_node, shape));
      if (!pre) return pre.error();
      stage.prefill_out = *pre;
      if (static_cast<int>(s) >= flat.text_stage) {
        auto dec = transfer(route, dev, next, graph.decode_out_bytes(st.last_node));
        if (!dec) return dec.error();
        stage.decode_out = *dec;
      }
    }
    flat.stages.push_back(std::move(stage));
  }
  auto back = transfer(route, stages.back().device, stages[static_cast<size_t>(flat.text_stage)].device,
                       partition::kTokenBytes);
  if (!back) return back.error();
  flat.back_edge = *back;
  return flat;
}

}  // namespace

Expected<Flat> flatten(const partition::CostModel& cost, const PipelineSpec& spec, const runtime::Placement& placement) {
  auto lookup = [&](int from, int to) -> Expected<int> {
    if (from == to || cost.route(from, to).empty()) return -1;
    auto it = spec.route_index.find({from, to});
    if (it == spec.route_index.end()) {
      return make_error("no route {} -> {} in the simulated platform", spec.device_names[static_cast<size_t>(from)],
                        spec.device_names[static_cast<size_t>(to)]);
    }
    return it->second;
  };
  return make_flat(cost, placement.stages, lookup);
}

Expected<PipelineSpec> build_pipeline(const partition::CostModel& cost, const partition::Plan& plan,
                                      long long max_requests, std::uint64_t seed, bool stagger_start,
                                      std::optional<FaultSetup> faults) {
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
  spec.placement = runtime::Placement::of(plan);
  spec.prefill_tokens = graph.prefill_tokens(shape);
  spec.schedule = scenario.planner.schedule;
  spec.cost = &cost;
  spec.output_tokens = shape.output_tokens;
  auto registering = [&](int from, int to) { return register_route(cost, spec, from, to); };
  auto flat = make_flat(cost, plan.stages, registering);
  if (!flat) return flat.error();
  spec.flat = std::move(*flat);
  if (faults && !faults->faults.empty()) {
    // A recovery may put any stage on any device: every pair's route exists in the platform.
    for (int a = 0; a < cost.num_devices(); ++a) {
      for (int b = 0; b < cost.num_devices(); ++b) {
        if (auto r = register_route(cost, spec, a, b); !r) return r.error();
      }
    }
    spec.faults = std::move(faults);
  }
  // Per-request busy time of the busiest resource (a stage, or a link's serialisation): the closed loop's
  // first batch is admitted this far apart, the spacing completions have in steady state once the
  // bottleneck is saturated. Admitting them all at t = 0 instead makes them run in lockstep forever
  // (FIFO stages, identical requests, no noise), and each generation then pays every prefill in a burst.
  auto stages = plan.stages;
  const double bottleneck_s = partition::evaluate(cost, stages).bottleneck_ms / 1e3;
  spec.ramp_gap_s = stagger_start ? bottleneck_s : 0.0;

  const auto& workload = scenario.workload;
  spec.arrival = partition::closed_loop(workload) ? ArrivalKind::closed : ArrivalKind::poisson;
  spec.requests = max_requests > 0 ? max_requests : workload.requests;
  spec.in_flight = std::max(1, workload.in_flight);
  spec.max_batch = partition::effective_max_batch(scenario.planner, spec.in_flight);
  spec.rate_per_s = workload.rate_per_s;
  spec.seed = seed;
  if (spec.requests <= 0) return make_error("workload.requests must be positive (got {})", spec.requests);
  if (spec.arrival == ArrivalKind::poisson && !(spec.rate_per_s > 0)) {
    return make_error("workload.rate_per_s must be positive for Poisson arrivals (got {})", spec.rate_per_s);
  }
  return spec;
}

}  // namespace adaptlink::sim::detail

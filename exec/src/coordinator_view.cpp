#include "coordinator_view.hpp"

namespace adaptlink::exec::detail {

namespace {

// A cluster of the workers alone, for runs without a scenario (generate --stages, tests): one device per worker with
// room for any stage, equal speeds, the default network.
std::unique_ptr<partition::Problem> anonymous_cluster(const models::LlavaConfig& config,
                                                      const std::vector<WorkerSpec>& workers) {
  partition::Scenario s;
  s.name = "workers";
  s.model.llava = config;
  s.model.dtype = models::Dtype::fp32;
  for (const auto& w : workers) {
    partition::Device d;
    d.name = w.name;
    d.tflops = 1;
    d.mem_bytes = 1e18;
    d.mem_bw_gbs = 1;
    s.devices.push_back(d);
  }
  s.planner.backups = false;
  return partition::make_problem(std::move(s));
}

}  // namespace

Expected<RecoveryView> recovery_view(const PipelineSpec& spec, const models::LlavaConfig& config) {
  RecoveryView v;
  const partition::CostModel* cost = nullptr;
  runtime::PlanFunction plan;
  bool with_backups = false;
  if (spec.recovery) {
    cost = spec.recovery->cost;
    v.map = spec.recovery->map;
    plan = spec.recovery->plan;
    with_backups = spec.recovery->with_backups;
  } else {
    v.own_cluster = anonymous_cluster(config, spec.workers);
    cost = v.own_cluster->cost.get();
    v.map = runtime::WorkerMap::identity(static_cast<int>(spec.workers.size()));
  }
  ADAPTLINK_CHECK(cost != nullptr, "recovery needs a cost model");
  if (v.map.device_of_worker.size() != spec.workers.size()) {
    return make_error("the worker map names {} workers, the pipeline has {}", v.map.device_of_worker.size(),
                      spec.workers.size());
  }
  runtime::Placement placement;
  for (const auto& st : spec.stages) placement.stages.push_back({v.map.device(st.worker), st.first, st.last});
  for (size_t w = 0; w < spec.workers.size(); ++w) {
    partition::Backup b{v.map.device(static_cast<int>(w)), {}, 0};
    for (const auto& range : spec.workers[w].backups) {
      for (size_t s = 0; s < spec.stages.size(); ++s) {
        if (spec.stages[s].first == range.first && spec.stages[s].last == range.second) {
          b.covers.push_back(static_cast<int>(s));
        }
      }
    }
    if (!b.covers.empty()) placement.backups.push_back(b);
  }
  std::vector<bool> alive(static_cast<size_t>(cost->num_devices()), false);
  for (int d : v.map.device_of_worker) alive[static_cast<size_t>(d)] = true;
  v.policy.emplace(*cost, std::move(plan), with_backups);
  v.cluster = runtime::ClusterState::start(*cost, std::move(placement), std::move(alive));
  v.scenario = &cost->scenario();
  return v;
}

wire::StageEntry preloaded(int first, int last) {
  wire::StageEntry e;
  e.first = first;
  e.last = last;
  return e;
}

wire::StageEntry WireRoutes::entry(const runtime::Placement& p, size_t s) const {
  const auto& st = p.stages[s];
  wire::StageEntry e{st.first_node, st.last_node, true, "", "", std::nullopt, false};
  if (s + 1 < p.stages.size()) {
    const int w = map.worker(st.device), nw = map.worker(p.stages[s + 1].device);
    e.next = endpoint(nw);
    e.next_key = public_key(nw);
    e.link = w == nw ? LinkShape{} : link(w, nw);
  }
  return e;
}

std::vector<wire::StageEntry> WireRoutes::holdings(const runtime::Placement& p, int w, std::set<Range>& held) const {
  std::vector<wire::StageEntry> list;
  const int device = map.device(w);
  for (size_t s = 0; s < p.stages.size(); ++s) {
    if (p.stages[s].device != device) continue;
    list.push_back(entry(p, s));
    held.insert({p.stages[s].first_node, p.stages[s].last_node});
  }
  for (const auto& b : p.backups) {
    if (b.device != device) continue;
    for (int c : b.covers) {
      const auto& st = p.stages[static_cast<size_t>(c)];
      if (held.insert({st.first_node, st.last_node}).second) list.push_back(preloaded(st.first_node, st.last_node));
    }
  }
  return list;
}

void append_timings(std::vector<StageTiming>& out, const std::vector<wire::TraceEvent>& events, int64_t start_wall_us) {
  for (const auto& e : events) {
    StageTiming t;
    t.device = e.device;
    t.name = e.name;
    t.request = e.request;
    t.start_s = static_cast<double>(e.ts_us - start_wall_us) / 1e6;
    t.end_s = t.start_s + static_cast<double>(e.dur_us) / 1e6;
    out.push_back(std::move(t));
  }
}

}  // namespace adaptlink::exec::detail

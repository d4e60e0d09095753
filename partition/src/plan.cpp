#include "adaptlink/partition/plan.hpp"

#include <algorithm>
#include <limits>

namespace adaptlink::partition {

int text_entry_stage(const CostModel& cost, const std::vector<Stage>& stages) {
  const int te = cost.graph().text_embed_index();
  for (size_t s = 0; s < stages.size(); ++s) {
    if (stages[s].first_node <= te && te <= stages[s].last_node) return static_cast<int>(s);
  }
  return -1;
}

namespace {

// The link a device loads weights over: its access link in a star, the default link in a mesh.
Link load_link(const CostModel& cost, int device) {
  const auto& net = cost.scenario().network;
  return net.topology == Topology::star ? net.access_link(device) : net.default_link;
}

}  // namespace

double redeploy_ms(const CostModel& cost, const Stage& stage, int device) {
  return load_ms(cost, device, stage.first_node, stage.last_node);
}

double load_ms(const CostModel& cost, int device, int first, int last) {
  return hop_ms(load_link(cost, device), cost.weight_bytes(first, last));
}

namespace {

// Adds `count` transfers of `bytes` from device a to b: latency to R0, serialisation to link busy.
void add_transfers(const CostModel& cost, int from, int to, double bytes, double count, double& alone_ms,
                   std::vector<double>& link_busy_ms) {
  if (bytes <= 0 || count <= 0 || from == to) return;
  for (const auto& hop : cost.route(from, to)) {
    alone_ms += count * hop_ms(hop.spec, bytes);
    link_busy_ms[hop.link] += count * hop_busy_ms(hop.spec, bytes);
  }
}

}  // namespace

Prediction evaluate(const CostModel& cost, std::vector<Stage>& stages) {
  Prediction p;
  if (stages.empty()) return p;
  const auto& graph = cost.graph();
  const auto& shape = cost.shape();
  const auto& workload = cost.scenario().workload;
  const double steps = shape.output_tokens;

  std::vector<double> link_busy_ms(static_cast<size_t>(cost.num_links()), 0.0);
  double alone_ms = 0;
  double bottleneck_ms = 0;
  p.feasible = true;
  // Batches of decode steps (planner.max_batch): a stage's busy time per request falls to its share of a batch, while
  // a request alone still takes the batch-1 times. Each request has one step in flight, so the requests admitted
  // spread over the stages: in steady state each stage batches about in_flight / stages of them (with decode
  // memory-bound, K batches of A / K through K stages carry as many tokens as one batch of A would).
  const int stage_count = static_cast<int>(stages.size());
  const int batch = std::clamp((std::max(1, workload.in_flight) + stage_count / 2) / stage_count, 1,
                               effective_max_batch(cost.scenario().planner, workload.in_flight));
  for (auto& st : stages) {
    st.prefill_ms = cost.prefill_ms(st.device, st.first_node, st.last_node);
    st.decode_ms = cost.decode_total_ms(st.device, st.first_node, st.last_node);
    st.memory_bytes = cost.memory_bytes(st.first_node, st.last_node);
    if (st.memory_bytes > cost.scenario().devices[st.device].mem_bytes) p.feasible = false;
    alone_ms += st.prefill_ms + st.decode_ms;
    const double decode_busy =
        batch > 1 ? cost.decode_total_share_ms(st.device, st.first_node, st.last_node, batch) : st.decode_ms;
    bottleneck_ms = std::max(bottleneck_ms, st.prefill_ms + decode_busy);
  }
  for (size_t s = 0; s + 1 < stages.size(); ++s) {
    const int cut = stages[s].last_node;
    const int from = stages[s].device;
    const int to = stages[s + 1].device;
    add_transfers(cost, from, to, graph.prefill_out_bytes(cut, shape), 1, alone_ms, link_busy_ms);
    add_transfers(cost, from, to, graph.decode_out_bytes(cut), steps, alone_ms, link_busy_ms);
  }
  const int entry = text_entry_stage(cost, stages);
  if (entry >= 0 && entry != static_cast<int>(stages.size()) - 1) {
    add_transfers(cost, stages.back().device, stages[entry].device, kTokenBytes, steps, alone_ms, link_busy_ms);
  }
  for (double busy : link_busy_ms) bottleneck_ms = std::max(bottleneck_ms, busy);

  p.alone_ms = alone_ms;
  p.bottleneck_ms = bottleneck_ms;
  const double capacity_rps = bottleneck_ms > 0 ? 1e3 / bottleneck_ms : std::numeric_limits<double>::infinity();
  if (closed_loop(workload)) {
    const double population_rps = workload.in_flight * 1e3 / alone_ms;
    p.throughput_rps = std::min(population_rps, capacity_rps);
    p.latency_ms = workload.in_flight * 1e3 / p.throughput_rps;  // Little's law; = R0 when not saturated
  } else {
    p.throughput_rps = std::min(workload.rate_per_s, capacity_rps);
    p.latency_ms = alone_ms;
  }
  p.bound_rps = p.throughput_rps;
  p.tokens_per_s = p.throughput_rps * shape.output_tokens;
  return p;
}

double score(const Prediction& prediction, Objective objective) {
  if (!prediction.feasible) return -std::numeric_limits<double>::infinity();
  return objective == Objective::throughput ? prediction.throughput_rps : -prediction.alone_ms;
}

namespace {

// `names`: each stage lists its nodes by name (left out of the replicas of plans on kCompactDevices or more devices,
// where they would repeat the same names hundreds of times; first_layer and last_layer say the same).
nlohmann::json stages_json(const std::vector<Stage>& stages, const CostModel& cost, bool names = true) {
  const auto& graph = cost.graph();
  nlohmann::json out = nlohmann::json::array();
  for (const auto& st : stages) {
    nlohmann::json stage{{"device", cost.scenario().devices[st.device].name},
                         {"first_layer", st.first_node},
                         {"last_layer", st.last_node}};
    if (names) {
      nlohmann::json nodes = nlohmann::json::array();
      for (int i = st.first_node; i <= st.last_node; ++i) nodes.push_back(graph.node(i).name);
      stage["nodes"] = nodes;
    }
    stage["compute_ms"] = {{"prefill", st.prefill_ms}, {"decode", st.decode_ms}};
    stage["memory_bytes"] = st.memory_bytes;
    stage["memory_available_bytes"] = cost.scenario().devices[st.device].mem_bytes;
    out.push_back(stage);
  }
  return out;
}

// A plan's admission and batch limits: its own, or its scenario's where it has none (a Planner's plan).
std::pair<int, int> limits_of(const Plan& plan, const Scenario& sc) {
  return {plan.in_flight > 0 ? plan.in_flight : sc.workload.in_flight,
          plan.max_batch > 0 ? plan.max_batch : effective_max_batch(sc.planner, sc.workload.in_flight)};
}

}  // namespace

nlohmann::json prediction_json(const Prediction& p) {
  nlohmann::json out{{"throughput_rps", p.throughput_rps}, {"tokens_per_s", p.tokens_per_s},
                     {"bottleneck_ms", p.bottleneck_ms},   {"latency_ms", p.latency_ms},
                     {"bound_rps", p.bound_rps},           {"alone_ms", p.alone_ms}};
  if (p.ttft_p50_ms > 0) {
    out["ttft_ms"] = {{"p50", p.ttft_p50_ms}, {"p99", p.ttft_p99_ms}};
    out["tpot_ms"] = {{"p50", p.tpot_p50_ms}, {"p99", p.tpot_p99_ms}};
  }
  return out;
}


nlohmann::json to_json(const Plan& plan, const CostModel& cost) {
  using nlohmann::json;
  const auto& graph = cost.graph();
  json backups = json::array();
  for (const auto& b : plan.backups) {
    backups.push_back(
        {{"device", cost.scenario().devices[b.device].name}, {"covers", b.covers}, {"memory_bytes", b.memory_bytes}});
  }
  json out{{"planner", plan.planner},
           {"objective", plan.objective == Objective::throughput ? "throughput" : "latency"},
           {"model", graph.config().model_type},
           {"dtype", std::string(models::to_string(graph.dtype()))},
           {"stages", stages_json(plan.stages, cost)},
           {"backups", backups},
           {"unbacked_stages", plan.unbacked_stages},
           {"predicted", prediction_json(plan.predicted)},
           {"solve_ms", plan.solve_ms}};
  const auto [in_flight, max_batch] = limits_of(plan, cost.scenario());
  out["in_flight"] = in_flight;
  out["max_batch"] = max_batch;
  // What one request brings: the image geometry the plan was made for (LLaVA-NeXT's crops and tokens follow the size).
  const auto& shape = cost.shape();
  const auto& config = graph.config();
  const auto size = config.image_size_or_default(shape.image_width, shape.image_height);
  out["request"] = {{"prompt_tokens", shape.prompt_tokens},
                    {"images", shape.images},
                    {"image_size", size},
                    {"crops_per_image", config.vision_crops_for(size[0], size[1])},
                    {"image_tokens_per_image", config.image_tokens_for(size[0], size[1])},
                    {"output_tokens", shape.output_tokens}};
  if (plan.upper_bound_rps > 0) {
    out["certificate"] = {{"kind", plan.bound_kind},
                          {"upper_bound_rps", plan.upper_bound_rps},
                          {"gap", 1.0 - plan.predicted.throughput_rps / plan.upper_bound_rps}};
  } else {
    out["certificate"] = nullptr;
  }
  if (!plan.replicas.empty()) {
    json replicas = json::array();
    for (const auto& r : plan.replicas) {
      json devices = json::array();
      for (int d : r.devices) devices.push_back(cost.scenario().devices[d].name);
      replicas.push_back({{"devices", devices},
                          {"in_flight", r.in_flight},
                          {"requests", r.requests},
                          {"stages", stages_json(r.stages, cost, cost.num_devices() < kCompactDevices)},
                          {"predicted", prediction_json(r.predicted)}});
    }
    out["replicas"] = replicas;
  }
  return out;
}

Scenario admitted(const Scenario& scenario, int in_flight, int max_batch) {
  Scenario out = scenario;
  out.workload.in_flight = std::max(1, in_flight);
  if (out.workload.arrival == Arrival::saturate) out.workload.arrival = Arrival::closed;
  out.planner.max_in_flight = out.workload.in_flight;
  out.planner.max_batch = std::max(1, max_batch);
  return out;
}

PlanCost::PlanCost(const CostModel& base, const Plan& plan) : cost_(&base) {
  const auto& sc = base.scenario();
  const auto [in_flight, batch] = limits_of(plan, sc);
  if (in_flight == sc.workload.in_flight && batch == effective_max_batch(sc.planner, sc.workload.in_flight) &&
      sc.workload.arrival != Arrival::saturate) {
    return;
  }
  scenario_ = std::make_unique<Scenario>(admitted(sc, in_flight, batch));
  own_ = std::make_unique<CostModel>(base, *scenario_);
  cost_ = own_.get();
}

}  // namespace adaptlink::partition

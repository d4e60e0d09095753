#include "adaptlink/partition/cost_model.hpp"

#include <algorithm>

namespace adaptlink::partition {

namespace {

// Roofline time of one pass in ms.
double roofline_ms(const models::Cost& cost, const Device& device) {
  const double compute_s = cost.flops / (device.tflops * 1e12);
  const double memory_s = cost.bytes / (device.mem_bw_gbs * 1e9);
  return std::max(compute_s, memory_s) * 1e3;
}

}  // namespace

CostModel::CostModel(const models::LayerGraph& graph, const Scenario& scenario)
    : graph_(&graph), scenario_(&scenario), links_(build_links(scenario)) {
  build_tables();
  for (int d = 0; d < num_devices(); ++d) rebuild_device(d);
}

CostModel::CostModel(const CostModel& base, const Scenario& scenario)
    : graph_(base.graph_), scenario_(&scenario), links_(base.links_) {
  ADAPTLINK_CHECK(scenario.devices.size() == base.scenario_->devices.size(), "replica scenario with other devices");
  ADAPTLINK_CHECK(scenario.network.topology == base.scenario_->network.topology &&
                      scenario.network.direct.size() == base.scenario_->network.direct.size(),
                  "derived cost model on another network");
  build_tables();
  profile_ = base.profile_;
  slowdown_ = base.slowdown_;
  for (int d = 0; d < num_devices(); ++d) rebuild_device(d);
}

void CostModel::build_tables() {
  const auto& graph = *graph_;
  const auto& scenario = *scenario_;
  const int n = num_devices();
  const int nodes = num_nodes();
  slowdown_.assign(static_cast<size_t>(n), 1.0);
  profile_.assign(static_cast<size_t>(n), std::nullopt);
  prefill_prefix_.assign(static_cast<size_t>(n), std::vector<double>(static_cast<size_t>(nodes) + 1, 0.0));
  decode_prefix_ = prefill_prefix_;

  const double context = graph.max_context(shape());
  const double in_flight = scenario.workload.in_flight;
  weight_prefix_.assign(static_cast<size_t>(nodes) + 1, 0.0);
  kv_prefix_.assign(static_cast<size_t>(nodes) + 1, 0.0);
  for (int i = 0; i < nodes; ++i) {
    const auto& node = graph.node(i);
    weight_prefix_[i + 1] = weight_prefix_[i] + node.weight_bytes;
    kv_prefix_[i + 1] = kv_prefix_[i] + node.kv_bytes_per_token * context * in_flight;
  }
  // Largest transient buffer a node needs in the prefill: its input and output activations
  // (double-buffered for the pipeline) plus the widest intermediate (MLP or attention scores
  // of one head, or the logits row of the head).
  const auto& cfg = graph.config();
  const double act = models::activation_bytes(graph.dtype());
  const double text_tokens = graph.prefill_tokens(shape());
  const double crop_tokens = static_cast<double>(shape().images) *
                             cfg.vision_crops_for(shape().image_width, shape().image_height) *
                             cfg.vision.num_positions();
  node_buffer_.assign(static_cast<size_t>(nodes), 0.0);
  for (int i = 0; i < nodes; ++i) {
    const auto& node = graph.node(i);
    const double io = 2.0 * graph.prefill_out_bytes(i, shape());
    double widest = 0;
    switch (node.kind) {
      case models::NodeKind::vision_layer:
        widest = crop_tokens * std::max<double>(cfg.vision.intermediate_size, cfg.vision.num_positions()) * act;
        break;
      case models::NodeKind::decoder_layer:
        widest = text_tokens * std::max<double>(3.0 * cfg.text.intermediate_size, text_tokens) * act;
        break;
      case models::NodeKind::projector:
        widest = crop_tokens * cfg.text.hidden_size * act;
        break;
      case models::NodeKind::head:
        widest = static_cast<double>(cfg.text.vocab_size) * 4.0;
        break;
      default:
        widest = 0;
    }
    node_buffer_[i] = io + widest;
  }
}

std::shared_ptr<const CostModel::Links> CostModel::build_links(const Scenario& scenario) {
  auto links = std::make_shared<Links>();
  const int n = static_cast<int>(scenario.devices.size());
  auto& names = links->names;
  auto& routes = links->routes;
  // Links: star -> one access link per device (index = device), then direct links; mesh -> one
  // link per pair.
  const auto& net = scenario.network;
  std::map<std::pair<int, int>, int> direct_index;
  if (net.topology == Topology::star) {
    for (int d = 0; d < n; ++d) names.push_back(scenario.devices[d].name + "<->ap");
  }
  for (int i = 0; i < n; ++i) {
    for (int j = i + 1; j < n; ++j) {
      if (net.direct_link(i, j)) {
        direct_index[{i, j}] = static_cast<int>(names.size());
        names.push_back(scenario.devices[i].name + "<->" + scenario.devices[j].name);
      }
    }
  }
  routes.assign(static_cast<size_t>(n), std::vector<std::vector<Hop>>(static_cast<size_t>(n)));
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      if (i == j) continue;
      const auto key = std::make_pair(std::min(i, j), std::max(i, j));
      if (auto direct = net.direct_link(i, j)) {
        routes[i][j] = {Hop{direct_index.at(key), *direct}};
      } else {
        ADAPTLINK_CHECK(net.topology == Topology::star, "mesh without a direct link");
        routes[i][j] = {Hop{i, net.access_link(i)}, Hop{j, net.access_link(j)}};
      }
    }
  }
  return links;
}

void CostModel::set_profile(int device, const NodeTimes& times) {
  ADAPTLINK_CHECK(static_cast<int>(times.prefill_ms.size()) == num_nodes() &&
                      static_cast<int>(times.decode_ms_at_zero.size()) == num_nodes() &&
                      static_cast<int>(times.decode_ms_per_token.size()) == num_nodes(),
                  "profile size mismatch");
  ADAPTLINK_CHECK(times.batch_sizes.empty() ||
                      (static_cast<int>(times.decode_batch_ms_at_zero.size()) == num_nodes() &&
                       std::all_of(times.decode_batch_ms_at_zero.begin(), times.decode_batch_ms_at_zero.end(),
                                   [&](const auto& row) { return row.size() == times.batch_sizes.size(); })),
                  "profile batch table size mismatch");
  profile_.at(static_cast<size_t>(device)) = times;
  rebuild_device(device);
}

void CostModel::set_slowdown(int device, double factor) {
  ADAPTLINK_CHECK(factor > 0);
  slowdown_.at(static_cast<size_t>(device)) = factor;
  rebuild_device(device);
}

double CostModel::node_prefill_ms(int device, int node) const {
  double ms = 0;
  if (const auto& p = profile_[device]) {
    ms = p->prefill_ms[node];
  } else {
    ms = roofline_ms(graph_->prefill_cost(node, shape()), scenario_->devices[device]);
  }
  return ms * slowdown_[device];
}

double CostModel::node_decode_step_ms(int device, int node, int past_tokens) const {
  if (graph_->node(node).is_vision()) return 0;
  double ms = 0;
  if (const auto& p = profile_[device]) {
    ms = p->decode_ms_at_zero[node] + p->decode_ms_per_token[node] * past_tokens;
  } else {
    ms = roofline_ms(graph_->decode_cost(node, past_tokens), scenario_->devices[device]);
  }
  return ms * slowdown_[device];
}

double NodeTimes::batch_at_zero(int node, int batch) const {
  const auto n = static_cast<size_t>(node);
  if (batch <= 1 || batch_sizes.empty()) return decode_ms_at_zero[n];
  const auto& row = decode_batch_ms_at_zero[n];
  double b0 = 1, t0 = decode_ms_at_zero[n];
  for (size_t k = 0; k < batch_sizes.size(); ++k) {
    const double b1 = batch_sizes[k], t1 = row[k];
    if (batch <= b1 || k + 1 == batch_sizes.size()) {
      return std::max(0.0, t0 + (t1 - t0) * (batch - b0) / (b1 - b0));  // past the largest: its segment's slope
    }
    b0 = b1;
    t0 = t1;
  }
  return t0;
}

double CostModel::node_batch_ms(int device, int node, int batch, models::Cost sum, double sum_past) const {
  const auto& dev = scenario_->devices[device];
  const double weights = graph_->node(node).weight_read_bytes;
  const double others = static_cast<double>(batch - 1);
  if (const auto& p = profile_[device]) {
    // The measured batch at an empty cache (or the single step scaled as the roofline scales it); each member's
    // cache growth as measured.
    double ms = 0;
    if (!p->batch_sizes.empty()) {
      ms = p->batch_at_zero(node, batch);
    } else {
      const auto one = graph_->decode_cost(node, 0);
      const double scaled =
          roofline_ms({one.flops * static_cast<double>(batch), one.bytes * (others + 1) - others * weights}, dev);
      const double single = roofline_ms(one, dev);
      ms = p->decode_ms_at_zero[node] * (single > 0 ? scaled / single : 1);
    }
    return (ms + p->decode_ms_per_token[node] * sum_past) * slowdown_[device];
  }
  sum.bytes -= others * weights;  // the weights are read once for the batch
  return roofline_ms(sum, dev) * slowdown_[device];
}

double CostModel::node_decode_batch_ms(int device, int node, std::span<const int> pasts) const {
  if (pasts.size() == 1) return node_decode_step_ms(device, node, pasts[0]);
  if (pasts.empty() || graph_->node(node).is_vision()) return 0;
  models::Cost sum;
  double sum_past = 0;
  for (int past : pasts) {
    sum += graph_->decode_cost(node, past);
    sum_past += past;
  }
  return node_batch_ms(device, node, static_cast<int>(pasts.size()), sum, sum_past);
}

double CostModel::decode_batch_ms(int device, int first, int last, std::span<const int> pasts) const {
  if (pasts.size() == 1) return decode_step_ms(device, first, last, pasts[0]);
  double ms = 0;
  for (int i = first; i <= last; ++i) ms += node_decode_batch_ms(device, i, pasts);
  return ms;
}

double CostModel::decode_total_share_ms(int device, int first, int last, int batch) const {
  if (batch <= 1) return decode_total_ms(device, first, last);
  const int prefill_tokens = graph_->prefill_tokens(shape());
  const double b = batch;
  double ms = 0;
  for (int i = first; i <= last; ++i) {
    if (graph_->node(i).is_vision()) continue;
    for (int k = 0; k < shape().output_tokens; ++k) {  // `batch` alike steps: their sums are `batch` times one's
      const auto c = graph_->decode_cost(i, prefill_tokens + k);
      ms += node_batch_ms(device, i, batch, {b * c.flops, b * c.bytes}, b * (prefill_tokens + k));
    }
  }
  return ms / b;
}

void CostModel::rebuild_device(int device) {
  const int nodes = num_nodes();
  const int prefill_tokens = graph_->prefill_tokens(shape());
  const int steps = shape().output_tokens;
  auto& pre = prefill_prefix_[device];
  auto& dec = decode_prefix_[device];
  for (int i = 0; i < nodes; ++i) {
    pre[i + 1] = pre[i] + node_prefill_ms(device, i);
    double total = 0;
    if (!graph_->node(i).is_vision()) {
      for (int k = 0; k < steps; ++k) total += node_decode_step_ms(device, i, prefill_tokens + k);
    }
    dec[i + 1] = dec[i] + total;
  }
}

double CostModel::prefill_ms(int device, int first, int last) const {
  const auto& p = prefill_prefix_[device];
  return p[last + 1] - p[first];
}

double CostModel::decode_total_ms(int device, int first, int last) const {
  const auto& p = decode_prefix_[device];
  return p[last + 1] - p[first];
}

double CostModel::decode_step_ms(int device, int first, int last, int past_tokens) const {
  double ms = 0;
  for (int i = first; i <= last; ++i) ms += node_decode_step_ms(device, i, past_tokens);
  return ms;
}

const std::vector<Hop>& CostModel::route(int from, int to) const { return links_->routes[from][to]; }

double CostModel::transfer_ms(int from, int to, double bytes) const {
  double ms = 0;
  for (const auto& hop : route(from, to)) ms += hop_ms(hop.spec, bytes);
  return ms;
}

double CostModel::weight_bytes(int first, int last) const { return weight_prefix_[last + 1] - weight_prefix_[first]; }

double CostModel::kv_bytes(int first, int last) const { return kv_prefix_[last + 1] - kv_prefix_[first]; }

double CostModel::buffer_bytes(int first, int last) const {
  double widest = 0;
  for (int i = first; i <= last; ++i) widest = std::max(widest, node_buffer_[i]);
  return widest;
}

double CostModel::memory_bytes(int first, int last) const {
  return weight_bytes(first, last) + kv_bytes(first, last) + buffer_bytes(first, last);
}

}  // namespace adaptlink::partition

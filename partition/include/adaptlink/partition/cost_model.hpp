// Roofline cost model: how long a device takes for a range of nodes, how long a cut's transfer
// takes, how much memory a stage needs. Every planner and the simulator use these numbers, so
// there is one definition of "cost" in the project.
//
//   node time on a device, per pass = max(flops / (tflops * 1e12), bytes / (mem_bw_gbs * 1e9))
//   stage time                      = sum of its nodes' times
//   transfer time over one hop      = latency + bytes * 8 / (bandwidth_mbps * 1e6)
//   star route between two devices  = both access hops (device -> AP -> device), store and forward,
//                                     unless a direct link joins them
//   mesh route                      = the direct link of the pair
//
// Per request: one prefill (vision over all crops, text over prompt + image tokens), then
// `output_tokens` decode steps, the k-th with prefill_tokens + k tokens already in the KV cache.
//
// A batch of b decode steps (of different requests, past_1..past_b cached tokens) as one forward, per node:
//   time = max(sum_i flops(past_i) / peak, (weights + sum_i (KV read_i + activations_i)) / bandwidth)
// i.e. the weights are read once for the batch. b = 1 is the single step exactly. With a profile, the
// measured batch time at an empty cache (NodeTimes::batch_at_zero; without measured batches, the batch-1 time
// scaled by the roofline's batch factor), plus the measured growth per cached token for each member.
#pragma once

#include <optional>
#include <span>
#include <memory>
#include <vector>

#include "adaptlink/models/graph.hpp"
#include "adaptlink/partition/scenario.hpp"

namespace adaptlink::partition {

// One hop of a route: which link resource it occupies, its bandwidth and latency.
struct Hop {
  int link = -1;  // index into CostModel::link_names()
  Link spec;
};

// Time (ms) to push `bytes` over one hop: latency + serialisation.
inline double hop_ms(const Link& link, double bytes) {
  return link.latency_ms + bytes * 8.0 / (link.bandwidth_mbps * 1e6) * 1e3;
}
// Time (ms) the hop's link is busy with `bytes` (serialisation only).
inline double hop_busy_ms(const Link& link, double bytes) { return bytes * 8.0 / (link.bandwidth_mbps * 1e6) * 1e3; }

// Measured per-node times (a profile file) that replace the roofline for some devices.
struct NodeTimes {
  std::vector<double> prefill_ms;           // per node, for the scenario's request shape
  std::vector<double> decode_ms_at_zero;    // per node, decode step with an empty cache
  std::vector<double> decode_ms_per_token;  // per node, growth per cached token
  // Optional: decode batches measured at these sizes (ascending, each > 1) ...
  std::vector<int> batch_sizes;
  // ... [node][k]: a batch of batch_sizes[k] steps at an empty cache (each member then adds its cached tokens x
  // decode_ms_per_token). Between sizes linear in the batch size (batch 1 is decode_ms_at_zero); beyond the largest,
  // the last segment's slope. Empty: the roofline's batch factor scales decode_ms_at_zero.
  std::vector<std::vector<double>> decode_batch_ms_at_zero;
  // The batch-of-`batch` time at an empty cache of `node`, as described above.
  [[nodiscard]] double batch_at_zero(int node, int batch) const;
};

class CostModel {
 public:
  CostModel(const models::LayerGraph& graph, const Scenario& scenario);
  // The same graph, profiles, slowdowns and network on another scenario with the same devices and network (a
  // replica's: other device roles, in_flight and requests; the KV reservation follows its in_flight).
  CostModel(const CostModel& base, const Scenario& scenario);

  [[nodiscard]] const models::LayerGraph& graph() const { return *graph_; }
  [[nodiscard]] const Scenario& scenario() const { return *scenario_; }
  [[nodiscard]] int num_devices() const { return static_cast<int>(scenario_->devices.size()); }
  [[nodiscard]] int num_nodes() const { return graph_->size(); }
  [[nodiscard]] const models::RequestShape& shape() const { return scenario_->workload.shape; }

  // Replace the roofline for `device` with measured times (calibration hook).
  void set_profile(int device, const NodeTimes& times);
  // Scale a device's compute times (slowdown faults); 1 = nominal.
  void set_slowdown(int device, double factor);

  // Compute time (ms) of nodes [first, last] on `device`, O(1) from prefix sums.
  [[nodiscard]] double prefill_ms(int device, int first, int last) const;
  [[nodiscard]] double decode_total_ms(int device, int first, int last) const;  // all decode steps
  [[nodiscard]] double decode_step_ms(int device, int first, int last, int past_tokens) const;
  [[nodiscard]] double node_prefill_ms(int device, int node) const;
  [[nodiscard]] double node_decode_step_ms(int device, int node, int past_tokens) const;
  // A batch of decode steps (one per request, `pasts` its cached tokens) over nodes [first, last] as one forward.
  [[nodiscard]] double decode_batch_ms(int device, int first, int last, std::span<const int> pasts) const;
  [[nodiscard]] double node_decode_batch_ms(int device, int node, std::span<const int> pasts) const;
  // A request's share of all its decode steps when every step runs in a batch of `batch` alike requests
  // (decode_total_ms for batch 1): what a stage's busy time per request falls to at that batch size.
  [[nodiscard]] double decode_total_share_ms(int device, int first, int last, int batch) const;

  // Route between two devices (empty when from == to) and the time to send `bytes` along it.
  [[nodiscard]] const std::vector<Hop>& route(int from, int to) const;
  [[nodiscard]] double transfer_ms(int from, int to, double bytes) const;
  [[nodiscard]] int num_links() const { return static_cast<int>(links_->names.size()); }
  [[nodiscard]] const std::vector<std::string>& link_names() const { return links_->names; }

  // Memory a device needs to hold nodes [first, last]: weights + KV cache for `in_flight`
  // requests at full context + activation buffers (largest prefill intermediate, double-buffered).
  [[nodiscard]] double memory_bytes(int first, int last) const;
  [[nodiscard]] double weight_bytes(int first, int last) const;
  [[nodiscard]] double kv_bytes(int first, int last) const;
  [[nodiscard]] double buffer_bytes(int first, int last) const;

 private:
  const models::LayerGraph* graph_;
  const Scenario* scenario_;
  // [device][node + 1] prefix sums
  std::vector<std::vector<double>> prefill_prefix_, decode_prefix_;
  std::vector<double> weight_prefix_, kv_prefix_;
  std::vector<double> node_buffer_;  // per node: transient prefill buffer bytes
  std::vector<double> slowdown_;
  std::vector<std::optional<NodeTimes>> profile_;
  // The network's links and routes (quadratic in the devices, as a mesh is): built once and shared by the cost
  // models derived from this one, which keep its devices and network.
  struct Links {
    std::vector<std::vector<std::vector<Hop>>> routes;  // [from][to]
    std::vector<std::string> names;
  };
  std::shared_ptr<const Links> links_;
  static std::shared_ptr<const Links> build_links(const Scenario& scenario);
  void build_tables();
  void rebuild_device(int device);
  // A batch of `batch` decode steps over `node` from its members' summed costs and cached tokens (batch >= 2).
  [[nodiscard]] double node_batch_ms(int device, int node, int batch, models::Cost sum, double sum_past) const;
};

}  // namespace adaptlink::partition

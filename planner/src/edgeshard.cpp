// The edgeshard planner: a reproduction of EdgeShard's throughput-optimal joint device selection and
// model partition (Zhang, Cao, Shen, Cui, "EdgeShard: Efficient LLM Inference via Collaborative Edge
// Computing", arXiv:2405.14371, 2024; IEEE IoT Journal 2025).
//
// The published idea: profile, offline, each layer's execution time on each device, each layer's
// activation size and memory need, and the bandwidth between each pair of devices. For throughput
// (pipelined generation) a dynamic program over (layers placed, set of devices used, device of the
// last shard) chooses which devices take part and where to cut the layer sequence so that the slowest
// pipeline step — a shard's compute time or the transfer of its activation to the next shard over the
// link between the two devices — is as short as possible, under each device's memory. The source device,
// which holds the user's input, must run the first layer (it keeps the raw input private).
//
// How faithfully it is reproduced:
//   * The DP, objective, memory constraint and source device are EdgeShard's. The source is the first
//     active device of the scenario. Devices with identical specifications and links are
//     interchangeable, which lets the DP count them by class instead of enumerating subsets (exact for
//     EdgeShard's cost model; see solve_type_dp in pipeedge.cpp).
//   * SINGLE-phase cost. EdgeShard targets text LLMs and profiles per-token generation: a layer's time is
//     its time for one decode step (here the mean step over the request's generation,
//     decode_total_ms / output_tokens) and a cut's transfer is one token's activation. So it does not
//     see the prefill (prompt + image tokens: long for LLaVA, dominant for short answers), nor the vision
//     tower, which runs in the prefill only and therefore costs nothing per token, nor the prefill
//     activation crossing each cut. This is the deliberate difference to adaptlink.
//   * Communication is one link per cut: activation bytes / bandwidth between the two devices (the direct
//     link if there is one, else the slower of their two access links). It ignores latency, the two
//     store-and-forward hops through the access point, a device's access link carrying both its incoming
//     and outgoing transfers, the sampled token going back from the last shard to the first, and the
//     closed-loop population limit (in_flight / latency).
//   * Memory: CostModel::memory_bytes (weights + KV cache for in_flight requests + buffers), the
//     project's one memory model, so its plans are feasible.
//   * Ties on the bottleneck are broken by the smaller sum of per-token times. The latency objective is
//     not reproduced (EdgeShard's latency DP is a separate algorithm): this planner always maximises
//     throughput.
#include <algorithm>
#include <map>
#include <tuple>

#include "planners_internal.hpp"

namespace adaptlink::partition::detail {

namespace {

class EdgeShardPlanner final : public Planner {
 public:
  [[nodiscard]] std::string name() const override { return "edgeshard"; }
  [[nodiscard]] Expected<Plan> plan(const CostModel& cost, Objective objective) const override {
    const auto& scenario = cost.scenario();
    const auto& net = scenario.network;
    const auto devices = active_devices(scenario);
    if (devices.empty()) return make_error("edgeshard: no active device");
    const int nodes = cost.num_nodes();
    const int last = nodes - 1;
    const double steps = cost.shape().output_tokens;

    // Devices named in a direct link have pair-specific bandwidths: they are classes of their own.
    const auto has_direct = named_in_direct_links(scenario);
    TypeDp dp;
    dp.nodes = nodes;
    dp.classes.push_back({{devices.front()}});  // the source device
    dp.first_class = 0;
    std::map<std::tuple<double, double, double, double, double, double, double>, int> class_of;
    for (size_t a = 1; a < devices.size(); ++a) {
      const int d = devices[a];
      const auto& dev = scenario.devices[d];
      if (has_direct[d]) {
        dp.classes.push_back({{d}});
        continue;
      }
      const Link link = net.topology == Topology::star ? net.access_link(d) : net.default_link;
      const auto key = std::make_tuple(dev.tflops, dev.mem_bytes, dev.mem_bw_gbs, link.bandwidth_mbps,
                                       link.latency_ms, cost.prefill_ms(d, 0, last), cost.decode_total_ms(d, 0, last));
      auto [it, inserted] = class_of.try_emplace(key, static_cast<int>(dp.classes.size()));
      if (inserted) dp.classes.emplace_back();
      dp.classes[it->second].devices.push_back(d);
    }

    // Bandwidth of the one link EdgeShard sees between two devices.
    auto pair_mbps = [&](int a, int b) {
      if (auto direct = net.direct_link(a, b)) return direct->bandwidth_mbps;
      return std::min(net.access_link(a).bandwidth_mbps, net.access_link(b).bandwidth_mbps);
    };
    dp.compute_ms = [&](int cls, int first, int end) {
      return cost.decode_total_ms(dp.classes[cls].devices.front(), first, end - 1) / steps;
    };
    dp.transfer_ms = [&](int from, int to, int cut) {
      const auto& a = dp.classes[from].devices;
      const auto& b = dp.classes[to].devices;
      const int da = a.front();
      const int db = from == to ? b.at(1) : b.front();  // two devices of one class
      return cost.graph().decode_out_bytes(cut) * 8.0 / (pair_mbps(da, db) * 1e6) * 1e3;
    };
    dp.fits = [&](int cls, int first, int end) {
      return cost.memory_bytes(first, end - 1) <= scenario.devices[dp.classes[cls].devices.front()].mem_bytes;
    };
    auto stages = solve_type_dp(dp);
    if (stages.empty()) {
      auto e = memory_shortfall(cost, devices);
      e.message = "edgeshard: " + e.message;
      return e;
    }
    return finish_split(cost, "edgeshard", objective, std::move(stages));
  }
};

}  // namespace

std::unique_ptr<Planner> make_edgeshard_planner() { return std::make_unique<EdgeShardPlanner>(); }

}  // namespace adaptlink::partition::detail

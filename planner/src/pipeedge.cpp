// The pipeedge planner: a reproduction of PipeEdge's partition scheduler (Hu, Imes, Zhao, Sun, Walters,
// "PipeEdge: Pipeline Parallelism for Large-Scale Model Inference on Heterogeneous Edge Devices",
// Euromicro DSD 2022; the scheduler is `sched-pipeline` in github.com/usc-isi/PipeEdge).
//
// The published idea: a dynamic program over (layers placed, devices used, device of the next stage)
// that minimises the pipeline's bottleneck, max over stages of max(stage compute time, time to send the
// stage's output to the next stage), where devices of the same *type* are interchangeable, so the set of
// used devices is a vector of per-type counts (mixed radix) instead of a bitmask. Each stage must fit its
// device's memory: weights plus activation buffers. Any device may take the first stage.
//
// How we map it onto this project, and what we keep from the original on purpose:
//   * Device type = identical tflops, memory, memory bandwidth, per-device bandwidth and node times.
//   * PipeEdge profiles one forward pass of a microbatch per layer (ViT/BERT encoders: no decode loop).
//     The simplest faithful mapping of "one microbatch" here is one request: a node's time is its whole
//     per-request work on the device, prefill + all decode steps (CostModel::prefill_ms +
//     decode_total_ms), which is exactly the stage busy time of plan.hpp.
//   * Communication: bytes that cross the cut per request (prefill activation + one activation per
//     decode step) divided by the bandwidth between the two devices: the pair's direct link where the
//     scenario gives one (PipeEdge's model takes a bandwidth per device pair), else min(bandwidth of the
//     two devices), one figure per device (`bw_Mbps`): its access link in a star, the default link in a
//     mesh. Devices named in a direct link are types of their own. No latency, no store-and-forward
//     through the access point, no sharing of one access link by a stage's incoming and outgoing transfers, no token back
//     edge from the last stage to the first, and no closed-loop population limit — PipeEdge's model
//     has none of these.
//   * Memory: PipeEdge counts weights + send/receive/processing buffers. An autoregressive decoder also
//     needs its KV cache, and plans must be feasible under the project's one memory model, so a stage
//     fits when CostModel::memory_bytes (weights + KV cache + buffers) is within the device's memory.
//   * The schedule maps types back to hosts in scenario order, as PipeEdge's schedule_types_to_hosts.
//   * The table has (nodes + 1) x prod(count + 1) x types cells; past 1.5 M (e.g. 16 all-different
//     devices) the largest per-type counts are capped, then the slowest types are left out — PipeEdge
//     itself has no such bound.
//   * The objective is throughput only (PipeEdge has no latency objective); ties on the bottleneck are
//     broken by the smaller sum of stage and transfer times.
//
// The DP itself (solve_type_dp) is shared with the edgeshard planner, which runs it on its own costs.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <tuple>

#include "planners_internal.hpp"

namespace adaptlink::partition::detail {

std::vector<bool> named_in_direct_links(const Scenario& scenario) {
  std::vector<bool> named(scenario.devices.size(), false);
  for (const auto& [pair, link] : scenario.network.direct) {
    named[pair.first] = true;
    named[pair.second] = true;
  }
  return named;
}

std::vector<Stage> solve_type_dp(const TypeDp& p, size_t max_states) {
  const int classes = static_cast<int>(p.classes.size());
  const int nodes = p.nodes;
  if (classes == 0 || nodes <= 0) return {};
  std::vector<int> counts;
  for (const auto& c : p.classes) counts.push_back(static_cast<int>(c.devices.size()));
  // Cap the per-class counts until the table fits (a stage per device of a class beyond the cap is
  // rarely useful: the model has only so many nodes to spread).
  auto table_size = [&] {
    double s = static_cast<double>(nodes + 1) * classes;
    for (int c : counts) s *= c + 1;
    return s;
  };
  // When even one device per class is too many (many distinct devices), leave out the slowest classes
  // (largest time for the whole model), never the first one.
  while (table_size() > static_cast<double>(max_states)) {
    auto largest = std::max_element(counts.begin(), counts.end());
    if (*largest > 1) {
      --*largest;
      continue;
    }
    int slowest = -1;
    double slowest_ms = -1;
    for (int c = 0; c < classes; ++c) {
      if (counts[c] == 0 || c == p.first_class) continue;
      const double ms = p.compute_ms(c, 0, nodes);
      if (ms > slowest_ms) {
        slowest_ms = ms;
        slowest = c;
      }
    }
    if (slowest < 0) break;
    counts[slowest] = 0;
  }
  std::vector<size_t> radix(static_cast<size_t>(classes) + 1, 1);
  for (int c = 0; c < classes; ++c) radix[c + 1] = radix[c] * static_cast<size_t>(counts[c] + 1);
  const size_t sets = radix[classes];
  auto used = [&](size_t set, int c) { return static_cast<int>(set / radix[c] % (counts[c] + 1)); };

  struct Cell {
    double w = std::numeric_limits<double>::infinity();    // bottleneck
    double sum = std::numeric_limits<double>::infinity();  // tie-break
    int start = -1;                                        // first node of the last stage
    int prev = -1;                                         // class of the stage before it
  };
  std::vector<Cell> h(static_cast<size_t>(nodes + 1) * sets * static_cast<size_t>(classes));
  auto at = [&](int j, size_t set, int c) -> Cell& {
    return h[(static_cast<size_t>(j) * sets + set) * static_cast<size_t>(classes) + static_cast<size_t>(c)];
  };
  auto better = [](double w, double sum, const Cell& cell) {
    if (w < cell.w * (1 - 1e-12)) return true;
    return w <= cell.w * (1 + 1e-12) && sum < cell.sum;
  };
  double best_w = std::numeric_limits<double>::infinity();
  double best_sum = best_w;
  size_t best_set = 0;
  int best_class = -1;
  auto offer = [&](int k, size_t set, int c, double w, double sum, int start, int prev) {
    Cell& cell = at(k, set, c);
    if (!better(w, sum, cell)) return;
    cell = Cell{w, sum, start, prev};
    if (k == nodes) {
      Cell best{best_w, best_sum, 0, 0};
      if (better(w, sum, best)) {
        best_w = w;
        best_sum = sum;
        best_set = set;
        best_class = c;
      }
    }
  };

  // First stage.
  for (int c = 0; c < classes; ++c) {
    if (counts[c] == 0 || (p.first_class >= 0 && c != p.first_class)) continue;
    for (int k = 1; k <= nodes; ++k) {
      if (!p.fits(c, 0, k)) break;  // memory grows with the range
      const double comp = p.compute_ms(c, 0, k);
      offer(k, radix[c], c, comp, comp, 0, -1);
    }
  }
  // Later stages, in order of the node where they start.
  for (int j = 1; j < nodes; ++j) {
    for (size_t set = 0; set < sets; ++set) {
      for (int u = 0; u < classes; ++u) {
        const Cell cell = at(j, set, u);
        if (!std::isfinite(cell.w) || cell.w > best_w * (1 + 1e-12)) continue;
        for (int v = 0; v < classes; ++v) {
          if (used(set, v) >= counts[v]) continue;
          const double comm = p.transfer_ms(u, v, j - 1);
          if (comm > best_w * (1 + 1e-12)) continue;
          const size_t next = set + radix[v];
          for (int k = j + 1; k <= nodes; ++k) {
            if (!p.fits(v, j, k)) break;
            const double comp = p.compute_ms(v, j, k);
            if (comp > best_w * (1 + 1e-12)) break;  // compute grows with the range
            offer(k, next, v, std::max({cell.w, comm, comp}), cell.sum + comm + comp, j, u);
          }
        }
      }
    }
  }
  if (best_class < 0) return {};

  // Reconstruct (class, range) stages backwards, then give each class's devices out in order.
  std::vector<std::tuple<int, int, int>> ranges;  // class, first, last (inclusive)
  int j = nodes, c = best_class;
  size_t set = best_set;
  while (j > 0) {
    const Cell& cell = at(j, set, c);
    ranges.emplace_back(c, cell.start, j - 1);
    set -= radix[c];
    j = cell.start;
    c = cell.prev;
  }
  std::reverse(ranges.begin(), ranges.end());
  std::vector<size_t> next_device(static_cast<size_t>(classes), 0);
  std::vector<Stage> stages;
  for (const auto& [cls, first, last] : ranges) {
    Stage st;
    st.device = p.classes[cls].devices[next_device[cls]++];
    st.first_node = first;
    st.last_node = last;
    stages.push_back(st);
  }
  return stages;
}

namespace {

class PipeEdgePlanner final : public Planner {
 public:
  [[nodiscard]] std::string name() const override { return "pipeedge"; }
  [[nodiscard]] Expected<Plan> plan(const CostModel& cost, Objective objective) const override {
    const auto& scenario = cost.scenario();
    const auto& net = scenario.network;
    const auto devices = active_devices(scenario);
    if (devices.empty()) return make_error("pipeedge: no active device");
    const int nodes = cost.num_nodes();
    const int last = nodes - 1;
    const double steps = cost.shape().output_tokens;

    // One bandwidth figure per device, as PipeEdge's device types have; a pair's direct link overrides it.
    auto device_mbps = [&](int d) {
      return net.topology == Topology::star ? net.access_link(d).bandwidth_mbps : net.default_link.bandwidth_mbps;
    };
    auto pair_mbps = [&](int a, int b) {
      if (auto direct = net.direct_link(a, b)) return direct->bandwidth_mbps;
      return std::min(device_mbps(a), device_mbps(b));
    };
    const auto has_direct = named_in_direct_links(scenario);  // types of their own
    TypeDp dp;
    dp.nodes = nodes;
    std::map<std::tuple<double, double, double, double, double, double>, int> type_of;
    for (int d : devices) {
      const auto& dev = scenario.devices[d];
      if (has_direct[d]) {
        dp.classes.push_back({{d}});
        continue;
      }
      const auto key = std::make_tuple(dev.tflops, dev.mem_bytes, dev.mem_bw_gbs, device_mbps(d),
                                       cost.prefill_ms(d, 0, last), cost.decode_total_ms(d, 0, last));
      auto [it, inserted] = type_of.try_emplace(key, static_cast<int>(dp.classes.size()));
      if (inserted) dp.classes.emplace_back();
      dp.classes[it->second].devices.push_back(d);
    }
    std::vector<double> cut_bytes(static_cast<size_t>(nodes));
    for (int c = 0; c < nodes; ++c) {
      cut_bytes[c] = cost.graph().prefill_out_bytes(c, cost.shape()) + steps * cost.graph().decode_out_bytes(c);
    }
    auto rep = [&](int cls) { return dp.classes[cls].devices.front(); };
    dp.compute_ms = [&](int cls, int first, int end) {
      return cost.prefill_ms(rep(cls), first, end - 1) + cost.decode_total_ms(rep(cls), first, end - 1);
    };
    dp.transfer_ms = [&](int from, int to, int cut) {
      const auto& b = dp.classes[to].devices;
      const int db = from == to ? b.at(1) : b.front();  // two devices of one type (no direct link between them)
      return cut_bytes[cut] * 8.0 / (pair_mbps(rep(from), db) * 1e6) * 1e3;
    };
    dp.fits = [&](int cls, int first, int end) {
      return cost.memory_bytes(first, end - 1) <= scenario.devices[rep(cls)].mem_bytes;
    };
    auto stages = solve_type_dp(dp);
    if (stages.empty()) {
      auto e = memory_shortfall(cost, devices);
      e.message = "pipeedge: " + e.message;
      return e;
    }
    return finish_split(cost, "pipeedge", objective, std::move(stages));
  }
};

}  // namespace

std::unique_ptr<Planner> make_pipeedge_planner() { return std::make_unique<PipeEdgePlanner>(); }

}  // namespace adaptlink::partition::detail

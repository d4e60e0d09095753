// Planner registry and the split baselines: uniform (the paper's baseline), proportional
// (layers proportional to compute) and memory (layers proportional to memory, as exo and llama.cpp
// RPC split). The peer planners edgeshard (EdgeShard, Zhang et al. 2024) and pipeedge (PipeEdge, Hu et
// al. 2022) live in edgeshard.cpp and pipeedge.cpp.
//
// `memory` reproduces the split of exo (github.com/exo-explore/exo: its default
// ring-memory-weighted partitioning gives each device a share of the layers proportional to its
// memory) and of llama.cpp's RPC back-end (`--tensor-split` defaults to each device's free memory).
// Both keep the devices in the given order and ignore compute speed and links; so does this planner.
#include "adaptlink/planner/planner.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "adaptlink/planner/backup.hpp"
#include "planners_internal.hpp"

namespace adaptlink::partition {

Error memory_shortfall(const CostModel& cost, const std::vector<int>& devices) {
  const int last = cost.num_nodes() - 1;
  const double needed = cost.memory_bytes(0, last);
  double offered = 0;
  for (int d : devices) offered += cost.scenario().devices[d].mem_bytes;
  if (needed > offered) {
    return make_error("model does not fit: needs {:.1f} GB (weights {:.1f} GB + KV cache {:.1f} GB + buffers), "
                      "devices offer {:.1f} GB",
                      needed / 1e9, cost.weight_bytes(0, last) / 1e9, cost.kv_bytes(0, last) / 1e9, offered / 1e9);
  }
  return make_error("model does not fit: needs {:.1f} GB in all and devices offer {:.1f} GB, but no split into "
                    "contiguous stages fits every device",
                    needed / 1e9, offered / 1e9);
}

namespace detail {

std::vector<Stage> split_by_weights(const CostModel& cost, const std::vector<int>& devices,
                                    const std::vector<double>& weights) {
  const auto& graph = cost.graph();
  const int layers = graph.num_decoder_layers();
  const int k = static_cast<int>(devices.size());
  // Largest-remainder apportionment of the decoder layers.
  const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
  std::vector<int> counts(static_cast<size_t>(k));
  std::vector<std::pair<double, int>> remainders;
  int assigned = 0;
  for (int s = 0; s < k; ++s) {
    const double exact = layers * weights[s] / total;
    counts[s] = static_cast<int>(std::floor(exact));
    assigned += counts[s];
    remainders.emplace_back(exact - counts[s], -s);  // ties go to the earlier device
  }
  std::sort(remainders.rbegin(), remainders.rend());
  for (int r = 0; assigned < layers; ++r, ++assigned) counts[-remainders[r].second] += 1;

  std::vector<Stage> stages;
  int next = graph.first_decoder_index();
  for (int s = 0; s < k; ++s) {
    Stage st;
    st.device = devices[s];
    st.first_node = s == 0 ? 0 : next;
    st.last_node = next + counts[s] - 1;
    next += counts[s];
    if (s == k - 1) st.last_node = graph.head_index();
    if (st.last_node < st.first_node) continue;  // a device that got no layer takes no stage
    stages.push_back(st);
  }
  // The head always goes with the last stage that has layers.
  stages.back().last_node = graph.head_index();
  return stages;
}

Expected<Plan> finish_split(const CostModel& cost, std::string name, Objective objective, std::vector<Stage> stages) {
  Plan plan;
  plan.planner = std::move(name);
  plan.objective = objective;
  plan.predicted = evaluate(cost, stages);
  plan.stages = std::move(stages);
  if (!plan.predicted.feasible) {
    for (const auto& st : plan.stages) {
      const auto& dev = cost.scenario().devices[st.device];
      if (st.memory_bytes > dev.mem_bytes) {
        return make_error("{}: the stage on '{}' (nodes {}..{}) needs {:.1f} GB, the device offers {:.1f} GB",
                          plan.planner, dev.name, st.first_node, st.last_node, st.memory_bytes / 1e9,
                          dev.mem_bytes / 1e9);
      }
    }
  }
  return plan;
}

}  // namespace detail

namespace {

class SplitPlanner final : public Planner {
 public:
  enum class Weight { equal, compute, memory };
  SplitPlanner(std::string name, Weight weight) : name_(std::move(name)), weight_(weight) {}
  [[nodiscard]] std::string name() const override { return name_; }
  [[nodiscard]] Expected<Plan> plan(const CostModel& cost, Objective objective) const override {
    const auto devices = active_devices(cost.scenario());
    if (devices.empty()) return make_error("{}: no active device", name_);
    std::vector<double> weights;
    for (int d : devices) {
      const auto& dev = cost.scenario().devices[d];
      weights.push_back(weight_ == Weight::equal ? 1.0 : weight_ == Weight::compute ? dev.tflops : dev.mem_bytes);
    }
    return detail::finish_split(cost, name_, objective, detail::split_by_weights(cost, devices, weights));
  }

 private:
  std::string name_;
  Weight weight_;
};

}  // namespace

std::vector<std::string> planner_names() {
  return {"uniform", "proportional", "memory", "edgeshard", "pipeedge", "adaptlink", "exhaustive"};
}

Expected<std::unique_ptr<Planner>> make_planner(std::string_view name) {
  std::unique_ptr<Planner> p;
  if (name == "uniform") p = std::make_unique<SplitPlanner>("uniform", SplitPlanner::Weight::equal);
  if (name == "proportional") p = std::make_unique<SplitPlanner>("proportional", SplitPlanner::Weight::compute);
  if (name == "memory") p = std::make_unique<SplitPlanner>("memory", SplitPlanner::Weight::memory);
  if (name == "edgeshard") p = detail::make_edgeshard_planner();
  if (name == "pipeedge") p = detail::make_pipeedge_planner();
  if (name == "adaptlink") p = detail::make_adaptlink_planner();
  if (name == "exhaustive") p = detail::make_exhaustive_planner();
  if (!p) {
    std::string known;
    for (const auto& n : planner_names()) known += (known.empty() ? "" : ", ") + n;
    return make_error("unknown planner '{}' (known: {})", name, known);
  }
  return p;
}

Expected<Plan> make_plan(const CostModel& cost, std::string_view planner, Objective objective) {
  auto p = make_planner(planner);
  if (!p) return p.error();
  const auto start = std::chrono::steady_clock::now();
  auto plan = (*p)->plan(cost, objective);
  if (!plan) return plan;
  plan->solve_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  // Planners search on the closed-form bound; the reported prediction replays the plan (a replicated
  // plan's replicas were replayed on their own problems, replicas.cpp).
  if (plan->replicas.empty()) plan->predicted = predict(cost, plan->stages);
  if (cost.scenario().planner.backups) place_backups(cost, *plan);
  return plan;
}

}  // namespace adaptlink::partition

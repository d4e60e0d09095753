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
#include <limits>
#include <numeric>

#include "adaptlink/planner/backup.hpp"
#include "adaptlink/planner/bottleneck.hpp"
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

namespace {

// A lower bound (ms) on any plan's latency alone: every node on its fastest active device, no transfers.
double alone_lower_bound_ms(const CostModel& cost) {
  const auto devices = active_devices(cost.scenario());
  double ms = 0;
  for (int i = 0; i < cost.num_nodes(); ++i) {
    double best = std::numeric_limits<double>::infinity();
    for (int d : devices) best = std::min(best, cost.prefill_ms(d, i, i) + cost.decode_total_ms(d, i, i));
    if (std::isfinite(best)) ms += best;
  }
  return ms;
}

// The plan's certificate (Plan::upper_bound_rps), on the cost model it runs on. The demand caps every kind: a closed
// loop of A admitted requests reaches at most A / (the shortest possible latency alone), Poisson its rate.
void certify(const CostModel& base, Plan& plan) {
  if (!plan.predicted.feasible) return;
  const PlanCost run(base, plan);
  const CostModel& cost = run.get();
  const auto& sc = cost.scenario();
  if (batches_decode(sc)) return;
  const double lower_ms = alone_lower_bound_ms(cost);
  if (lower_ms <= 0) return;
  const auto devices = active_devices(sc);
  const double demand = closed_loop(sc.workload) ? sc.workload.in_flight * 1e3 / lower_ms : sc.workload.rate_per_s;
  if (plan.replicas.empty()) {
    const auto exact = min_bottleneck_pipeline(cost, devices);
    if (exact.capped || exact.lower_bound_ms <= 0) return;
    plan.upper_bound_rps = std::min(demand, 1e3 / exact.lower_bound_ms);
    plan.bound_kind = "one pipeline";
  } else {
    // Replicas on any grouping: every device busy all the time, every node on its fastest device.
    plan.upper_bound_rps = std::min(demand, static_cast<double>(devices.size()) * 1e3 / lower_ms);
    plan.bound_kind = "any";
  }
}

}  // namespace

std::vector<int> admission_steps(int population) {
  std::vector<int> out;
  for (int k = 1; population > 1; ++k) {
    const int a = std::max(1, static_cast<int>(std::lround(population / std::pow(2.0, k / 2.0))));
    if (!out.empty() && a >= out.back()) continue;
    if (a >= population) continue;
    out.push_back(a);
    if (a == 1) break;
  }
  return out;
}

namespace {

// One planner's plan with admission limit `in_flight` and batch limit `max_batch` (its cost model: the admitted
// scenario's), predicted by the replay.
struct Attempt {
  std::unique_ptr<Scenario> scenario;
  std::unique_ptr<CostModel> cost;
  Expected<Plan> plan = make_error("not planned");
};

// `beat_rps`: the best attempt's throughput so far; the planner may stop early where it proves it cannot beat it
// (Planner::plan_to_beat).
Attempt attempt(const Planner& planner, const CostModel& base, Objective objective, int in_flight, int max_batch,
                double beat_rps = 0) {
  Attempt a;
  a.scenario = std::make_unique<Scenario>(admitted(base.scenario(), in_flight, max_batch));
  a.cost = std::make_unique<CostModel>(base, *a.scenario);
  a.plan = objective == Objective::throughput ? planner.plan_to_beat(*a.cost, objective, beat_rps)
                                              : planner.plan(*a.cost, objective);
  if (!a.plan) return a;
  // A replicated plan may admit fewer than asked: the replicas' KV caches hold their sum (replicas.cpp).
  a.plan->in_flight = in_flight;
  if (!a.plan->replicas.empty()) {
    a.plan->in_flight = 0;
    for (const auto& r : a.plan->replicas) a.plan->in_flight += r.in_flight;
  }
  a.plan->max_batch = std::min(max_batch, a.plan->in_flight);
  // Planners search on the closed-form bound; the reported prediction replays the plan (a replicated plan's
  // replicas were replayed on their own problems, replicas.cpp).
  if (a.plan->replicas.empty()) a.plan->predicted = predict(*a.cost, a.plan->stages);
  return a;
}

// What a later attempt must beat to replace `a` (throughput objective; 0 when `a` failed or does not fit).
double beat(const Attempt& a) {
  return a.plan && a.plan->predicted.feasible ? a.plan->predicted.throughput_rps : 0;
}

// The better of two attempts for the objective (one that failed loses; ties keep `a`).
bool better(const Attempt& b, const Attempt& a, Objective objective) {
  if (!b.plan) return false;
  if (!a.plan) return true;
  if (b.plan->predicted.feasible != a.plan->predicted.feasible) return b.plan->predicted.feasible;
  return score(b.plan->predicted, objective) > score(a.plan->predicted, objective);
}

}  // namespace

Expected<Plan> make_plan(const CostModel& cost, std::string_view planner, Objective objective) {
  auto p = make_planner(planner);
  if (!p) return p.error();
  const auto start = std::chrono::steady_clock::now();
  const auto& sc = cost.scenario();
  const auto& settings = sc.planner;
  // The admission limit: the population (closed loop: its users; saturate: saturate_population), or the scenario's
  // max_in_flight when it fixes a smaller one; Poisson keeps the KV reservation of its in_flight.
  const int population = std::max(1, sc.workload.in_flight);
  const bool choose_in_flight = settings.max_in_flight == kAutoInFlight && closed_loop(sc.workload);
  const int first = settings.max_in_flight != kAutoInFlight && closed_loop(sc.workload)
                        ? std::min(population, settings.max_in_flight)
                        : population;
  const bool choose_batch = settings.max_batch == kAutoBatch;
  auto batch_for = [&](int in_flight) { return choose_batch ? in_flight : std::min(settings.max_batch, in_flight); };

  // A lower bound on any plan's latency alone: the admission descent's stop rule and the unbatched ceiling below.
  const double lower_ms = alone_lower_bound_ms(cost);
  Attempt best = attempt(**p, cost, objective, first, batch_for(first));
  // "auto" batches every waiting step; but a profile can measure a batch slower than its steps one at a time, and a
  // batched stage lets a waiting prefill take turns with its decode batches (runtime::StageQueue), which can put a
  // prefill on a token's path where unbatched decode-first would have run it in a gap. So the unbatched plan at the
  // same admission limit is planned too, and the better of the two is kept: "auto" never loses to max_batch 1 there.
  // That search is skipped where it cannot or will not win: when the batched plan reaches the most any unbatched one
  // could (every node of every request on its fastest device, all devices busy all the time), or runs 25 % faster
  // than its own cut unbatched (the turns cost 9 % at most on the suite's cuts, tests/sim/test_validation.cpp), as
  // at capacity, where batching gains 1.2-7x and a second full search would add half the planning time.
  if (choose_batch && first > 1 && best.plan && best.plan->predicted.feasible && objective == Objective::throughput) {
    const double unbatched_most_rps =
        lower_ms > 0 ? static_cast<double>(active_devices(sc).size()) * 1e3 / lower_ms : 0;
    bool try_unbatched = best.plan->predicted.throughput_rps < unbatched_most_rps;
    if (try_unbatched && best.plan->replicas.empty()) {
      const Scenario one = admitted(sc, first, 1);
      const CostModel one_cost(cost, one);
      auto stages = best.plan->stages;
      try_unbatched = best.plan->predicted.throughput_rps < 1.25 * predict(one_cost, stages).throughput_rps;
    }
    if (try_unbatched) {
      if (auto b = attempt(**p, cost, objective, first, 1, beat(best)); better(b, best, objective)) best = std::move(b);
    }
  }
  // Fewer requests in flight hold less KV cache and may let a better cut fit; fewer than A in flight reach at
  // most A / (the shortest possible latency alone), so the descent stops where that cannot beat the best. Every
  // planner descends the same steps, so a planner at least as good as another at each limit stays so.
  // The latency objective admits every user (latency counts from admission) unless they do not fit.
  if (choose_in_flight) {
    for (int a : admission_steps(first)) {
      if (best.plan && best.plan->predicted.feasible) {
        if (objective == Objective::latency) break;
        if (lower_ms > 0 && a * 1e3 / lower_ms <= best.plan->predicted.throughput_rps) break;
      }
      if (auto b = attempt(**p, cost, objective, a, batch_for(a), beat(best)); better(b, best, objective) || !best.plan) {
        best = std::move(b);
      }
    }
  }
  if (!best.plan) return best.plan;
  Plan plan = std::move(*best.plan);
  plan.solve_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  if (sc.planner.backups) place_backups(*best.cost, plan);
  certify(cost, plan);
  return plan;
}

}  // namespace adaptlink::partition

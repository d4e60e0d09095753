// adaptlink's replica search (see replicas.hpp for what a replicated plan is).
//
// Candidate device groupings, all built from memory, the constraint that decides what a group can be:
//   solos   devices that hold the whole model alone (with the KV cache of one request), fastest first;
//   packed  the other devices, largest memory first, each joined by the smallest remaining ones until the
//           group holds the model (weights, the KV cache of as many requests as devices, one buffer per
//           device, 5 % slack for contiguous cuts); leftovers that cannot form a group join the last one;
//   candidates: solos + packed, then the same with the two slowest groups merged, again and again down to two
//           groups; solos + the other devices as one pipeline; solos alone (devices that fit nowhere left out).
// Only groupings with at most in_flight groups and at least two are tried. For each, the in-flight slots are
// handed out one at a time: every group gets one, then each further slot goes to the group whose planned
// throughput gains the most from it. A group's throughput at k slots is adaptlink's own plan of the group's
// problem (replica_problem at in_flight k), replayed like any plan: memoised per (group, k).
// The best grouping wins when it beats one pipeline by more than 1 %; requests are then shared out in
// proportion to the replicas' throughput (largest remainder), and each replica's prediction is replayed on
// its own share.
#include "adaptlink/partition/replicas.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "adaptlink/partition/planner.hpp"
#include "adaptlink/partition/report.hpp"
#include "planners_internal.hpp"

namespace adaptlink::partition {

ReplicaProblem replica_problem(const CostModel& cost, const std::vector<int>& devices, int in_flight,
                               long long requests) {
  ReplicaProblem p;
  p.scenario = std::make_unique<Scenario>(cost.scenario());
  auto& sc = *p.scenario;
  for (size_t d = 0; d < sc.devices.size(); ++d) {
    const bool in_group = std::find(devices.begin(), devices.end(), static_cast<int>(d)) != devices.end();
    sc.devices[d].role = in_group ? Role::active : Role::standby;
  }
  sc.workload.in_flight = in_flight;
  sc.workload.requests = static_cast<int>(requests);
  sc.planner.backups = false;
  sc.planner.replicas = false;
  sc.faults.clear();
  p.cost = std::make_unique<CostModel>(cost, sc);
  return p;
}

Prediction combine_predictions(const std::vector<Replica>& replicas) {
  Prediction p;
  p.feasible = !replicas.empty();
  double capacity_rps = 0, latency = 0, alone = 0;
  for (const auto& r : replicas) {
    const auto& q = r.predicted;
    p.throughput_rps += q.throughput_rps;
    p.bound_rps += q.bound_rps;
    p.tokens_per_s += q.tokens_per_s;
    p.feasible = p.feasible && q.feasible;
    if (q.bottleneck_ms > 0) capacity_rps += 1e3 / q.bottleneck_ms;
    latency += q.throughput_rps * q.latency_ms;
    alone += q.throughput_rps * q.alone_ms;
  }
  if (capacity_rps > 0) p.bottleneck_ms = 1e3 / capacity_rps;
  if (p.throughput_rps > 0) {
    p.latency_ms = latency / p.throughput_rps;
    p.alone_ms = alone / p.throughput_rps;
  }
  return p;
}

namespace {
std::vector<long long> apportion(long long total, const std::vector<double>& weights, const std::vector<int>& floor_of);
}  // namespace

Prediction predict_replicated(const CostModel& cost, std::vector<Replica>& replicas, long long max_requests) {
  long long total = 0;
  std::vector<double> weights;
  std::vector<int> floors;
  long long in_flight = 0;
  for (const auto& r : replicas) {
    total += r.requests;
    weights.push_back(static_cast<double>(r.requests));
    floors.push_back(r.in_flight);
    in_flight += r.in_flight;
  }
  const auto requests = apportion(std::min(total, max_requests), weights, floors);
  std::vector<double> completions;
  double latency_sum = 0;
  for (size_t i = 0; i < replicas.size(); ++i) {
    auto& r = replicas[i];
    auto problem = replica_problem(cost, r.devices, r.in_flight, requests[i]);
    auto& p = r.predicted;
    p = evaluate(*problem.cost, r.stages);
    p.bound_rps = p.throughput_rps;
    if (!p.feasible) continue;
    const auto run = replay(*problem.cost, r.stages, requests[i], p.bottleneck_ms);
    if (run.throughput_rps > 0) {
      p.throughput_rps = std::min(run.throughput_rps, p.bound_rps);
      p.tokens_per_s = p.throughput_rps * problem.cost->shape().output_tokens;
      p.latency_ms = run.mean_latency_ms;
    }
    completions.insert(completions.end(), run.completions_ms.begin(), run.completions_ms.end());
    latency_sum += run.mean_latency_ms * static_cast<double>(run.completions_ms.size());
  }
  auto plan = combine_predictions(replicas);
  const double merged = steady_throughput(completions, in_flight) * 1e3;
  if (plan.feasible && merged > 0) {
    plan.throughput_rps = std::min(merged, plan.bound_rps);
    plan.tokens_per_s = plan.throughput_rps * cost.shape().output_tokens;
    plan.latency_ms = latency_sum / static_cast<double>(completions.size());
  }
  return plan;
}

bool replicas_allowed(const Scenario& scenario, Objective objective) {
  return scenario.planner.replicas && objective == Objective::throughput &&
         scenario.workload.arrival == Arrival::closed && !scenario.planner.backups && scenario.faults.empty() &&
         scenario.workload.in_flight >= 2 && active_devices(scenario).size() >= 2;
}

namespace {

constexpr double kMemorySlack = 1.05;
constexpr double kMinGain = 1.01;
// Screening replays (a group at k requests in flight) replay this many requests, at least 12 k: a shorter
// steady window than the reported prediction's, good enough to hand out slots and compare groupings.
constexpr long long kScreenRequests = 80;

using Group = std::vector<int>;  // scenario indices, scenario order

class ReplicaSearch {
 public:
  ReplicaSearch(const CostModel& cost, Objective objective)
      : cost_(cost), objective_(objective), planner_(std::move(make_planner("adaptlink").value())) {
    const int last = cost.num_nodes() - 1;
    weights_ = cost.weight_bytes(0, last);
    kv_per_request_ = cost.kv_bytes(0, last) / cost.scenario().workload.in_flight;
    buffer_ = cost.buffer_bytes(0, last);
    for (int d : active_devices(cost.scenario())) {
      alone_rps_[d] = 1e3 / (cost.prefill_ms(d, 0, last) + cost.decode_total_ms(d, 0, last));
    }
  }

  // Memory a group of `devices` devices needs for the whole model with `requests` requests in flight.
  [[nodiscard]] double need(size_t devices, size_t requests) const {
    return weights_ + kv_per_request_ * static_cast<double>(requests) + buffer_ * static_cast<double>(devices);
  }
  [[nodiscard]] double memory(const Group& g) const {
    double m = 0;
    for (int d : g) m += cost_.scenario().devices[d].mem_bytes;
    return m;
  }
  [[nodiscard]] double capacity(const Group& g) const {
    double c = 0;
    for (int d : g) c += alone_rps_.at(d);
    return c;
  }

  std::vector<std::vector<Group>> groupings() const {
    const auto& sc = cost_.scenario();
    std::vector<int> solos, rest;
    for (const auto& [d, rps] : alone_rps_) {
      (sc.devices[d].mem_bytes >= need(1, 1) * kMemorySlack ? solos : rest).push_back(d);
    }
    auto faster = [&](int a, int b) { return alone_rps_.at(a) > alone_rps_.at(b); };
    std::stable_sort(solos.begin(), solos.end(), faster);
    std::stable_sort(rest.begin(), rest.end(), [&](int a, int b) {
      const double ma = sc.devices[a].mem_bytes, mb = sc.devices[b].mem_bytes;
      return ma != mb ? ma > mb : faster(a, b);
    });
    std::vector<Group> packed;
    size_t lo = 0, hi = rest.size();
    while (lo < hi) {
      Group g{rest[lo++]};
      while (memory(g) < need(g.size(), g.size()) * kMemorySlack && lo < hi) g.push_back(rest[--hi]);
      if (memory(g) < need(g.size(), g.size()) * kMemorySlack && !packed.empty()) {
        packed.back().insert(packed.back().end(), g.begin(), g.end());
      } else {
        packed.push_back(g);
      }
    }
    std::vector<Group> base;
    for (int d : solos) base.push_back({d});
    std::vector<std::vector<Group>> out;
    auto add = [&](std::vector<Group> groups) {
      for (auto& g : groups) std::sort(g.begin(), g.end());
      std::sort(groups.begin(), groups.end());
      if (groups.size() < 2 || groups.size() > static_cast<size_t>(sc.workload.in_flight)) return;
      if (std::find(out.begin(), out.end(), groups) == out.end()) out.push_back(std::move(groups));
    };
    auto fine = base;
    fine.insert(fine.end(), packed.begin(), packed.end());
    for (auto groups = fine; groups.size() >= 2;) {
      add(groups);
      // Merge the two slowest groups.
      std::stable_sort(groups.begin(), groups.end(),
                       [&](const Group& a, const Group& b) { return capacity(a) > capacity(b); });
      auto last = groups.back();
      groups.pop_back();
      groups.back().insert(groups.back().end(), last.begin(), last.end());
    }
    if (!rest.empty()) {
      auto one_rest = base;
      one_rest.push_back(rest);
      add(one_rest);
    }
    add(base);
    return out;
  }

  // adaptlink's search on the group (memoised); empty when it cannot hold the model.
  const std::vector<Stage>& base_stages(const Group& group) {
    auto& base = base_plans_[group];
    if (!base) {
      const int k = std::min(static_cast<int>(group.size()), cost_.scenario().workload.in_flight);
      auto problem = replica_problem(cost_, group, k, cost_.scenario().workload.requests);
      base = detail::adaptlink_bound_best(*problem.cost, objective_);
    }
    return *base;
  }

  // The problem at k requests in flight, for replaying any group's stages (memoised).
  const CostModel& problem_at(int k) {
    auto& p = problems_[k];
    if (!p.cost) p = replica_problem(cost_, active_devices(cost_.scenario()), k, cost_.scenario().workload.requests);
    return *p.cost;
  }

  // adaptlink's plan of `group` at `k` requests in flight (the scenario's requests); nullopt when the group
  // cannot hold the model.
  std::optional<Plan> plan_group(const Group& group, int k) const {
    auto problem = replica_problem(cost_, group, k, cost_.scenario().workload.requests);
    auto plan = planner_->plan(*problem.cost, objective_);
    if (!plan || !plan->predicted.feasible) return std::nullopt;
    return std::move(*plan);
  }

  // A group's throughput at k requests in flight, memoised: adaptlink's search (without its replay ranking)
  // plans the group once, at as many requests as it has devices, and every k replays that plan (a full plan
  // per group and slot would cost many times more; the winning groups are planned in full at their own k).
  // 0 when the group cannot hold the model.
  double group_rps(const Group& group, int k) {
    const auto key = std::make_pair(group, k);
    if (auto it = rps_.find(key); it != rps_.end()) return it->second;
    double rps = 0;
    if (auto stages = base_stages(group); !stages.empty()) {
      const auto p = predict(problem_at(k), stages, std::max<long long>(kScreenRequests, 12LL * k));
      if (p.feasible) rps = p.throughput_rps;
    }
    rps_[key] = rps;
    return rps;
  }
  // The closed-form bound of that plan at k (never below its replay).
  double group_bound(const Group& group, int k) {
    auto stages = base_stages(group);
    if (stages.empty()) return 0;
    const auto p = evaluate(problem_at(k), stages);
    return p.feasible ? p.throughput_rps : 0.0;
  }

  // Slots per group (each at least one), lazily greedy: each further slot goes to the group that gains the
  // most from it, where a gain is bounded by the closed-form bound at k + 1 less the replay at k, so a group
  // is replayed at k + 1 only when that bound could make it the winner. Empty when a group cannot hold the
  // model.
  std::vector<int> share_slots(const std::vector<Group>& groups) {
    std::vector<int> k(groups.size(), 1);
    for (const auto& g : groups) {
      if (group_rps(g, 1) <= 0) return {};
    }
    for (int left = cost_.scenario().workload.in_flight - static_cast<int>(groups.size()); left > 0; --left) {
      std::vector<double> gain(groups.size());
      std::vector<bool> exact(groups.size(), false);
      for (size_t g = 0; g < groups.size(); ++g) gain[g] = group_bound(groups[g], k[g] + 1) - group_rps(groups[g], k[g]);
      for (;;) {
        const size_t top = static_cast<size_t>(std::max_element(gain.begin(), gain.end()) - gain.begin());
        if (exact[top]) {
          ++k[top];
          break;
        }
        gain[top] = group_rps(groups[top], k[top] + 1) - group_rps(groups[top], k[top]);
        exact[top] = true;
      }
    }
    rps_of_ = 0;
    for (size_t g = 0; g < groups.size(); ++g) rps_of_ += group_rps(groups[g], k[g]);
    return k;
  }
  // The last share_slots()'s total throughput.
  [[nodiscard]] double shared_rps() const { return rps_of_; }

 private:
  const CostModel& cost_;
  Objective objective_;
  std::unique_ptr<Planner> planner_;
  double weights_ = 0, kv_per_request_ = 0, buffer_ = 0;
  std::map<int, double> alone_rps_;  // active devices
  std::map<Group, std::optional<std::vector<Stage>>> base_plans_;
  std::map<int, ReplicaProblem> problems_;  // by k: replays read only the workload, not the device roles
  std::map<std::pair<Group, int>, double> rps_;
  double rps_of_ = 0;
};

// Largest-remainder shares of `total` in proportion to `weights`, each at least `floor_of[i]`.
std::vector<long long> apportion(long long total, const std::vector<double>& weights, const std::vector<int>& floor_of) {
  const double sum = std::accumulate(weights.begin(), weights.end(), 0.0);
  std::vector<long long> out(weights.size());
  std::vector<std::pair<double, size_t>> rem;
  long long given = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const double exact = static_cast<double>(total) * weights[i] / sum;
    out[i] = static_cast<long long>(std::floor(exact));
    given += out[i];
    rem.emplace_back(exact - static_cast<double>(out[i]), i);
  }
  std::stable_sort(rem.begin(), rem.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t r = 0; given < total; ++r, ++given) ++out[rem[r % rem.size()].second];
  for (size_t i = 0; i < out.size(); ++i) out[i] = std::max<long long>(out[i], floor_of[i]);
  return out;
}

}  // namespace

std::optional<Plan> plan_replicas(const CostModel& cost, Objective objective, double single_rps) {
  if (!replicas_allowed(cost.scenario(), objective)) return std::nullopt;
  ReplicaSearch search(cost, objective);
  double best_rps = single_rps * kMinGain;
  std::vector<Group> best_groups;
  std::vector<int> best_k;
  for (const auto& groups : search.groupings()) {
    const auto k = search.share_slots(groups);
    if (k.empty() || !(search.shared_rps() > best_rps)) continue;
    best_rps = search.shared_rps();
    best_groups = groups;
    best_k = k;
  }
  if (best_groups.empty()) return std::nullopt;

  // Each winning group planned at its own share of the in-flight requests (replanned plans that do worse
  // than the shared one's replay keep that one), then replayed on its share of the requests.
  std::vector<std::vector<Stage>> stages(best_groups.size());
  std::vector<double> rps(best_groups.size());
  for (size_t g = 0; g < best_groups.size(); ++g) {
    rps[g] = search.group_rps(best_groups[g], best_k[g]);
    stages[g] = search.base_stages(best_groups[g]);
    if (auto own = search.plan_group(best_groups[g], best_k[g]); own && own->predicted.throughput_rps > rps[g]) {
      rps[g] = own->predicted.throughput_rps;
      stages[g] = own->stages;
    }
  }
  const auto requests = apportion(cost.scenario().workload.requests, rps, best_k);
  Plan plan;
  plan.planner = "adaptlink";
  plan.objective = objective;
  for (size_t g = 0; g < best_groups.size(); ++g) {
    Replica r;
    r.devices = best_groups[g];
    r.in_flight = best_k[g];
    r.requests = requests[g];
    r.stages = stages[g];
    plan.replicas.push_back(std::move(r));
  }
  plan.predicted = predict_replicated(cost, plan.replicas);
  // The fastest replica first: `stages` (replica 0) is the best one-pipeline plan a reader that knows no
  // replicas can run.
  std::stable_sort(plan.replicas.begin(), plan.replicas.end(), [](const Replica& a, const Replica& b) {
    return a.predicted.throughput_rps > b.predicted.throughput_rps;
  });
  plan.stages = plan.replicas.front().stages;
  // Replayed on their own (smaller) shares of the requests, the replicas must still beat one pipeline.
  if (!(plan.predicted.throughput_rps > single_rps)) return std::nullopt;
  plan.search_bound_rps = plan.predicted.bound_rps;
  return plan;
}

}  // namespace adaptlink::partition

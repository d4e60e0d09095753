// adaptlink's replica search (see replicas.hpp for what a replicated plan is).
//
// Candidate device groupings, all built from memory, the constraint that decides what a group can be:
//   solos   devices that hold the whole model alone (with the KV cache of one request), fastest first;
//   packed  the other devices, largest memory first, each joined by the smallest remaining ones until the
//           group holds the model (weights, the KV cache of as many requests as devices, one buffer per
//           device, 5 % slack for contiguous cuts); leftovers that cannot form a group join the last one;
//   candidates: solos + packed, then the same with the two slowest groups merged, again and again down to two
//           groups; solos + the other devices as one pipeline; solos alone (devices that fit nowhere left out).
// Only groupings with at most in_flight groups and at least two are tried.
// Screen: each group is planned once by a cheap adaptlink (fewer device orders, candidates ranked by a short
// replay: adaptlink_screened) at as many requests in flight as it has devices; the in-flight slots are then
// handed out one at a time (every group gets one, each further slot to the group whose replayed throughput
// gains the most from it, lazily: a gain is bounded by the closed-form bound first).
// Finish: the kFinished best screened groupings are planned in full (adaptlink itself on each group's problem,
// replica_problem at its own k; groups of more than kMaxFullyPlanned devices keep the screened plan), the
// requests shared out in proportion to the replicas' throughput (largest remainder; then once more in
// proportion to each replica's pace over its whole run, kept when better) and replayed (predict_replicated).
// The best wins when it beats one pipeline by more than 1 %.
#include "adaptlink/planner/replicas.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <tuple>

#include "adaptlink/planner/planner.hpp"
#include "adaptlink/runtime/report.hpp"
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

// Largest-remainder shares of `total` in proportion to `weights`; a share below its floor is raised to it at the
// expense of the largest shares (the sum stays `total` when it covers the floors).
std::vector<long long> apportion(long long total, const std::vector<double>& weights, const std::vector<int>& floor_of) {
  const double sum = std::accumulate(weights.begin(), weights.end(), 0.0);
  std::vector<long long> out(weights.size());
  std::vector<std::pair<double, size_t>> rem;
  long long given = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const double exact = sum > 0 ? static_cast<double>(total) * weights[i] / sum : 0.0;
    out[i] = static_cast<long long>(std::floor(exact));
    given += out[i];
    rem.emplace_back(exact - static_cast<double>(out[i]), i);
  }
  std::stable_sort(rem.begin(), rem.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t r = 0; given < total && !rem.empty(); ++r, ++given) ++out[rem[r % rem.size()].second];
  for (size_t i = 0; i < out.size(); ++i) {
    while (out[i] < floor_of[i]) {
      ++out[i];
      auto largest = std::max_element(out.begin(), out.end());
      if (largest != out.begin() + static_cast<std::ptrdiff_t>(i) &&
          *largest - 1 >= floor_of[static_cast<size_t>(largest - out.begin())]) {
        --*largest;
      }
    }
  }
  return out;
}

// predict_replicated, also giving each replica's makespan (its last completion) in ms.
Prediction replay_replicas(const CostModel& cost, std::vector<Replica>& replicas, long long max_requests,
                           std::vector<double>* makespans_ms) {
  long long total = 0;
  long long in_flight = 0;
  for (const auto& r : replicas) {
    total += r.requests;
    in_flight += r.in_flight;
  }
  const auto requests = share_requests(replicas, std::min(total, max_requests));
  std::vector<double> completions;
  double latency_sum = 0;
  for (size_t i = 0; i < replicas.size(); ++i) {
    auto& r = replicas[i];
    auto problem = replica_problem(cost, r.devices, r.in_flight, requests[i]);
    ReplayResult run;
    r.predicted = predict(*problem.cost, r.stages, requests[i], &run);
    completions.insert(completions.end(), run.completions_ms.begin(), run.completions_ms.end());
    latency_sum += run.mean_latency_ms * static_cast<double>(run.completions_ms.size());
    if (makespans_ms != nullptr) {
      makespans_ms->resize(replicas.size(), 0.0);
      if (!run.completions_ms.empty()) (*makespans_ms)[i] = run.completions_ms.back();
    }
  }
  auto plan = combine_predictions(replicas);
  const double merged = runtime::steady_throughput(completions, in_flight) * 1e3;
  if (plan.feasible && merged > 0) {
    // Unbatched the closed form bounds the replay; batched it is an estimate (plan.cpp) and the replay decides.
    plan.throughput_rps = batches_decode(cost.scenario()) ? merged : std::min(merged, plan.bound_rps);
    plan.tokens_per_s = plan.throughput_rps * cost.shape().output_tokens;
    plan.latency_ms = latency_sum / static_cast<double>(completions.size());
  }
  return plan;
}

}  // namespace

std::vector<long long> share_requests(const std::vector<Replica>& replicas, long long total) {
  std::vector<double> weights;
  std::vector<int> floors;
  for (const auto& r : replicas) {
    weights.push_back(static_cast<double>(r.requests));
    floors.push_back(r.in_flight);
  }
  return apportion(total, weights, floors);
}

Prediction predict_replicated(const CostModel& cost, std::vector<Replica>& replicas, long long max_requests) {
  return replay_replicas(cost, replicas, max_requests, nullptr);
}

bool replicas_allowed(const Scenario& scenario, Objective objective) {
  return scenario.planner.replicas && objective == Objective::throughput &&
         closed_loop(scenario.workload) && !scenario.planner.backups && scenario.faults.empty() &&
         scenario.workload.in_flight >= 2 && active_devices(scenario).size() >= 2;
}

namespace {

constexpr double kMemorySlack = 1.05;
// Groupings finished (planned in full and replayed) after the screen.
constexpr size_t kFinished = 2;
// Groups of more devices keep their screened plan when finished: adaptlink in full on a group of 12 devices
// costs seconds (sixteen-mixed-gbe: 1.4 s) and did not change the suite's plans.
constexpr size_t kMaxFullyPlanned = 8;
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
    const auto& sc = cost.scenario();
    const auto named = detail::named_in_direct_links(sc);
    std::map<std::tuple<double, double, double, double, double, double, double>, int> types;
    type_of_.assign(sc.devices.size(), -1);
    for (int d : active_devices(sc)) {
      alone_rps_[d] = 1e3 / (cost.prefill_ms(d, 0, last) + cost.decode_total_ms(d, 0, last));
      const auto& dev = sc.devices[d];
      const Link l = sc.network.topology == Topology::star ? sc.network.access_link(d) : sc.network.default_link;
      const auto key = std::make_tuple(dev.mem_bytes, dev.tflops, dev.mem_bw_gbs, l.bandwidth_mbps, l.latency_ms,
                                       cost.prefill_ms(d, 0, last), cost.decode_total_ms(d, 0, last));
      type_of_[d] = named[d] ? static_cast<int>(sc.devices.size()) + d
                             : types.try_emplace(key, static_cast<int>(types.size())).first->second;
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

  // Interchangeable devices (same specs, node times and links, none named in a direct link) share a type, and groups
  // of the same types plan and replay alike: the memos below are keyed by a group's types, and a plan made for one
  // group serves another relabelled (many identical boards then cost one search, not one per group).
  [[nodiscard]] std::vector<int> types_of(const Group& group) const {
    std::vector<int> t;
    for (int d : group) t.push_back(type_of_[d]);
    std::sort(t.begin(), t.end());
    return t;
  }
  // `stages` of group `from` on group `to` of the same types: the r-th device of a type in `from` becomes the r-th
  // of that type in `to`.
  [[nodiscard]] std::vector<Stage> relabel(std::vector<Stage> stages, const Group& from, const Group& to) const {
    if (from == to) return stages;
    for (auto& st : stages) {
      const int type = type_of_[st.device];
      int rank = 0;
      for (int d : from) {
        if (d == st.device) break;
        rank += type_of_[d] == type ? 1 : 0;
      }
      for (int d : to) {
        if (type_of_[d] == type && rank-- == 0) {
          st.device = d;
          break;
        }
      }
    }
    return stages;
  }

  // adaptlink's search on the group (memoised by types); empty when it cannot hold the model.
  std::vector<Stage> base_stages(const Group& group) {
    auto& [from, base] = base_plans_[types_of(group)];
    if (!base) {
      const int k = std::min(static_cast<int>(group.size()), cost_.scenario().workload.in_flight);
      auto problem = replica_problem(cost_, group, k, cost_.scenario().workload.requests);
      base = detail::adaptlink_screened(*problem.cost, objective_);
      from = group;
    }
    return relabel(*base, from, group);
  }

  // The problem at k requests in flight, for replaying any group's stages (memoised).
  const CostModel& problem_at(int k) {
    auto& p = problems_[k];
    if (!p.cost) p = replica_problem(cost_, active_devices(cost_.scenario()), k, cost_.scenario().workload.requests);
    return *p.cost;
  }

  // adaptlink's own plan of `group` at `k` requests in flight (the scenario's requests), memoised; nullptr when
  // the group cannot hold the model. Only a plan faster than the group's screened plan (group_rps) is used, and
  // adaptlink is told so (Planner::plan_to_beat).
  const Plan* full_plan(const Group& group, int k) {
    auto [it, fresh] = full_plans_.try_emplace(std::make_pair(group, k));
    if (fresh) {
      auto& [from, typed] = full_by_types_[std::make_pair(types_of(group), k)];
      if (from.empty()) {
        from = group;
        auto problem = replica_problem(cost_, group, k, cost_.scenario().workload.requests);
        if (auto plan = planner_->plan_to_beat(*problem.cost, objective_, group_rps(group, k));
            plan && plan->predicted.feasible) {
          typed = std::move(*plan);
        }
      }
      if (typed) {
        it->second = *typed;
        it->second->stages = relabel(typed->stages, from, group);
      }
    }
    return it->second ? &*it->second : nullptr;
  }

  // A group's throughput at k requests in flight, memoised: a cheap adaptlink (adaptlink_screened) plans the
  // group once, at as many requests as it has devices, and every k replays that plan (a full plan
  // per group and slot would cost many times more; the winning groups are planned in full at their own k).
  // 0 when the group cannot hold the model.
  double group_rps(const Group& group, int k) {
    const auto key = std::make_pair(types_of(group), k);
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
    // A group whose KV cache cannot hold one more request is full; when every group is, fewer than in_flight are
    // admitted (make_plan's admission limit is then the replicas' sum).
    constexpr double kFull = -std::numeric_limits<double>::infinity();
    std::vector<bool> full(groups.size(), false);
    for (int left = cost_.scenario().workload.in_flight - static_cast<int>(groups.size()); left > 0; --left) {
      std::vector<double> gain(groups.size(), kFull);
      std::vector<bool> exact(groups.size(), false);
      for (size_t g = 0; g < groups.size(); ++g) {
        if (!full[g]) gain[g] = group_bound(groups[g], k[g] + 1) - group_rps(groups[g], k[g]);
      }
      bool placed = false;
      for (;;) {
        const size_t top = static_cast<size_t>(std::max_element(gain.begin(), gain.end()) - gain.begin());
        if (gain[top] == kFull) break;
        if (exact[top]) {
          ++k[top];
          placed = true;
          break;
        }
        const double next = group_rps(groups[top], k[top] + 1);
        if (next <= 0) {
          full[top] = true;
          gain[top] = kFull;
          continue;
        }
        gain[top] = next - group_rps(groups[top], k[top]);
        exact[top] = true;
      }
      if (!placed) break;
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
  std::vector<int> type_of_;  // per scenario device (-1: not active)
  // Keyed by a group's types: the group it was made for, and the plan.
  std::map<std::vector<int>, std::pair<Group, std::optional<std::vector<Stage>>>> base_plans_;
  std::map<int, ReplicaProblem> problems_;  // by k: replays read only the workload, not the device roles
  std::map<std::pair<Group, int>, std::optional<Plan>> full_plans_;  // relabelled copies, per group
  std::map<std::pair<std::vector<int>, int>, std::pair<Group, std::optional<Plan>>> full_by_types_;
  std::map<std::pair<std::vector<int>, int>, double> rps_;
  double rps_of_ = 0;
};

// The replicated plan of a grouping with its slots: each group planned in full by adaptlink at its own share of
// the requests in flight (kept only where it beats the screened plan), requests shared out, replayed.
Plan finish(const CostModel& cost, Objective objective, ReplicaSearch& search, const std::vector<Group>& groups,
            const std::vector<int>& k) {
  Plan plan;
  plan.planner = "adaptlink";
  plan.objective = objective;
  std::vector<double> rps;
  for (size_t g = 0; g < groups.size(); ++g) {
    Replica r;
    r.devices = groups[g];
    r.in_flight = k[g];
    r.stages = search.base_stages(groups[g]);
    rps.push_back(search.group_rps(groups[g], k[g]));
    const Plan* own = groups[g].size() <= kMaxFullyPlanned ? search.full_plan(groups[g], k[g]) : nullptr;
    if (own != nullptr && own->predicted.throughput_rps > rps.back()) {
      rps.back() = own->predicted.throughput_rps;
      r.stages = own->stages;
    }
    plan.replicas.push_back(std::move(r));
  }
  const auto requests = apportion(cost.scenario().workload.requests, rps, k);
  for (size_t g = 0; g < groups.size(); ++g) plan.replicas[g].requests = requests[g];
  std::vector<double> makespans;
  plan.predicted = replay_replicas(cost, plan.replicas, kReplayRequests, &makespans);
  // Shares in proportion to each replica's pace over its whole run (warm-up and drain included) end the
  // replicas closer together: a replica still running alone at the end lowers the merged window's throughput.
  if (std::all_of(makespans.begin(), makespans.end(), [](double m) { return m > 0; })) {
    std::vector<double> pace;
    for (size_t g = 0; g < plan.replicas.size(); ++g) {
      pace.push_back(static_cast<double>(plan.replicas[g].requests) / makespans[g]);
    }
    auto paced = plan.replicas;
    const auto shares = apportion(cost.scenario().workload.requests, pace, k);
    for (size_t g = 0; g < paced.size(); ++g) paced[g].requests = shares[g];
    const auto p = predict_replicated(cost, paced);
    if (p.throughput_rps > plan.predicted.throughput_rps) {
      plan.replicas = std::move(paced);
      plan.predicted = p;
    }
  }
  // The fastest replica first: `stages` (replica 0) is the best one-pipeline plan a reader that knows no
  // replicas can run.
  std::stable_sort(plan.replicas.begin(), plan.replicas.end(), [](const Replica& a, const Replica& b) {
    return a.predicted.throughput_rps > b.predicted.throughput_rps;
  });
  plan.stages = plan.replicas.front().stages;
  plan.search_bound_rps = plan.predicted.bound_rps;
  return plan;
}

}  // namespace

std::optional<Plan> plan_replicas(const CostModel& cost, Objective objective) {
  if (!replicas_allowed(cost.scenario(), objective)) return std::nullopt;
  ReplicaSearch search(cost, objective);
  // Screen every grouping, then finish the best few: the screen's short replays of cheaper plans can order
  // close groupings wrongly.
  std::vector<std::tuple<double, std::vector<Group>, std::vector<int>>> screened;
  for (const auto& groups : search.groupings()) {
    const auto k = search.share_slots(groups);
    if (!k.empty()) screened.emplace_back(search.shared_rps(), groups, k);
  }
  std::stable_sort(screened.begin(), screened.end(),
                   [](const auto& a, const auto& b) { return std::get<0>(a) > std::get<0>(b); });
  std::optional<Plan> best;
  for (size_t i = 0; i < std::min(screened.size(), kFinished); ++i) {
    auto plan = finish(cost, objective, search, std::get<1>(screened[i]), std::get<2>(screened[i]));
    if (plan.predicted.throughput_rps > 0 && (!best || plan.predicted.throughput_rps > best->predicted.throughput_rps)) {
      best = std::move(plan);
    }
  }
  return best;
}

}  // namespace adaptlink::partition

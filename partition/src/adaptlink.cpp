// The adaptlink planner: dynamic programming over the topologically ordered layer DAG.
//
// For a fixed order of candidate devices, a DP over (device position k, node j) finds the best
// way to cut the nodes into contiguous stages, each on a distinct device taken in that order
// (devices may be skipped, so one order covers all its subsequences). Each DP state keeps the
// Pareto front of (bottleneck W, latency alone R0[, busy on the last device's access link]):
// the prediction X = min(in_flight / R0, 1 / W) falls in both, so the front is exact for any
// objective. Entries whose optimistic bound cannot beat the incumbent are pruned.
//
// In a star without direct links every term of a stage depends only on (device, first, last)
// — its compute, both access hops of its incoming and outgoing cuts and its share of the token
// back edge — so the DP reads the merged fronts of all earlier positions (O(n L^2) per order).
// Otherwise (mesh, direct links) a transfer depends on the previous device and the DP loops over
// it (O(n^2 L^2)).
//
// Orders: every distinct permutation (identical devices are interchangeable) while there are at
// most kMaxExactOrders; beyond that, seed orders (by memory bandwidth, compute, memory, link,
// scenario order) improved by pairwise swaps until no swap helps or the budget is spent. The
// baselines' plans seed the incumbent, so adaptlink is never below them.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <tuple>

#include "planners_internal.hpp"

namespace adaptlink::partition::detail {

namespace {

constexpr int kMaxExactOrders = 720;
constexpr int kMaxHeuristicOrders = 600;
constexpr size_t kMaxFront = 64;
// Plans whose bound is within 5% of the best are replayed; the best replayed one wins.
constexpr double kRerankWindow = 0.95;
constexpr size_t kMaxCandidates = 6;

struct Entry {
  double w = 0;     // bottleneck over closed resources (ms per request)
  double r0 = 0;    // latency alone so far (ms)
  double pend = 0;  // general mode: busy already on the last device's access link
  int prev_k = -1;  // order position of the previous stage's device
  int prev_idx = -1;
  int start = 0;  // first node of this stage
  int entry = -1;  // general mode: device of the stage holding text_embed (-1: not placed yet)
};

struct Ref {  // an entry of G[k][j] seen from a merged front
  double w, r0, pend;
  int k, idx;
  int entry = -1;
};

// a is at least as good as b (entries with different back-edge ends are not comparable).
template <typename T>
bool dominates(const T& a, const T& b) {
  return a.entry == b.entry && a.w <= b.w && a.r0 <= b.r0 && a.pend <= b.pend;
}

template <typename T>
void insert_pareto(std::vector<T>& front, const T& e) {
  for (const auto& f : front) {
    if (dominates(f, e)) return;
  }
  std::erase_if(front, [&](const T& f) { return dominates(e, f); });
  if (front.size() >= kMaxFront) {
    // Keep the front bounded: drop the entry with the largest latency.
    auto worst = std::max_element(front.begin(), front.end(), [](const T& a, const T& b) { return a.r0 < b.r0; });
    if (worst->r0 <= e.r0) return;
    *worst = e;
    return;
  }
  front.push_back(e);
}

class Search {
 public:
  Search(const CostModel& cost, Objective objective, std::vector<int> devices)
      : cost_(cost), objective_(objective), devices_(std::move(devices)) {
    const auto& graph = cost.graph();
    const auto& scenario = cost.scenario();
    nodes_ = graph.size();
    steps_ = cost.shape().output_tokens;
    text_embed_ = graph.text_embed_index();
    in_flight_ = scenario.workload.in_flight;
    closed_ = scenario.workload.arrival == Arrival::closed;
    rerank_ = closed_ && objective == Objective::throughput;
    rate_ = scenario.workload.rate_per_s;
    for (int c = 0; c < nodes_; ++c) {
      prefill_bytes_.push_back(graph.prefill_out_bytes(c, cost.shape()));
      decode_bytes_.push_back(graph.decode_out_bytes(c));
    }
    memory_.assign(static_cast<size_t>(nodes_ * (nodes_ + 1)), 0.0);
    for (int i = 0; i < nodes_; ++i) {
      for (int j = i + 1; j <= nodes_; ++j) memory_[i * (nodes_ + 1) + j] = cost.memory_bytes(i, j - 1);
    }
    // Star without direct links: per-device access hops. Mesh where every pair uses the default
    // link: each cut's transfer is the same whoever sends it, charged to the receiving stage.
    const auto& net = scenario.network;
    decomposable_ = true;
    for (size_t a = 0; a < devices_.size(); ++a) {
      for (size_t b = a + 1; b < devices_.size(); ++b) {
        const auto key = std::make_pair(std::min(devices_[a], devices_[b]), std::max(devices_[a], devices_[b]));
        if (net.topology == Topology::star ? net.direct_link(devices_[a], devices_[b]).has_value()
                                           : net.direct.count(key) > 0)
          decomposable_ = false;
      }
    }
  }

  // A baseline's plan: seeds the incumbent and is always among the replayed candidates.
  void offer(const Plan& plan) {
    auto stages = plan.stages;
    consider(score(evaluate(cost_, stages), objective_), stages);
    seeds_.push_back(stages);
  }
  [[nodiscard]] const std::vector<std::vector<Stage>>& seeds() const { return seeds_; }

  // Keeps the incumbent (best bound) and, for closed-loop throughput, the best few plans within
  // kRerankWindow of it: the replay ranks those at the end.
  void consider(double s, const std::vector<Stage>& stages) {
    if (s > best_score_) {
      best_score_ = s;
      best_ = stages;
    }
    if (!rerank_ || s < best_score_ * kRerankWindow) return;
    // One candidate per device sequence: plans that only move a cut by a node replay alike.
    auto same_devices = [&](const std::vector<Stage>& a) {
      return a.size() == stages.size() &&
             std::equal(a.begin(), a.end(), stages.begin(), [](const Stage& x, const Stage& y) { return x.device == y.device; });
    };
    for (auto& c : candidates_) {
      if (!same_devices(c.second)) continue;
      if (s > c.first) c = {s, stages};
      std::stable_sort(candidates_.begin(), candidates_.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      return;
    }
    candidates_.emplace_back(s, stages);
    std::stable_sort(candidates_.begin(), candidates_.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    std::erase_if(candidates_, [&](const auto& c) { return c.first < best_score_ * kRerankWindow; });
    if (candidates_.size() > kMaxCandidates) candidates_.resize(kMaxCandidates);
  }
  [[nodiscard]] const std::vector<std::pair<double, std::vector<Stage>>>& candidates() const { return candidates_; }

  // Runs the DP for one order; returns the best score it found (it also updates the incumbent).
  double run(const std::vector<int>& order);

  void solve();

  [[nodiscard]] const std::vector<Stage>& best() const { return best_; }

 private:
  [[nodiscard]] double stage_busy(int d, int i, int j) const {
    return cost_.prefill_ms(d, i, j - 1) + cost_.decode_total_ms(d, i, j - 1);
  }
  [[nodiscard]] bool fits(int d, int i, int j) const {
    return memory_[i * (nodes_ + 1) + j] <= cost_.scenario().devices[d].mem_bytes;
  }
  // Time and link busy of cut c's transfers over one hop (prefill once, decode per step).
  void cut_hop(const Link& link, int c, double& time_ms, double& busy_ms) const {
    time_ms += hop_ms(link, prefill_bytes_[c]);
    busy_ms += hop_busy_ms(link, prefill_bytes_[c]);
    if (decode_bytes_[c] > 0) {
      time_ms += steps_ * hop_ms(link, decode_bytes_[c]);
      busy_ms += steps_ * hop_busy_ms(link, decode_bytes_[c]);
    }
  }
  [[nodiscard]] bool back_edge_end(int i, int j) const {
    const bool has_entry = i <= text_embed_ && text_embed_ < j;
    const bool has_head = j == nodes_;
    return has_entry != has_head;
  }
  // Optimistic score of a partial plan (both W and R0 only grow).
  [[nodiscard]] double bound(double w, double r0) const {
    if (objective_ == Objective::latency) return -r0;
    const double cap = w > 0 ? 1e3 / w : std::numeric_limits<double>::infinity();
    const double pop = closed_ ? (r0 > 0 ? in_flight_ * 1e3 / r0 : std::numeric_limits<double>::infinity()) : rate_;
    return std::min(cap, pop);
  }
  [[nodiscard]] bool hopeless(double w, double r0) const {
    const double b = bound(w, r0);
    if (rerank_) return b < best_score_ * kRerankWindow;
    return b < best_score_ - 1e-12 * std::abs(best_score_);
  }

  const CostModel& cost_;
  Objective objective_;
  std::vector<int> devices_;
  int nodes_ = 0;
  int steps_ = 0;
  int text_embed_ = 0;
  int in_flight_ = 1;
  bool closed_ = true;
  double rate_ = 1;
  bool decomposable_ = true;
  std::vector<double> prefill_bytes_, decode_bytes_, memory_;
  double best_score_ = -std::numeric_limits<double>::infinity();
  std::vector<Stage> best_;
  bool rerank_ = false;
  std::vector<std::pair<double, std::vector<Stage>>> candidates_;
  std::vector<std::vector<Stage>> seeds_;
};

double Search::run(const std::vector<int>& order) {
  const int n = static_cast<int>(order.size());
  const auto& net = cost_.scenario().network;
  const int width = nodes_ + 1;
  std::vector<std::vector<Entry>> g(static_cast<size_t>(n * width));
  std::vector<std::vector<Ref>> merged(static_cast<size_t>(width));  // decomposable mode
  double run_best = -std::numeric_limits<double>::infinity();

  for (int k = 0; k < n; ++k) {
    const int d = order[k];
    const Link own = net.topology == Topology::star ? net.access_link(d) : Link{};
    for (int i = 0; i < nodes_; ++i) {
      // Sources: the start of the pipeline, or stages of earlier positions that end at i.
      if (i > 0) {
        if (decomposable_ ? merged[i].empty() : [&] {
              for (int kp = 0; kp < k; ++kp)
                if (!g[kp * width + i].empty()) return false;
              return true;
            }())
          continue;
      }
      // General mode: what arrives at d from every earlier position's stage ending at i, after the
      // transfer at cut i - 1 (independent of where d's stage ends).
      std::vector<Entry> arrivals;
      if (!decomposable_ && i > 0) {
        for (int kp = 0; kp < k; ++kp) {
          const auto& srcs = g[kp * width + i];
          if (srcs.empty()) continue;
          const int p = order[kp];
          double time_ms = 0, w_links = 0, pend_p = 0, pend_d = 0;
          for (const auto& hop : cost_.route(p, d)) {
            double t = 0, b = 0;
            cut_hop(hop.spec, i - 1, t, b);
            time_ms += t;
            const bool access = net.topology == Topology::star && hop.link < cost_.num_devices();
            if (access && hop.link == p) {
              pend_p += b;
            } else if (access && hop.link == d) {
              pend_d += b;
            } else {
              w_links = std::max(w_links, b);
            }
          }
          for (int idx = 0; idx < static_cast<int>(srcs.size()); ++idx) {
            const auto& src = srcs[idx];
            const double w = std::max({src.w, src.pend + pend_p, w_links});
            const double r0 = src.r0 + time_ms;
            if (!hopeless(w, r0)) insert_pareto(arrivals, Entry{w, r0, pend_d, kp, idx, i, src.entry});
          }
        }
        if (arrivals.empty()) continue;
      }
      for (int j = i + 1; j <= nodes_; ++j) {
        if (!fits(d, i, j)) break;  // memory only grows with j
        const double busy = stage_busy(d, i, j);
        if (hopeless(busy, busy)) break;  // compute only grows with j
        auto& out = g[k * width + j];
        if (decomposable_) {
          // Every term of this stage is known from (d, i, j).
          double time_ms = 0, link_ms = 0;
          if (net.topology == Topology::star) {
            if (i > 0) cut_hop(own, i - 1, time_ms, link_ms);
            if (j < nodes_) cut_hop(own, j - 1, time_ms, link_ms);
            if (back_edge_end(i, j)) {
              time_ms += steps_ * hop_ms(own, kTokenBytes);
              link_ms += steps_ * hop_busy_ms(own, kTokenBytes);
            }
          } else {
            // Uniform mesh: the incoming cut's own link, and the back edge at the head's end.
            if (i > 0) cut_hop(net.default_link, i - 1, time_ms, link_ms);
            if (j == nodes_ && back_edge_end(i, j)) {
              time_ms += steps_ * hop_ms(net.default_link, kTokenBytes);
              link_ms = std::max(link_ms, steps_ * hop_busy_ms(net.default_link, kTokenBytes));
            }
          }
          const double w_stage = std::max(busy, link_ms);
          const double r0_stage = busy + time_ms;
          if (i == 0) {
            if (!hopeless(w_stage, r0_stage)) insert_pareto(out, Entry{w_stage, r0_stage, 0, -1, -1, 0});
          } else {
            for (const auto& src : merged[i]) {
              const double w = std::max(src.w, w_stage);
              const double r0 = src.r0 + r0_stage;
              if (!hopeless(w, r0)) insert_pareto(out, Entry{w, r0, 0, src.k, src.idx, i});
            }
          }
        } else {
          // General routes: the transfer at cut i - 1 depends on the previous device. The token
          // back edge is charged when the pipeline closes, from the entry device kept in the entry.
          const bool holds_entry = i <= text_embed_ && text_embed_ < j;
          if (i == 0) {
            const Entry e{busy, busy, 0, -1, -1, 0, holds_entry ? d : -1};
            if (!hopeless(e.w, e.r0)) insert_pareto(out, e);
            continue;
          }
          for (const auto& a : arrivals) {
            const double w = std::max(a.w, busy);
            const double r0 = a.r0 + busy;
            if (!hopeless(w, r0)) {
              Entry e = a;
              e.w = w;
              e.r0 = r0;
              if (holds_entry) e.entry = d;
              insert_pareto(out, e);
            }
          }
        }
      }
    }
    if (decomposable_) {
      for (int j = 1; j <= nodes_; ++j) {
        const auto& front = g[k * width + j];
        for (int idx = 0; idx < static_cast<int>(front.size()); ++idx) {
          const auto& e = front[idx];
          insert_pareto(merged[j], Ref{e.w, e.r0, e.pend, k, idx, e.entry});
        }
      }
    }
    // Finished pipelines: stages ending at the head on this position.
    const auto& finals = g[k * width + nodes_];
    for (int idx = 0; idx < static_cast<int>(finals.size()); ++idx) {
      const auto& e = finals[idx];
      double w = std::max(e.w, e.pend);
      double r0 = e.r0;
      if (!decomposable_ && e.entry >= 0 && e.entry != order[k]) {
        r0 += steps_ * cost_.transfer_ms(order[k], e.entry, kTokenBytes);
      }
      if (hopeless(w, r0)) continue;
      // Reconstruct and evaluate exactly (the DP is exact in decomposable mode; in general mode
      // the back edge is estimated, so the exact evaluation decides).
      std::vector<Stage> stages;
      int kk = k, jj = nodes_, ii = idx;
      while (kk >= 0) {
        const auto& en = g[kk * width + jj][ii];
        Stage st;
        st.device = order[kk];
        st.first_node = en.start;
        st.last_node = jj - 1;
        stages.push_back(st);
        jj = en.start;
        const int pk = en.prev_k, pi = en.prev_idx;
        kk = pk;
        ii = pi;
      }
      std::reverse(stages.begin(), stages.end());
      const auto pred = evaluate(cost_, stages);
      const double s = score(pred, objective_);
      run_best = std::max(run_best, s);
      consider(s, stages);
    }
  }
  return run_best;
}

void Search::solve() {
  const auto& devs = cost_.scenario().devices;
  const auto& net = cost_.scenario().network;
  // Interchangeable devices share a class.
  auto signature = [&](int d) {
    const Link l = net.topology == Topology::star ? net.access_link(d) : Link{};
    return std::make_tuple(devs[d].tflops, devs[d].mem_bytes, devs[d].mem_bw_gbs, l.bandwidth_mbps, l.latency_ms);
  };
  const bool can_merge = decomposable_;
  std::map<decltype(signature(0)), int> class_of;
  std::vector<int> labels;
  for (size_t a = 0; a < devices_.size(); ++a) {
    const auto sig = signature(devices_[a]);
    int label = static_cast<int>(a);
    if (can_merge) label = class_of.try_emplace(sig, static_cast<int>(class_of.size())).first->second;
    labels.push_back(label);
  }
  // Count distinct permutations (multinomial), capped.
  double orders = 1;
  {
    std::map<int, int> counts;
    for (int l : labels) counts[l]++;
    int placed = 0;
    for (auto [label, c] : counts) {
      for (int t = 1; t <= c; ++t) orders = orders * (placed + t) / t;
      placed += c;
    }
  }
  auto order_from_labels = [&](const std::vector<int>& seq) {
    std::map<int, std::vector<int>> pool;
    for (size_t a = 0; a < devices_.size(); ++a) pool[labels[a]].push_back(devices_[a]);
    std::map<int, size_t> used;
    std::vector<int> order;
    for (int l : seq) order.push_back(pool[l][used[l]++]);
    return order;
  };

  if (orders <= kMaxExactOrders) {
    std::vector<int> seq = labels;
    std::sort(seq.begin(), seq.end());
    do {
      run(order_from_labels(seq));
    } while (std::next_permutation(seq.begin(), seq.end()));
    return;
  }

  // Heuristic orders, then pairwise-swap local search on the best.
  std::vector<std::vector<int>> seeds;
  auto sorted_by = [&](auto key) {
    auto o = devices_;
    std::stable_sort(o.begin(), o.end(), [&](int a, int b) { return key(a) > key(b); });
    return o;
  };
  seeds.push_back(sorted_by([&](int d) { return devs[d].mem_bw_gbs; }));
  seeds.push_back(sorted_by([&](int d) { return devs[d].tflops; }));
  seeds.push_back(sorted_by([&](int d) { return devs[d].mem_bytes; }));
  seeds.push_back(sorted_by([&](int d) { return std::min(devs[d].tflops * 1e3 / 2, devs[d].mem_bw_gbs); }));
  if (net.topology == Topology::star) seeds.push_back(sorted_by([&](int d) { return net.access_link(d).bandwidth_mbps; }));
  seeds.push_back(devices_);
  // The general DP costs a factor n more per order than the decomposable one.
  const int n_dev = static_cast<int>(devices_.size());
  int budget = decomposable_ ? kMaxHeuristicOrders : std::max(24, 9600 / (n_dev * n_dev));
  std::vector<int> best_order;
  double best_run = -std::numeric_limits<double>::infinity();
  for (const auto& s : seeds) {
    const double r = run(s);
    --budget;
    if (r > best_run) {
      best_run = r;
      best_order = s;
    }
  }
  const int n = static_cast<int>(best_order.size());
  bool improved = true;
  while (improved && budget > 0) {
    improved = false;
    for (int a = 0; a < n && budget > 0 && !improved; ++a) {
      for (int b = a + 1; b < n && budget > 0 && !improved; ++b) {
        if (labels.empty()) break;
        auto o = best_order;
        std::swap(o[a], o[b]);
        if (signature(o[a]) == signature(o[b]) && can_merge) continue;
        const double r = run(o);
        --budget;
        if (r > best_run * (1 + 1e-9) + 1e-15) {
          best_run = r;
          best_order = o;
          improved = true;
        }
      }
    }
  }
}

class AdaptlinkPlanner final : public Planner {
 public:
  [[nodiscard]] std::string name() const override { return "adaptlink"; }
  [[nodiscard]] Expected<Plan> plan(const CostModel& cost, Objective objective) const override {
    const auto devices = active_devices(cost.scenario());
    if (devices.empty()) return make_error("adaptlink: no active device");
    Search search(cost, objective, devices);
    // The baselines seed the incumbent: adaptlink is never below them.
    for (const char* baseline : {"uniform", "proportional", "memory"}) {
      auto p = make_planner(baseline);
      if (auto seeded = (*p)->plan(cost, objective)) search.offer(*seeded);
    }
    search.solve();
    if (search.best().empty()) return memory_shortfall(cost, devices);
    Plan plan;
    plan.planner = "adaptlink";
    plan.objective = objective;
    plan.stages = search.best();
    const long long rank_requests = ranking_requests(cost.scenario().workload);
    plan.predicted = predict(cost, plan.stages, rank_requests);
    plan.search_bound_rps = plan.predicted.bound_rps;
    // The bound treats every request alike; the replay sees prefills and decode steps share the
    // stages. Among the plans within kRerankWindow of the best bound, keep the best replayed one.
    // The replayed throughput never exceeds the bound, so candidates go in order of bound and the
    // search stops once a bound cannot beat the best replayed plan.
    std::vector<std::pair<double, std::vector<Stage>>> pool = search.candidates();
    if (objective == Objective::throughput) {
      for (const auto& seed : search.seeds()) {
        auto st = seed;
        pool.emplace_back(evaluate(cost, st).throughput_rps, seed);
      }
    }
    std::stable_sort(pool.begin(), pool.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    for (auto& [bound, stages] : pool) {
      if (bound <= plan.predicted.throughput_rps) break;
      if (stages == plan.stages) continue;
      const auto p = predict(cost, stages, rank_requests);
      if (p.feasible && p.throughput_rps > plan.predicted.throughput_rps * (1 + 1e-9)) {
        plan.stages = stages;
        plan.predicted = p;
      }
    }
    return plan;
  }
};

}  // namespace

std::unique_ptr<Planner> make_adaptlink_planner() { return std::make_unique<AdaptlinkPlanner>(); }

}  // namespace adaptlink::partition::detail

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
// Before the orders, the exact one-pipeline search for the bottleneck (bottleneck.cpp) proposes its plan: at
// saturation nothing beats it, whatever the device order; in closed loops the replay ranks it with the others.
//
// Orders: every distinct permutation (identical devices are interchangeable) while there are at
// most kMaxExactOrders; beyond that, seed orders (by memory bandwidth, compute, memory, link,
// scenario order) improved by pairwise swaps until no swap helps or the budget is spent. The
// baselines' plans (and the peers', where their DPs are small) seed the incumbent. The replay then
// chooses among the search's best plans and refines the winner (ReplayRanker below), so adaptlink is
// never below a seed by the reported (replayed) prediction.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <tuple>

#include "adaptlink/planner/bottleneck.hpp"
#include "adaptlink/planner/replicas.hpp"
#include "planners_internal.hpp"

namespace adaptlink::partition::detail {

namespace {

constexpr int kMaxExactOrders = 720;
constexpr int kMaxHeuristicOrders = 600;
constexpr size_t kMaxFront = 64;
// adaptlink_screened (the replica search's screen of many device groups) tries fewer orders.
constexpr int kScreenExactOrders = 48;
constexpr int kScreenHeuristicOrders = 24;
// Candidates for the replay (ReplayRanker): the best plan of each of the kMaxCandidates best device
// sequences (interchangeable devices alike) whose bound is within 5% of the best.
constexpr double kRerankWindow = 0.95;
constexpr size_t kMaxCandidates = 12;

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
  // Caps the device orders solve() tries (exhaustively up to `exact` distinct orders, else `heuristic` seeded
  // and swapped ones).
  void limit_orders(int exact, int heuristic) {
    max_exact_orders_ = exact;
    max_heuristic_orders_ = heuristic;
  }
  Search(const CostModel& cost, Objective objective, std::vector<int> devices)
      : cost_(cost), objective_(objective), devices_(std::move(devices)) {
    const auto& graph = cost.graph();
    const auto& scenario = cost.scenario();
    nodes_ = graph.size();
    steps_ = cost.shape().output_tokens;
    text_embed_ = graph.text_embed_index();
    in_flight_ = scenario.workload.in_flight;
    closed_ = closed_loop(scenario.workload);
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
    class_of_.resize(scenario.devices.size());
    for (size_t d = 0; d < class_of_.size(); ++d) class_of_[d] = static_cast<int>(d);
    for (size_t a = 0; a < devices_.size(); ++a) {
      for (size_t b = a + 1; b < devices_.size(); ++b) {
        const auto key = std::make_pair(std::min(devices_[a], devices_[b]), std::max(devices_[a], devices_[b]));
        if (net.topology == Topology::star ? net.direct_link(devices_[a], devices_[b]).has_value()
                                           : net.direct.count(key) > 0)
          decomposable_ = false;
      }
    }
    // Where every transfer depends only on its two ends' own links, devices with equal specs and
    // access links are interchangeable (solve() merges their orders too).
    if (decomposable_) {
      std::map<std::tuple<double, double, double, double, double>, int> ids;
      for (int d : devices_) {
        const auto& dev = scenario.devices[d];
        const Link l = net.topology == Topology::star ? net.access_link(d) : Link{};
        class_of_[d] = ids.try_emplace(std::make_tuple(dev.tflops, dev.mem_bytes, dev.mem_bw_gbs, l.bandwidth_mbps, l.latency_ms),
                                       static_cast<int>(ids.size()))
                           .first->second;
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
  [[nodiscard]] const std::vector<int>& device_classes() const { return class_of_; }

  // Keeps the incumbent (best bound) and, for closed-loop throughput, the best few plans within
  // kRerankWindow of it: the replay ranks those at the end.
  void consider(double s, const std::vector<Stage>& stages) {
    if (s > best_score_) {
      best_score_ = s;
      best_ = stages;
    }
    if (!rerank_ || s < best_score_ * kRerankWindow) return;
    // One candidate per device sequence: plans that only move a cut by a node replay alike.
    // Interchangeable devices (same class) make the same sequence.
    auto same_devices = [&](const std::vector<Stage>& a) {
      return a.size() == stages.size() && std::equal(a.begin(), a.end(), stages.begin(), [&](const Stage& x, const Stage& y) {
               return class_of_[x.device] == class_of_[y.device];
             });
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
  std::vector<int> class_of_;  // interchangeable devices share a class
  int max_exact_orders_ = kMaxExactOrders;
  int max_heuristic_orders_ = kMaxHeuristicOrders;
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

  if (orders <= max_exact_orders_) {
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
  // One order's DP costs O(n L^2) decomposable and O(n^2 L^2) general: the budget keeps the orders' work flat beyond
  // 16 devices (the suite's largest, 600 orders there).
  const int n_dev = static_cast<int>(devices_.size());
  int budget = decomposable_ ? std::max(24, 9600 / n_dev) : std::max(24, 9600 / (n_dev * n_dev));
  budget = std::min(budget, max_heuristic_orders_);
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

// Replay-aware choice among the search's plans (closed loop, throughput). The bound ties or nearly
// ties on many plans that the replay tells apart by a few percent (how long prefills hold stages while
// other requests' decode steps wait), and a cut moved by one node or two neighbouring stages swapped
// can gain more. So:
//   1. rank: the bound-best plan, the seeds (baselines, and the peers' plans where those are cheap) and
//      the best kFullyRanked other candidates (the best plan of each of the best device sequences) get
//      the full replay of the reported prediction, best bound first; a plan whose bound cannot beat the
//      best replayed one is skipped, and a replay stops as soon as its steady window cannot beat it
//      (both exact). So the choice is never below the bound-best plan or a seed by the reported
//      prediction.
//   2. refine: the remaining candidates, then the winner's one-step neighbours (a cut moved by one
//      node, two neighbouring stages' devices swapped), best bound first. A short replay
//      (kScreenInFlight x in_flight requests, at least kScreenMinRequests) screens each; one that it
//      puts ahead of the current plan gets the full replay and replaces the plan when that is higher
//      too. Until no neighbour improves or the budget (in full replays' worth of events, growing with
//      the number of devices as issue 3's time targets do) is spent: a count, not a clock, so plans
//      do not depend on the machine's speed.
// Near one plan the short replay orders neighbours as the full one does (concordance 0.96-0.99 on the
// suite's scenarios); across distant plans it can be far off, so it only screens and never decides.
class ReplayRanker {
 public:
  ReplayRanker(const CostModel& cost, long long full_requests) : cost_(cost), full_requests_(full_requests) {
    const auto& w = cost.scenario().workload;
    screen_requests_ = std::min<long long>(full_requests, std::max<long long>(kScreenMinRequests,
                                                                              kScreenInFlight * std::max(1, w.in_flight)));
    // Batched, the closed form is an estimate, not a bound (plan.cpp): it neither cuts nor caps a replay.
    batched_ = batches_decode(cost.scenario());
  }

  // Short-replay score of a plan, memoised; -inf when it does not fit or cannot reach `beat_rps`.
  double screen(std::vector<Stage> stages, double beat_rps) {
    const auto key = key_of(stages);
    if (auto it = screened_.find(key); it != screened_.end()) return it->second;
    const Prediction p = evaluate(cost_, stages);
    double x = -std::numeric_limits<double>::infinity();
    if (p.feasible && (batched_ || p.throughput_rps > beat_rps)) {
      work_ += static_cast<double>(screen_requests_) * static_cast<double>(stages.size());
      ReplayOptions opt;
      opt.stop_at_window_end = true;
      opt.beat_rps = beat_rps;
      const auto r = replay(cost_, stages, screen_requests_, p.bottleneck_ms, opt);
      if (!r.cut && r.throughput_rps > 0) x = batched_ ? r.throughput_rps : std::min(r.throughput_rps, p.throughput_rps);
      // A cut plan is worse than beat_rps: memoise only real values.
      if (!r.cut) screened_.emplace(key, x);
    }
    return x;
  }
  // Full replay (the reported prediction's length) that stops once it cannot beat `beat_rps`.
  double full(std::vector<Stage> stages, double beat_rps) {
    const Prediction p = evaluate(cost_, stages);
    if (!p.feasible || (!batched_ && p.throughput_rps <= beat_rps)) return -std::numeric_limits<double>::infinity();
    const long long requests = std::min<long long>(cost_.scenario().workload.requests, full_requests_);
    work_ += static_cast<double>(requests) * static_cast<double>(stages.size());
    ReplayOptions opt;
    opt.stop_at_window_end = true;
    opt.beat_rps = beat_rps;
    const auto r = replay(cost_, stages, requests, p.bottleneck_ms, opt);
    if (r.cut || r.throughput_rps <= 0) return -std::numeric_limits<double>::infinity();
    return batched_ ? r.throughput_rps : std::min(r.throughput_rps, p.throughput_rps);
  }
  void reset_budget() {
    work_ = 0;
  }
  // `budget`: in full replays of a plan with as many stages as `reference`.
  [[nodiscard]] bool budget_left(const std::vector<Stage>& reference, double budget) const {
    const double full_work = static_cast<double>(full_requests_) * static_cast<double>(reference.size());
    return work_ < budget * full_work;
  }

 private:
  static std::vector<int> key_of(const std::vector<Stage>& stages) {
    std::vector<int> k;
    for (const auto& s : stages) {
      k.push_back(s.device);
      k.push_back(s.first_node);
      k.push_back(s.last_node);
    }
    return k;
  }
  static constexpr long long kScreenInFlight = 3;
  static constexpr long long kScreenMinRequests = 32;

  const CostModel& cost_;
  long long full_requests_;
  long long screen_requests_ = 0;
  bool batched_ = false;
  double work_ = 0;
  std::map<std::vector<int>, double> screened_;
};

// One-step neighbours of a plan: each cut moved by one node, each pair of neighbouring stages'
// devices swapped; those that fit, in order of bound (best first).
// Swapping interchangeable devices (same class) changes nothing and is skipped.
std::vector<std::vector<Stage>> neighbours(const CostModel& cost, const std::vector<Stage>& plan,
                                           const std::vector<int>& device_class) {
  std::vector<std::pair<double, std::vector<Stage>>> out;
  auto add = [&](std::vector<Stage> c) {
    const auto p = evaluate(cost, c);
    if (p.feasible) out.emplace_back(p.throughput_rps, std::move(c));
  };
  for (size_t s = 0; s + 1 < plan.size(); ++s) {
    for (int delta : {1, -1}) {
      auto c = plan;
      c[s].last_node += delta;
      c[s + 1].first_node += delta;
      if (c[s].last_node >= c[s].first_node && c[s + 1].first_node <= c[s + 1].last_node) add(std::move(c));
    }
    if (device_class[plan[s].device] == device_class[plan[s + 1].device]) continue;
    auto c = plan;
    std::swap(c[s].device, c[s + 1].device);
    add(std::move(c));
  }
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::vector<Stage>> stages;
  for (auto& o : out) stages.push_back(std::move(o.second));
  return stages;
}

// Size of the peers' device-type DP table (solve_type_dp: (nodes + 1) x count vectors x classes), with
// PipeEdge's device types: devices alike in compute, memory, bandwidth and link are one type.
double peer_table_cells(const CostModel& cost, const std::vector<int>& devices) {
  const auto& sc = cost.scenario();
  const auto& net = sc.network;
  const int last = cost.num_nodes() - 1;
  std::map<std::tuple<double, double, double, double, double, double>, int> counts;
  for (int d : devices) {
    const auto& dev = sc.devices[d];
    const double mbps = net.topology == Topology::star ? net.access_link(d).bandwidth_mbps : net.default_link.bandwidth_mbps;
    counts[std::make_tuple(dev.tflops, dev.mem_bytes, dev.mem_bw_gbs, mbps, cost.prefill_ms(d, 0, last),
                           cost.decode_total_ms(d, 0, last))]++;
  }
  double cells = cost.num_nodes() + 1.0;
  for (const auto& [key, n] : counts) cells *= n + 1.0;
  return cells * static_cast<double>(counts.size());
}
// Up to this size the peers' plans seed the search (about 10 ms each on the development machine).
constexpr double kPeerSeedMaxCells = 20000;

// Candidates (besides the bound-best plan and the seeds) that step 1 replays in full; the others are
// screened in step 2.
constexpr size_t kFullyRanked = 3;
// Refinement budget, in full replays: grows with the search space as issue 3's time targets do, up to its value at 16
// devices (the suite's largest): beyond that the neighbours of one plan are no more numerous per stage, and a budget
// growing with the square of the devices made planning 64 devices take seconds of replays alone.
constexpr double kMinRefineBudget = 6.0;
constexpr double kRefineBudgetPerDeviceSq = 0.1;
constexpr double kMaxRefineBudget = kRefineBudgetPerDeviceSq * 16 * 16;

// The search: the baselines seed the incumbent (adaptlink is never below them), so do the peers' plans where
// their dynamic programs are small (a few ms); then the DP over device orders.
// Returns the exact search's lower bound on any one-pipeline plan's bottleneck (ms; 0 when none is proven).
double seed_and_solve(const CostModel& cost, Objective objective, const std::vector<int>& devices, Search& search,
                      bool seeds = true) {
  // The exact one-pipeline search for the bottleneck (bottleneck.cpp), whatever the device order: the best plan at
  // saturation, and a candidate that the replay ranks in closed loops.
  double lower_bound_ms = 0;
  if (objective == Objective::throughput) {
    auto exact = min_bottleneck_pipeline(cost, devices);
    if (!exact.capped) lower_bound_ms = exact.lower_bound_ms;
    if (!exact.stages.empty()) {
      Plan p;
      p.stages = std::move(exact.stages);
      search.offer(p);
    }
  }
  if (!seeds) {
    search.solve();
    return lower_bound_ms;
  }
  for (const char* baseline : {"uniform", "proportional", "memory"}) {
    auto p = make_planner(baseline);
    if (auto seeded = (*p)->plan(cost, objective)) search.offer(*seeded);
  }
  if (peer_table_cells(cost, devices) <= kPeerSeedMaxCells) {
    for (const char* peer : {"edgeshard", "pipeedge"}) {
      auto p = make_planner(peer);
      if (auto seeded = (*p)->plan(cost, objective)) search.offer(*seeded);
    }
  }
  search.solve();
  return lower_bound_ms;
}

class AdaptlinkPlanner final : public Planner {
 public:
  explicit AdaptlinkPlanner(AdaptlinkOptions options = {}) : options_(options) {}
  [[nodiscard]] std::string name() const override { return "adaptlink"; }
  [[nodiscard]] Expected<Plan> plan(const CostModel& cost, Objective objective) const override {
    return plan_to_beat(cost, objective, 0);
  }
  [[nodiscard]] Expected<Plan> plan_to_beat(const CostModel& cost, Objective objective, double beat_rps) const override {
    const auto devices = active_devices(cost.scenario());
    if (devices.empty()) return make_error("adaptlink: no active device");
    Search search(cost, objective, devices);
    const double lower_bound_ms = seed_and_solve(cost, objective, devices, search, options_.seeds);
    if (search.best().empty()) return memory_shortfall(cost, devices);
    Plan plan;
    plan.planner = "adaptlink";
    plan.objective = objective;
    plan.stages = search.best();
    plan.predicted = evaluate(cost, plan.stages);
    plan.search_bound_rps = plan.predicted.bound_rps;
    const auto& workload = cost.scenario().workload;
    if (objective != Objective::throughput || !closed_loop(workload)) return plan;

    // Replicas (replicas.cpp) win when they beat the one-pipeline plan by kReplicaMinGain. Unbatched, no one-pipeline
    // plan exceeds one_pipeline_rps = 1 / (the exact search's lower bound on the bottleneck): a replicated plan that
    // beats that by kReplicaMinGain wins whatever the ranking and refinement below would find, so they are skipped.
    // And when one_pipeline_rps cannot beat `beat_rps`, only a replicated plan faster than `beat_rps` could matter.
    const bool batched = batches_decode(cost.scenario());
    const double one_pipeline_rps = !batched && lower_bound_ms > 0 ? 1e3 / lower_bound_ms : 0;
    std::optional<Plan> replicated;
    const bool replicas_first = one_pipeline_rps > 0 && replicas_allowed(cost.scenario(), objective);
    if (replicas_first) {
      replicated = plan_replicas(cost, objective);
      const double x = replicated ? replicated->predicted.throughput_rps : 0;
      if (x > kReplicaMinGain * one_pipeline_rps || (one_pipeline_rps <= beat_rps && x <= beat_rps)) {
        if (!replicated) return plan;  // nothing here beats beat_rps
        replicated->search_bound_rps = std::max(replicated->search_bound_rps, plan.search_bound_rps);
        return std::move(*replicated);
      }
    } else if (one_pipeline_rps > 0 && one_pipeline_rps <= beat_rps) {
      return plan;  // no one-pipeline plan beats beat_rps
    }

    ReplayRanker ranker(cost, replay_requests(workload));
    // 1. Rank: the full replay, best bound first (see above).
    std::vector<std::pair<double, std::vector<Stage>>> pool = search.candidates();
    pool.emplace_back(plan.predicted.throughput_rps, plan.stages);
    for (const auto& seed : search.seeds()) {
      auto st = seed;
      pool.emplace_back(evaluate(cost, st).throughput_rps, seed);
    }
    std::stable_sort(pool.begin(), pool.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    double best = 0;
    std::vector<Stage> chosen;
    std::vector<std::vector<Stage>> screen_only;  // candidates beyond the first kFullyRanked
    std::vector<std::vector<Stage>> seen;
    size_t fully = 0;
    // Unbatched the replay never exceeds the bound; batched the closed form is an estimate (plan.cpp), so every
    // candidate and seed is replayed.
    for (const auto& [bound, stages] : pool) {
      if (!batched && bound <= best) break;
      if (std::find(seen.begin(), seen.end(), stages) != seen.end()) continue;
      seen.push_back(stages);
      const bool seed = std::find(search.seeds().begin(), search.seeds().end(), stages) != search.seeds().end();
      if (!seed && stages != search.best() && fully++ >= kFullyRanked) {
        screen_only.push_back(stages);
        continue;
      }
      const double x = ranker.full(stages, best);
      if (x > best) {
        best = x;
        chosen = stages;
      }
    }
    if (chosen.empty()) return plan;  // no replay finished (cannot happen for a feasible plan)

    // 2. Refine: the other candidates, then one-step neighbours, until none improves or the budget
    //    is spent. A plan replaces the current one when its short replay beats the current plan's
    //    (like with like: short replays run lower than full ones) and its full replay beats it too.
    ranker.reset_budget();
    const double n_dev = static_cast<double>(devices.size());
    const double budget = std::clamp(kRefineBudgetPerDeviceSq * n_dev * n_dev, kMinRefineBudget, kMaxRefineBudget);
    double chosen_screen = ranker.screen(chosen, 0.0);
    auto try_plan = [&](std::vector<Stage>& n) {
      auto st = n;
      if (evaluate(cost, st).throughput_rps <= best) return false;  // its full replay could not beat
      const double sx = ranker.screen(n, chosen_screen);
      if (!(sx > chosen_screen * (1 + 1e-9))) return false;
      const double x = ranker.full(n, best);
      if (!(x > best * (1 + 1e-9))) return false;
      best = x;
      chosen = std::move(n);
      chosen_screen = sx;
      return true;
    };
    for (auto& n : screen_only) {
      if (!ranker.budget_left(chosen, budget)) break;
      try_plan(n);
    }
    bool improved = true;
    while (improved && ranker.budget_left(chosen, budget)) {
      improved = false;
      for (auto& n : neighbours(cost, chosen, search.device_classes())) {
        if (!ranker.budget_left(chosen, budget)) break;
        if (try_plan(n)) {
          improved = true;
          break;
        }
      }
    }
    plan.stages = chosen;
    plan.predicted = evaluate(cost, plan.stages);
    plan.predicted.throughput_rps = best;
    // Several independent pipelines on disjoint device groups, when they beat this one (replicas.cpp).
    if (!replicas_first) replicated = plan_replicas(cost, objective);
    if (replicated && replicated->predicted.throughput_rps > kReplicaMinGain * best) {
      replicated->search_bound_rps = std::max(replicated->search_bound_rps, plan.search_bound_rps);
      return std::move(*replicated);
    }
    return plan;
  }

 private:
  AdaptlinkOptions options_;
};

}  // namespace

std::unique_ptr<Planner> make_adaptlink_planner() { return std::make_unique<AdaptlinkPlanner>(); }

}  // namespace adaptlink::partition::detail

namespace adaptlink::partition {

std::unique_ptr<Planner> make_adaptlink(const AdaptlinkOptions& options) {
  return std::make_unique<detail::AdaptlinkPlanner>(options);
}

}  // namespace adaptlink::partition

namespace adaptlink::partition::detail {

std::vector<Stage> adaptlink_screened(const CostModel& cost, Objective objective) {
  const auto devices = active_devices(cost.scenario());
  if (devices.empty()) return {};
  Search search(cost, objective, devices);
  search.limit_orders(kScreenExactOrders, kScreenHeuristicOrders);
  seed_and_solve(cost, objective, devices, search);
  const auto& workload = cost.scenario().workload;
  if (search.best().empty() || objective != Objective::throughput || !closed_loop(workload)) {
    return search.best();
  }
  std::vector<std::pair<double, std::vector<Stage>>> pool = search.candidates();
  for (const auto& seed : search.seeds()) {
    auto st = seed;
    pool.emplace_back(evaluate(cost, st).throughput_rps, seed);
  }
  std::stable_sort(pool.begin(), pool.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  ReplayRanker ranker(cost, replay_requests(workload));
  std::vector<Stage> chosen = search.best();
  double best = ranker.screen(chosen, 0.0);
  for (const auto& [bound, stages] : pool) {
    if (bound <= best) break;  // the replay never exceeds the bound
    const double x = ranker.screen(stages, best);
    if (x > best) {
      best = x;
      chosen = stages;
    }
  }
  return chosen;
}

}  // namespace adaptlink::partition::detail

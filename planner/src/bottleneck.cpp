// The exact one-pipeline search for the bottleneck, independent of the device order (issue 16).
//
// The bottleneck of a plan (evaluate(), one decode step at a time per stage) is the largest of: each stage's busy
// time per request (prefill + every decode step), and each link's busy time per request. For a candidate bottleneck
// T, "is there a plan with every term <= T?" is a reachability question over states
//
//     (devices used, as a count per device type; type of the last stage; does the last stage hold text_embed)
//
// with, per state, the set of node prefixes [0, j) that can be covered (a bitset over j). Devices of one type are
// interchangeable (same compute, memory, node times and links; a device named in a direct link is a type of its
// own), so many identical boards cost a count, not a bitmask. A binary search on T finds the smallest feasible one.
//
// What each state must carry for the terms to be checked exactly where they arise:
//   * a stage's compute and memory: known from (type, first, end);
//   * star, access link of a stage's device: its incoming cut (when the previous stage's device reaches it through
//     the access point), its outgoing cut (likewise for the next one) and its share of the token sent back from the
//     head to the text_embed stage. The incoming part is known on arrival; the outgoing part is checked ahead, so
//     each state has two bitsets: prefixes whose last stage can still send through its access link ("A") and those
//     that can send only over a direct link ("D", a superset);
//   * a pair link (mesh, or a direct link in a star): the one cut it carries, plus the token back edge when the
//     stages at its ends are the text_embed stage and the head (the last stage's flag says so);
//   * where the route of the back edge depends on a device pair that the state does not hold (a device named in a
//     direct link holding text_embed or the head, the two not adjacent), the search omits that term: it is a
//     relaxation, so the lower bound stays a bound, and the plan is evaluated exactly afterwards (those terms are a
//     few bytes per token; bottleneck_ms is the plan's true value).
// Where no device is named in a direct link every route has the same shape, and the last stage's type drops out of
// the state (its outgoing part is in its own bitset).
#include "adaptlink/planner/bottleneck.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <map>
#include <tuple>

#include "planners_internal.hpp"

namespace adaptlink::partition {

namespace {

using Word = std::uint64_t;

class BottleneckTable {
 public:
  BottleneckTable(const CostModel& cost, const std::vector<int>& devices, double max_cells) : cost_(cost) {
    const auto& sc = cost.scenario();
    const auto& net = sc.network;
    star_ = net.topology == Topology::star;
    devices_ = devices.size();
    nodes_ = cost.num_nodes();
    words_ = (nodes_ + 1 + 63) / 64;
    te_ = cost.graph().text_embed_index();
    steps_ = cost.shape().output_tokens;
    const auto named = detail::named_in_direct_links(sc);
    uniform_ = true;
    std::map<std::tuple<double, double, double, double, double, double, double>, int> type_of;
    const int last = nodes_ - 1;
    for (int d : devices) {
      if (named[d]) {
        uniform_ = false;
        types_.push_back({d});
        certain_.push_back(false);
        continue;
      }
      const auto& dev = sc.devices[d];
      const Link l = star_ ? net.access_link(d) : net.default_link;
      const auto key = std::make_tuple(dev.mem_bytes, dev.tflops, dev.mem_bw_gbs, l.bandwidth_mbps, l.latency_ms,
                                       cost.prefill_ms(d, 0, last), cost.decode_total_ms(d, 0, last));
      auto [it, inserted] = type_of.try_emplace(key, static_cast<int>(types_.size()));
      if (inserted) {
        types_.emplace_back();
        certain_.push_back(true);
      }
      types_[it->second].push_back(d);
    }
    const int n_types = static_cast<int>(types_.size());
    last_dim_ = uniform_ ? 1 : n_types;
    counts_.resize(n_types);
    for (int t = 0; t < n_types; ++t) counts_[t] = std::min<int>(static_cast<int>(types_[t].size()), nodes_);
    auto cells = [&] {
      double s = last_dim_;
      for (int c : counts_) s *= c + 1;
      return s;
    };
    while (cells() > max_cells) {  // cut the largest type (the table stays bounded; nothing proven then)
      auto largest = std::max_element(counts_.begin(), counts_.end());
      if (*largest <= 1) break;
      --*largest;
      capped_ = true;
    }
    // Still too many (many distinct devices): leave out the slowest types (whole model alone), keeping one.
    while (cells() > max_cells) {
      int slowest = -1, left = 0;
      double slowest_ms = -1;
      for (int t = 0; t < n_types; ++t) {
        if (counts_[t] == 0) continue;
        ++left;
        const int d = types_[t].front();
        const double ms = cost.prefill_ms(d, 0, last) + cost.decode_total_ms(d, 0, last);
        if (ms > slowest_ms) {
          slowest_ms = ms;
          slowest = t;
        }
      }
      if (left <= 1) break;
      counts_[slowest] = 0;
      capped_ = true;
    }
    radix_.assign(n_types + 1, 1);
    for (int t = 0; t < n_types; ++t) radix_[t + 1] = radix_[t] * static_cast<size_t>(counts_[t] + 1);
    sets_ = radix_[n_types];
    cells_ = cells();

    // Per type: busy prefix (prefill + decode), memory reach, access-link figures.
    for (int c = 0; c < nodes_; ++c) {
      cut_bytes_prefill_.push_back(cost.graph().prefill_out_bytes(c, cost.shape()));
      cut_bytes_decode_.push_back(cost.graph().decode_out_bytes(c));
    }
    busy_prefix_.assign(n_types, std::vector<double>(nodes_ + 1, 0.0));
    fit_end_.assign(n_types, std::vector<int>(nodes_, 0));
    access_cut_.assign(n_types, std::vector<double>(nodes_, 0.0));
    access_back_.assign(n_types, 0.0);
    for (int t = 0; t < n_types; ++t) {
      const int d = types_[t].front();
      for (int k = 0; k < nodes_; ++k) {
        busy_prefix_[t][k + 1] = busy_prefix_[t][k] + cost.prefill_ms(d, k, k) + cost.decode_total_ms(d, k, k);
      }
      for (int i = 0; i < nodes_; ++i) {
        int j = i;
        while (j < nodes_ && cost.memory_bytes(i, j) <= sc.devices[d].mem_bytes) ++j;
        fit_end_[t][i] = j;  // stages [i, end) fit for end <= j
      }
      if (star_) {
        const Link l = net.access_link(d);
        for (int c = 0; c < nodes_; ++c) access_cut_[t][c] = cut_busy(l, c);
        access_back_[t] = steps_ * hop_busy_ms(l, kTokenBytes);
      }
    }
    // Routes between types: through the access point, or over one pair link (its bandwidth).
    pair_mbps_.assign(static_cast<size_t>(n_types * n_types), 0.0);
    for (int u = 0; u < n_types; ++u) {
      for (int v = 0; v < n_types; ++v) {
        if (u == v && types_[u].size() < 2) continue;
        const int a = types_[u][0], b = types_[v][u == v ? 1 : 0];
        const auto& route = cost.route(a, b);
        const bool via_access = star_ && route.size() == 2;
        if (!via_access) pair_mbps_[u * n_types + v] = route.front().spec.bandwidth_mbps;
      }
    }
    ok_.assign(static_cast<size_t>(n_types) * nodes_ * 4 * words_, 0);
    reach_.assign(sets_ * static_cast<size_t>(last_dim_) * 4 * words_, 0);
    mask_entry_.assign(words_, 0);
    for (int j = te_ + 1; j <= nodes_; ++j) mask_entry_[j / 64] |= Word{1} << (j % 64);
  }

  [[nodiscard]] int types() const { return static_cast<int>(types_.size()); }
  [[nodiscard]] bool capped() const { return capped_; }
  [[nodiscard]] double cells() const { return cells_; }

  // W* >= the largest single node's busy on its fastest type, and >= the sum of every node's fastest busy over the
  // devices (some stage carries at least its share).
  [[nodiscard]] double lower_bound() const {
    double worst = 0, sum = 0;
    for (int k = 0; k < nodes_; ++k) {
      double fastest = std::numeric_limits<double>::infinity();
      for (size_t t = 0; t < types_.size(); ++t) fastest = std::min(fastest, busy(static_cast<int>(t), k, k + 1));
      worst = std::max(worst, fastest);
      sum += fastest;
    }
    return std::max(worst, sum / std::max<double>(1, devices_));
  }

  // Is there a plan with every term <= t? On success plan() reconstructs one.
  bool feasible(double t) {
    t_ = t;
    build_ok();
    std::fill(reach_.begin(), reach_.end(), 0);
    const int n_types = types();
    // First stages.
    for (int v = 0; v < n_types; ++v) {
      if (counts_[v] == 0) continue;
      const Word* a = ok(v, 0, 0, kA);
      const Word* d = ok(v, 0, 0, kD);
      if (bit(d, nodes_)) {
        final_ = {0, 0, 0, 0, v};
        return true;
      }
      spread(radix_[v], uniform_ ? 0 : v, 0, a, d);
    }
    for (size_t set = 1; set < sets_; ++set) {
      for (int u = 0; u < last_dim_; ++u) {
        for (int e = 0; e < 2; ++e) {
          const Word* ra = reach(set, u, e, kA);
          const Word* rd = reach(set, u, e, kD);
          if (empty(rd)) continue;
          for (int v = 0; v < n_types; ++v) {
            if (used(set, v) >= counts_[v]) continue;
            const double mbps = pair_mbps(u, v);
            const bool access = mbps == 0;
            const Word* src = access ? ra : rd;
            for (int w = 0; w < words_; ++w) {
              Word m = src[w];
              while (m != 0) {
                const int i = w * 64 + std::countr_zero(m);
                m &= m - 1;
                if (i == 0 || i >= nodes_) continue;
                if (!access && pair_ms(mbps, i - 1) > t_) continue;
                const Word* oa = ok(v, i, access ? 1 : 0, kA);
                const Word* od = ok(v, i, access ? 1 : 0, kD);
                if (bit(od, nodes_) && head_back_ok(e, access, mbps, i)) {
                  final_ = {set, u, e, i, v};
                  return true;
                }
                spread(set + radix_[v], uniform_ ? 0 : v, i, oa, od);
              }
            }
          }
        }
      }
    }
    return false;
  }

  // The plan of the last feasible() that returned true, in pipeline order.
  [[nodiscard]] std::vector<Stage> plan() const {
    std::vector<std::pair<int, std::pair<int, int>>> typed;  // type, [first, end)
    auto [set, u, e, i, v] = final_;
    typed.push_back({v, {i, nodes_}});
    int kind = pair_mbps(u, v) == 0 ? kA : kD;
    int j = i;
    while (j > 0) {
      // The last stage of this state ends at j, is of type u (any, when uniform), holds text_embed iff e.
      bool found = false;
      for (int vv = 0; vv < types() && !found; ++vv) {
        if ((!uniform_ && vv != u) || used(set, vv) == 0) continue;
        const size_t prev = set - radix_[vv];
        if (prev == 0) {
          if (bit(ok(vv, 0, 0, kind), j) && e == holds_entry(0, j)) {
            typed.push_back({vv, {0, j}});
            j = 0;
            found = true;
          }
          continue;
        }
        for (int uu = 0; uu < last_dim_ && !found; ++uu) {
          for (int ee = 0; ee < 2 && !found; ++ee) {
            const double mbps = pair_mbps(uu, vv);
            const bool access = mbps == 0;
            const Word* src = reach(prev, uu, ee, access ? kA : kD);
            for (int ii = 1; ii < j; ++ii) {
              if (!bit(src, ii) || e != holds_entry(ii, j)) continue;
              if (!access && pair_ms(mbps, ii - 1) > t_) continue;
              if (!bit(ok(vv, ii, access ? 1 : 0, kind), j)) continue;
              typed.push_back({vv, {ii, j}});
              set = prev;
              u = uu;
              e = ee;
              j = ii;
              kind = access ? kA : kD;
              found = true;
              break;
            }
          }
        }
      }
      ADAPTLINK_CHECK(found, "bottleneck search: no predecessor while reconstructing");
    }
    std::reverse(typed.begin(), typed.end());
    std::vector<size_t> next(types_.size(), 0);
    std::vector<Stage> stages;
    for (const auto& [type, range] : typed) {
      Stage st;
      st.device = types_[type][next[type]++];
      st.first_node = range.first;
      st.last_node = range.second - 1;
      stages.push_back(st);
    }
    return stages;
  }

 private:
  static constexpr int kA = 0;  // the stage may send its output through its access link
  static constexpr int kD = 1;  // it may send only over a pair link

  [[nodiscard]] double busy(int t, int i, int j) const { return busy_prefix_[t][j] - busy_prefix_[t][i]; }
  [[nodiscard]] double cut_busy(const Link& l, int c) const {
    return hop_busy_ms(l, cut_bytes_prefill_[c]) + steps_ * hop_busy_ms(l, cut_bytes_decode_[c]);
  }
  [[nodiscard]] double pair_ms(double mbps, int c) const { return cut_busy(Link{mbps, 0}, c); }
  [[nodiscard]] double pair_mbps(int u, int v) const {
    if (uniform_) return star_ ? 0 : cost_.scenario().network.default_link.bandwidth_mbps;
    return pair_mbps_[static_cast<size_t>(u * types() + v)];
  }
  [[nodiscard]] int holds_entry(int i, int j) const { return i <= te_ && te_ < j ? 1 : 0; }
  [[nodiscard]] int used(size_t set, int t) const {
    return static_cast<int>(set / radix_[t] % static_cast<size_t>(counts_[t] + 1));
  }
  // The head [i, nodes) after a text_embed stage of the last type (e): over a pair link the token back edge shares
  // it with the cut (through the access point, each end's share is in its own access term).
  [[nodiscard]] bool head_back_ok(int e, bool access, double mbps, int i) const {
    if (e == 0 || access) return true;
    return pair_ms(mbps, i - 1) + steps_ * hop_busy_ms(Link{mbps, 0}, kTokenBytes) <= t_;
  }
  static bool bit(const Word* b, int j) { return (b[j / 64] >> (j % 64)) & 1; }
  [[nodiscard]] bool empty(const Word* b) const {
    for (int w = 0; w < words_; ++w)
      if (b[w]) return false;
    return true;
  }
  Word* ok(int v, int i, int in_access, int kind) {
    return &ok_[((static_cast<size_t>(v) * nodes_ + i) * 4 + in_access * 2 + kind) * words_];
  }
  [[nodiscard]] const Word* ok(int v, int i, int in_access, int kind) const {
    return &ok_[((static_cast<size_t>(v) * nodes_ + i) * 4 + in_access * 2 + kind) * words_];
  }
  Word* reach(size_t set, int last, int e, int kind) {
    return &reach_[(((set * last_dim_) + last) * 4 + e * 2 + kind) * words_];
  }
  [[nodiscard]] const Word* reach(size_t set, int last, int e, int kind) const {
    return &reach_[(((set * last_dim_) + last) * 4 + e * 2 + kind) * words_];
  }
  // Stages [i, j) of type v valid at t_, by how they receive (through the access point or not) and send.
  void build_ok() {
    std::fill(ok_.begin(), ok_.end(), 0);
    for (int v = 0; v < types(); ++v) {
      for (int i = 0; i < nodes_; ++i) {
        for (int in_access = 0; in_access < (star_ ? 2 : 1); ++in_access) {
          if (in_access && i == 0) continue;
          const double in = in_access ? access_cut_[v][i - 1] : 0.0;
          Word* a = ok(v, i, in_access, kA);
          Word* d = ok(v, i, in_access, kD);
          for (int j = i + 1; j <= fit_end_[v][i]; ++j) {
            if (busy(v, i, j) > t_) break;  // compute only grows with j
            double load = in;
            const bool entry = holds_entry(i, j) == 1, head = j == nodes_;
            // The back edge's share of this access link: certain unless a direct link may carry it instead.
            if (star_ && entry != head && certain_[v]) load += access_back_[v];
            if (load > t_) continue;
            d[j / 64] |= Word{1} << (j % 64);
            if (head || (star_ && load + access_cut_[v][j - 1] <= t_) || !star_) a[j / 64] |= Word{1} << (j % 64);
          }
        }
      }
    }
  }
  // ORs a stage's valid ends into the state after it (bit `nodes_`, a finished plan, is not stored).
  void spread(size_t set, int last, int i, const Word* a, const Word* d) {
    for (int e = 0; e < 2; ++e) {
      Word* ra = reach(set, last, e, kA);
      Word* rd = reach(set, last, e, kD);
      for (int w = 0; w < words_; ++w) {
        Word m = e == 1 ? (i <= te_ ? mask_entry_[w] : 0) : (i <= te_ ? ~mask_entry_[w] : ~Word{0});
        if (w == nodes_ / 64) m &= ~(Word{1} << (nodes_ % 64));
        ra[w] |= a[w] & m;
        rd[w] |= d[w] & m;
      }
    }
  }

  struct Final {
    size_t set = 0;
    int u = 0, e = 0, i = 0, v = 0;
  };

  const CostModel& cost_;
  bool star_ = true, uniform_ = true, capped_ = false;
  int nodes_ = 0, words_ = 1, te_ = 0, last_dim_ = 1;
  double steps_ = 0, t_ = 0, cells_ = 0;
  std::vector<std::vector<int>> types_;
  std::vector<int> counts_;
  std::vector<bool> certain_;  // per type: every route to and from it goes through the access point
  size_t devices_ = 0;
  std::vector<size_t> radix_;
  size_t sets_ = 1;
  std::vector<double> cut_bytes_prefill_, cut_bytes_decode_;
  std::vector<std::vector<double>> busy_prefix_, access_cut_;
  std::vector<std::vector<int>> fit_end_;
  std::vector<double> access_back_, pair_mbps_;
  std::vector<Word> ok_, reach_, mask_entry_;
  Final final_;
};

}  // namespace

MinBottleneck min_bottleneck_pipeline(const CostModel& cost, const std::vector<int>& devices, double max_cells) {
  if (batches_decode(cost.scenario())) {  // the search is over one decode step at a time per stage
    const Scenario one = admitted(cost.scenario(), cost.scenario().workload.in_flight, 1);
    const CostModel unbatched(cost, one);
    return min_bottleneck_pipeline(unbatched, devices, max_cells);
  }
  MinBottleneck out;
  if (devices.empty()) return out;
  BottleneckTable table(cost, devices, max_cells);
  out.types = table.types();
  out.cells = table.cells();
  out.capped = table.capped();
  if (!table.feasible(std::numeric_limits<double>::infinity())) return out;  // nothing fits
  auto take = [&](std::vector<Stage> stages) {
    const double w = evaluate(cost, stages).bottleneck_ms;
    if (w < out.bottleneck_ms) {
      out.bottleneck_ms = w;
      out.stages = std::move(stages);
    }
  };
  take(table.plan());
  // Bisection: lo infeasible, hi feasible (a plan's true bottleneck is feasible in the search's model).
  double lo = table.lower_bound() * (1 - 1e-12);
  double hi = out.bottleneck_ms;
  while (hi - lo > 1e-10 * hi) {
    const double mid = 0.5 * (lo + hi);
    if (table.feasible(mid)) {
      take(table.plan());
      hi = std::min(mid, out.bottleneck_ms);
    } else {
      lo = mid;
    }
  }
  out.lower_bound_ms = out.capped ? 0 : lo;
  return out;
}

}  // namespace adaptlink::partition

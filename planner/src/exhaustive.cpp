// The exhaustive planner: the ground truth for small cases. It enumerates every ordered subset of
// the active devices and every way to cut the node sequence into that many non-empty contiguous
// stages, evaluates each with evaluate() and keeps the best. No pruning, no shared code with the
// DP beyond the evaluation itself.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "planners_internal.hpp"

namespace adaptlink::partition::detail {

namespace {

constexpr double kMaxCandidates = 2e7;

double choose(int n, int k) {
  double r = 1;
  for (int i = 1; i <= k; ++i) r = r * (n - k + i) / i;
  return r;
}

class ExhaustivePlanner final : public Planner {
 public:
  [[nodiscard]] std::string name() const override { return "exhaustive"; }
  [[nodiscard]] Expected<Plan> plan(const CostModel& cost, Objective objective) const override {
    const auto devices = active_devices(cost.scenario());
    const int n = static_cast<int>(devices.size());
    const int nodes = cost.num_nodes();
    if (n == 0) return make_error("exhaustive: no active device");
    double candidates = 0;
    for (int k = 1; k <= std::min(n, nodes); ++k) {
      double perms = 1;
      for (int t = 0; t < k; ++t) perms *= n - t;
      candidates += perms * choose(nodes - 1, k - 1);
    }
    if (candidates > kMaxCandidates) {
      return make_error("exhaustive: {:.3g} candidate plans ({} devices, {} nodes) is too many; it is meant for "
                        "<= 5 devices and small graphs",
                        candidates, n, nodes);
    }

    double best_score = -std::numeric_limits<double>::infinity();
    std::vector<Stage> best;
    std::vector<Stage> stages;
    // Every subset (bitmask), every order of it (next_permutation), every set of cuts.
    for (unsigned mask = 1; mask < (1u << n); ++mask) {
      std::vector<int> subset;
      for (int i = 0; i < n; ++i)
        if (mask & (1u << i)) subset.push_back(devices[i]);
      const int k = static_cast<int>(subset.size());
      if (k > nodes) continue;
      std::sort(subset.begin(), subset.end());
      do {
        // cuts: k - 1 strictly increasing positions in [1, nodes - 1]
        std::vector<int> cut(static_cast<size_t>(k - 1));
        std::iota(cut.begin(), cut.end(), 1);
        while (true) {
          stages.assign(static_cast<size_t>(k), Stage{});
          for (int s = 0; s < k; ++s) {
            stages[s].device = subset[s];
            stages[s].first_node = s == 0 ? 0 : cut[s - 1];
            stages[s].last_node = s == k - 1 ? nodes - 1 : cut[s] - 1;
          }
          const double sc = score(evaluate(cost, stages), objective);
          if (sc > best_score) {
            best_score = sc;
            best = stages;
          }
          // next combination
          int t = k - 2;
          while (t >= 0 && cut[t] == nodes - 1 - (k - 2 - t)) --t;
          if (t < 0) break;
          ++cut[t];
          for (int u = t + 1; u < k - 1; ++u) cut[u] = cut[u - 1] + 1;
        }
      } while (std::next_permutation(subset.begin(), subset.end()));
    }
    if (best.empty() || !std::isfinite(best_score)) return memory_shortfall(cost, devices);
    Plan plan;
    plan.planner = "exhaustive";
    plan.objective = objective;
    plan.stages = best;
    plan.predicted = evaluate(cost, plan.stages);
    return plan;
  }
};

}  // namespace

std::unique_ptr<Planner> make_exhaustive_planner() { return std::make_unique<ExhaustivePlanner>(); }

}  // namespace adaptlink::partition::detail

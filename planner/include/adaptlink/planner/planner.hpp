// Planners behind one interface. Each takes the cost model (graph + scenario) and returns a plan
// or an error that names the shortfall ("needs 13.6 GB, devices offer 11.0 GB").
//
//   uniform       the paper's baseline: equal decoder layers per active device in the given order,
//                 vision tower + projector + text_embed on the first, head on the last
//   proportional  decoder layers proportional to compute (tflops)
//   memory        decoder layers proportional to memory (exo, llama.cpp RPC)
//   edgeshard     EdgeShard's DP (Zhang et al. 2024) over device types and cuts (see edgeshard.cpp)
//   pipeedge      PipeEdge's DP (Hu et al. 2022) over device subsets, orders and cuts (see pipeedge.cpp)
//   adaptlink     DP over the ordered DAG choosing devices, order and cuts (see adaptlink.cpp)
//   exhaustive    enumerates device subsets, orders and cuts (ground truth; small cases only)
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "adaptlink/partition/plan.hpp"
#include "adaptlink/planner/replay.hpp"

namespace adaptlink::partition {

class Planner {
 public:
  virtual ~Planner() = default;
  [[nodiscard]] virtual std::string name() const = 0;
  // `objective` overrides the scenario's planner.objective.
  [[nodiscard]] virtual Expected<Plan> plan(const CostModel& cost, Objective objective) const = 0;
  // The same when only a plan faster than `beat_rps` (by the reported prediction) will be kept, as in make_plan's
  // admission descent: a planner may stop early and return a slower plan where it proves that plan() would return
  // nothing faster than `beat_rps`; a plan it returns that is faster than `beat_rps` is the one plan() returns.
  [[nodiscard]] virtual Expected<Plan> plan_to_beat(const CostModel& cost, Objective objective, double beat_rps) const {
    (void)beat_rps;
    return plan(cost, objective);
  }
};

// The registry's names, in the order above (help texts and error messages list them from here).
std::vector<std::string> planner_names();
Expected<std::unique_ptr<Planner>> make_planner(std::string_view name);

// Convenience: make_planner(name) -> plan -> timing (solve_ms) -> backups when the scenario asks. Where the scenario
// says "auto", make_plan chooses the plan's admission limit ([planner] max_in_flight) and batch limit (max_batch) by
// one rule for every planner: the population first, then admission_steps() while a smaller limit could still win,
// each limit planned on its own cost model (its KV reservation) and replayed, the best kept (Plan::in_flight,
// Plan::max_batch; run it on PlanCost / adopt, plan.hpp / problem.hpp).
Expected<Plan> make_plan(const CostModel& cost, std::string_view planner, Objective objective);

// The smaller admission limits make_plan tries below a population P: P / 2^(k/2) rounded, k = 1, 2, ..., distinct,
// down to 1 (steps of about 1.41x).
std::vector<int> admission_steps(int population);

// adaptlink with its seeds switched off: the baselines' and the peers' plans are not offered to its search (tests show
// that the search alone is at least as good as each peer).
struct AdaptlinkOptions {
  bool seeds = true;
};
std::unique_ptr<Planner> make_adaptlink(const AdaptlinkOptions& options);

// Error naming the memory shortfall of a whole model on the given devices.
Error memory_shortfall(const CostModel& cost, const std::vector<int>& devices);

}  // namespace adaptlink::partition

// Shared pieces of the planners (not part of the public interface).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "adaptlink/planner/planner.hpp"

namespace adaptlink::partition::detail {

// Splits the decoder layers over `devices` (in order) proportionally to `weights` (largest
// remainder); vision, projector and text_embed go to the first device, the head to the last.
std::vector<Stage> split_by_weights(const CostModel& cost, const std::vector<int>& devices,
                                    const std::vector<double>& weights);
// Evaluates the stages; an infeasible split is an error naming the stage that does not fit.
Expected<Plan> finish_split(const CostModel& cost, std::string name, Objective objective, std::vector<Stage> stages);

std::unique_ptr<Planner> make_adaptlink_planner();
// adaptlink made cheap for the replica search's many device groups (replicas.cpp): fewer device orders, and its
// candidates ranked by the short screening replay only, without the full replays and the refinement (empty
// when nothing fits).
std::vector<Stage> adaptlink_screened(const CostModel& cost, Objective objective);
std::unique_ptr<Planner> make_exhaustive_planner();
std::unique_ptr<Planner> make_edgeshard_planner();  // edgeshard.cpp
std::unique_ptr<Planner> make_pipeedge_planner();   // pipeedge.cpp

// The device-type dynamic program shared by the peer planners (PipeEdge's scheduler, pipeedge.cpp):
// devices of one class are interchangeable, a state is (nodes placed, how many devices of each class
// are used, class of the last stage), and the objective is the bottleneck max(stage compute, cut
// transfer), ties broken by the smallest sum of those terms. The callbacks are the planner's own
// cost model; [first, last) are node ranges.
struct TypeDp {
  struct Class {
    std::vector<int> devices;  // interchangeable devices, scenario order
  };
  std::vector<Class> classes;
  int nodes = 0;
  int first_class = -1;  // >= 0: the first stage must be on this class (EdgeShard's source device)
  std::function<double(int cls, int first, int last)> compute_ms;
  std::function<double(int from_cls, int to_cls, int cut)> transfer_ms;  // cut: last node before it
  std::function<bool(int cls, int first, int last)> fits;
};
// Stages in pipeline order (device = a concrete device of the chosen class), or empty when no
// assignment fits. `max_states` bounds the DP table (cells of (nodes + 1) x count vectors x classes);
// beyond it the per-class counts are capped, then the slowest classes are left out.
std::vector<Stage> solve_type_dp(const TypeDp& problem, size_t max_states = 1'500'000);

// Per scenario device: whether a direct link names it (its bandwidths are pair-specific, so the peers' DPs give it a
// class of its own).
std::vector<bool> named_in_direct_links(const Scenario& scenario);

}  // namespace adaptlink::partition::detail

// Shared pieces of the planners (not part of the public interface).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "adaptlink/partition/planner.hpp"

namespace adaptlink::partition::detail {

// Splits the decoder layers over `devices` (in order) proportionally to `weights` (largest
// remainder); vision, projector and text_embed go to the first device, the head to the last.
std::vector<Stage> split_by_weights(const CostModel& cost, const std::vector<int>& devices,
                                    const std::vector<double>& weights);
// Evaluates the stages; an infeasible split is an error naming the stage that does not fit.
Expected<Plan> finish_split(const CostModel& cost, std::string name, Objective objective, std::vector<Stage> stages);

std::unique_ptr<Planner> make_adaptlink_planner();
std::unique_ptr<Planner> make_exhaustive_planner();

}  // namespace adaptlink::partition::detail

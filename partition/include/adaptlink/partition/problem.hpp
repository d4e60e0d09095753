// A scenario with its model graph and cost model, kept together: the cost model points into both,
// so the three live in one heap object that never moves.
#pragma once

#include <filesystem>
#include <memory>

#include "adaptlink/partition/cost_model.hpp"
#include "adaptlink/partition/plan.hpp"
#include "adaptlink/partition/scenario.hpp"

namespace adaptlink::partition {

struct Problem {
  Scenario scenario;
  models::LayerGraph graph;
  std::unique_ptr<CostModel> cost;
};

// Builds the graph and cost model of an already parsed scenario.
std::unique_ptr<Problem> make_problem(Scenario scenario);
// Makes `problem` the one `plan` runs on: the scenario admitted() at the plan's admission and batch limits, its
// cost model rebuilt on it with the same profiles and slowdowns (nothing changes when they are the scenario's).
void adopt(Problem& problem, const Plan& plan);
// load_scenario + make_problem.
Expected<std::unique_ptr<Problem>> load_problem(const std::filesystem::path& scenario_file);

}  // namespace adaptlink::partition

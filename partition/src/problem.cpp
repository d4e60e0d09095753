#include "adaptlink/partition/problem.hpp"

namespace adaptlink::partition {

std::unique_ptr<Problem> make_problem(Scenario scenario) {
  auto problem = std::make_unique<Problem>();
  problem->scenario = std::move(scenario);
  problem->graph = models::LayerGraph::build(problem->scenario.model.llava, problem->scenario.model.dtype);
  problem->cost = std::make_unique<CostModel>(problem->graph, problem->scenario);
  return problem;
}

void adopt(Problem& problem, const Plan& plan) {
  const PlanCost runs(*problem.cost, plan);
  if (&runs.get() == problem.cost.get()) return;
  Scenario scenario = runs.scenario();
  auto old = std::move(problem.cost);
  problem.scenario = std::move(scenario);
  problem.cost = std::make_unique<CostModel>(*old, problem.scenario);
}

Expected<std::unique_ptr<Problem>> load_problem(const std::filesystem::path& scenario_file) {
  auto scenario = load_scenario(scenario_file);
  if (!scenario) return scenario.error();
  return make_problem(std::move(*scenario));
}

}  // namespace adaptlink::partition

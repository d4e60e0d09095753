#include "adaptlink/partition/problem.hpp"

namespace adaptlink::partition {

std::unique_ptr<Problem> make_problem(Scenario scenario) {
  auto problem = std::make_unique<Problem>();
  problem->scenario = std::move(scenario);
  problem->graph = models::LayerGraph::build(problem->scenario.model.llava, problem->scenario.model.dtype);
  problem->cost = std::make_unique<CostModel>(problem->graph, problem->scenario);
  return problem;
}

Expected<std::unique_ptr<Problem>> load_problem(const std::filesystem::path& scenario_file) {
  auto scenario = load_scenario(scenario_file);
  if (!scenario) return scenario.error();
  return make_problem(std::move(*scenario));
}

}  // namespace adaptlink::partition

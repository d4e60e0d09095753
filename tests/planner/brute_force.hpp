// Brute force over plans for the planner tests: every ordered subset of the devices and every cut into contiguous
// stages that fit memory.
#pragma once

#include <functional>
#include <vector>

#include "adaptlink/partition/cost_model.hpp"
#include "adaptlink/partition/plan.hpp"

namespace adaptlink::testing {

// Calls `visit` with each plan (stages in pipeline order). `allowed(device, first)`, when given, says whether a device
// may take the stage that starts at node `first`.
inline void for_each_plan(const partition::CostModel& cost,
                          const std::function<void(const std::vector<partition::Stage>&)>& visit,
                          const std::function<bool(int, int)>& allowed = {}) {
  const int n = cost.num_devices(), nodes = cost.num_nodes();
  std::vector<bool> used(static_cast<size_t>(n), false);
  std::vector<partition::Stage> stages;
  std::function<void(int)> extend = [&](int first) {
    if (first == nodes) {
      visit(stages);
      return;
    }
    for (int d = 0; d < n; ++d) {
      if (used[d] || (allowed && !allowed(d, first))) continue;
      used[d] = true;
      for (int last = first; last < nodes; ++last) {
        if (cost.memory_bytes(first, last) > cost.scenario().devices[d].mem_bytes) break;
        stages.push_back(partition::Stage{d, first, last});
        extend(last + 1);
        stages.pop_back();
      }
      used[d] = false;
    }
  };
  extend(0);
}

}  // namespace adaptlink::testing

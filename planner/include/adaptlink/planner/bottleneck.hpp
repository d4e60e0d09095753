// The exact one-pipeline search for the bottleneck (bottleneck.cpp): the smallest closed-form bottleneck (evaluate(),
// one decode step at a time per stage) of any plan that cuts the nodes into contiguous stages on distinct devices,
// whatever their order. It does not depend on the device order given.
#pragma once

#include <limits>
#include <vector>

#include "adaptlink/partition/plan.hpp"

namespace adaptlink::partition {

struct MinBottleneck {
  std::vector<Stage> stages;  // a plan reaching `bottleneck_ms` (empty: no plan fits the devices' memory)
  double bottleneck_ms = std::numeric_limits<double>::infinity();  // evaluate()'s bottleneck of `stages`
  // No one-pipeline plan on these devices has a bottleneck at or below this (0 when `capped`: nothing proven).
  double lower_bound_ms = 0;
  bool capped = false;  // the search table was bounded by leaving devices of the largest types out
  int types = 0;        // interchangeable device groups the search ran over
  double cells = 0;     // its table: device-count vectors x last types
};

// `max_cells` bounds the table (count vectors x last-stage types); beyond it the largest types' counts are cut (then
// `capped`). Counts above the number of nodes are cut without loss (a pipeline has at most one stage per node).
MinBottleneck min_bottleneck_pipeline(const CostModel& cost, const std::vector<int>& devices,
                                      double max_cells = 1 << 18);

}  // namespace adaptlink::partition

#include "adaptlink/partition/testbed.hpp"

#include <algorithm>

namespace adaptlink::partition {

double testbed_slowdown(const Scenario& scenario, int device) {
  ADAPTLINK_CHECK(device >= 0 && device < static_cast<int>(scenario.devices.size()), "device index {} out of range",
                  device);
  double fastest = 0;
  for (const auto& d : scenario.devices) fastest = std::max(fastest, d.tflops);
  const double own = scenario.devices[static_cast<size_t>(device)].tflops;
  ADAPTLINK_CHECK(own > 0, "device '{}' has no positive tflops", scenario.devices[static_cast<size_t>(device)].name);
  return fastest / own;
}

NodeTimes scaled(const NodeTimes& times, double factor) {
  ADAPTLINK_CHECK(factor > 0, "scale factor must be > 0 (got {})", factor);
  NodeTimes out = times;
  for (auto* v : {&out.prefill_ms, &out.decode_ms_at_zero, &out.decode_ms_per_token}) {
    for (double& x : *v) x *= factor;
  }
  for (auto& row : out.decode_batch_ms_at_zero) {
    for (double& x : row) x *= factor;
  }
  return out;
}

}  // namespace adaptlink::partition

// The testbed's device emulation (`adaptlink-run testbed`, and the profiles `adaptlink-run profile --scenario`
// writes for it).
//
// The testbed runs every device of a scenario as a local worker process on one machine. It does not model the
// devices' rooflines: it emulates each device by ONE factor applied to times measured on this machine. Every
// stage execution takes (its measured time here) x testbed_slowdown(scenario, device); the extra time is idle
// waiting, so emulated slow devices do not steal CPU from the others. The fastest device of the scenario (largest
// tflops) runs at this machine's speed (factor 1); a device with a third of its TFLOP/s takes 3x as long. Memory
// bandwidth, memory size and dtype differences between the devices are not emulated beyond that ratio (the
// partitioner still checks memory against the scenario's mem_gb). Links are shaped separately (latency +
// bytes / bandwidth in the sender).
#pragma once

#include "adaptlink/partition/cost_model.hpp"
#include "adaptlink/partition/scenario.hpp"

namespace adaptlink::partition {

// (largest tflops among the scenario's devices) / (tflops of `device`): >= 1, and 1 for the fastest device.
// Every device counts, standby ones included. `device` must be a valid index (checked).
double testbed_slowdown(const Scenario& scenario, int device);

// `times` with every entry multiplied by `factor` (> 0, checked): what the testbed emulates for a device whose
// slowdown is `factor` when `times` were measured on this machine.
NodeTimes scaled(const NodeTimes& times, double factor);

}  // namespace adaptlink::partition

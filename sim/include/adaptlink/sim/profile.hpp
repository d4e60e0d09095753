// Profile files: measured per-node times that replace the roofline for some devices (the calibration hook,
// `adaptlink-sim run|compare --profile FILE`). JSON, one device (or device kind) per object:
//
//   {"device": "agx",                       // a scenario device name ...
//    "kind": "jetson-agx-orin-64gb",        // ... or a catalogue kind: every device of that kind (one of the two)
//    "nodes": [{"name": "vision.embed", "prefill_ms": 1.9, "decode_ms_at_zero": 0, "decode_ms_per_token": 0},
//              {"name": "decoder.layer.0", "prefill_ms": 7.2, "decode_ms_at_zero": 1.1,
//               "decode_ms_per_token": 0.00012}, ...]}
//
// or {"profiles": [ {...}, {...} ]} for several. Every node of the model graph must appear once, by the name
// the layer DAG gives it (see `adaptlink-sim plan --format json`, "nodes"). prefill_ms is the node's time for
// the scenario's request shape; a decode step with p cached tokens takes decode_ms_at_zero +
// decode_ms_per_token * p (partition::NodeTimes).
#pragma once

#include <filesystem>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "adaptlink/error.hpp"
#include "adaptlink/partition/cost_model.hpp"

namespace adaptlink::sim {

struct DeviceProfile {
  std::vector<int> devices;  // scenario device indices it applies to
  partition::NodeTimes times;
};

Expected<std::vector<DeviceProfile>> parse_profile(const nlohmann::json& json, const partition::CostModel& cost,
                                                   const std::string& source);
Expected<std::vector<DeviceProfile>> load_profile(const std::filesystem::path& path,
                                                  const partition::CostModel& cost);
// Loads the file and calls cost.set_profile for each device it names.
Status apply_profile(const std::filesystem::path& path, partition::CostModel& cost);

}  // namespace adaptlink::sim

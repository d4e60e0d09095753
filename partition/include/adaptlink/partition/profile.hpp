// Profile files: measured per-node times that replace the roofline for some devices (the calibration hook:
// `adaptlink-sim plan|run|compare --profile FILE`, written by `adaptlink-run profile`). JSON, one device (or
// device kind) per object:
//
//   {"device": "agx",                       // a scenario device name ...
//    "kind": "jetson-agx-orin-64gb",        // ... or a catalogue kind: every device of that kind (one of the two)
//    "comment": "...",                      // optional, free text
//    "request_shape": {"images": 1, "prompt_tokens": 64, "output_tokens": 128},  // optional, see below
//    "nodes": [{"name": "vision.embed", "prefill_ms": 1.9, "decode_ms_at_zero": 0, "decode_ms_per_token": 0},
//              {"name": "decoder.layer.0", "prefill_ms": 7.2, "decode_ms_at_zero": 1.1,
//               "decode_ms_per_token": 0.00012}, ...]}
//
// or {"profiles": [ {...}, {...} ], "comment": ..., "request_shape": ...} for several. Every node of the model
// graph must appear once, by the name the layer DAG gives it (see `adaptlink-sim plan --format json`, "nodes").
// prefill_ms is the node's time for the scenario's request shape; a decode step with p cached tokens takes
// decode_ms_at_zero + decode_ms_per_token * p (NodeTimes). When "request_shape" is given (at the top or in an
// entry), its images and prompt_tokens must equal the scenario's workload: prefill times measured for another
// shape would be silently wrong. output_tokens only says which cache lengths the decode fit covered.
//
// Batched decode (optional, written by `adaptlink-run profile`): an entry's "batch_sizes": [2, 4, 8, 16] and, per
// node that decodes, "decode_batch_ms_at_zero": [one time per size]: a batch of that many decode steps at an empty
// cache (NodeTimes::batch_at_zero interpolates; each member adds its cached tokens x decode_ms_per_token). A profile
// without them still loads: its batches scale the batch-1 time by the roofline's batch factor.
//
// profile_to_json writes this format and parse_profile reads it: one definition for both sides.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "adaptlink/error.hpp"
#include "adaptlink/models/graph.hpp"
#include "adaptlink/partition/cost_model.hpp"

namespace adaptlink::partition {

// ---- reading ---------------------------------------------------------------------------------------------

struct DeviceProfile {
  std::vector<int> devices;  // scenario device indices it applies to
  NodeTimes times;
};

Expected<std::vector<DeviceProfile>> parse_profile(const nlohmann::json& json, const CostModel& cost,
                                                   const std::string& source);
Expected<std::vector<DeviceProfile>> load_profile(const std::filesystem::path& path, const CostModel& cost);
// Loads the file and calls cost.set_profile for each device it names.
Status apply_profile(const std::filesystem::path& path, CostModel& cost);
// apply_profile for each file in order (a later file overrides an earlier one for the devices it names): what
// `--profile FILE` (repeatable) does in every command.
Status apply_profiles(const std::vector<std::string>& files, CostModel& cost);

// ---- writing ---------------------------------------------------------------------------------------------

struct ProfileEntry {
  std::string device;  // a scenario device name, or
  std::string kind;    // a catalogue kind (exactly one of the two is non-empty)
  NodeTimes times;     // indexed like the graph's nodes
};

struct ProfileMeta {
  std::string comment;                         // written as "comment" when non-empty
  std::optional<models::RequestShape> shape;   // written as "request_shape" when set
};

// One entry: the single-object form; several: {"profiles": [...]} with the metadata at the top. Node names come
// from `graph`; every vector of every entry must have graph.size() elements (checked).
nlohmann::json profile_to_json(const models::LayerGraph& graph, const std::vector<ProfileEntry>& entries,
                               const ProfileMeta& meta = {});

}  // namespace adaptlink::partition

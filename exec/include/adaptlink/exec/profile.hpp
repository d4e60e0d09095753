// Per-node profiling on this machine (`adaptlink-run profile`): the measured times that calibrate the planner and
// the simulator (`adaptlink-sim plan|run|compare --profile FILE`, format in partition/profile.hpp).
//
// Every node of the layer DAG is loaded as its own Stage (Stage::load(checkpoint, graph, i, i, ...)), one at a
// time (peak memory: one node's weights), and run on a real input: the previous node's output, starting from
// random pixels [images, 3, H, W] and random token ids (prompt tokens + the images' image-token slots). Per node:
//   * prefill_ms: one prefill of the request shape (vision nodes over all images; text nodes over prompt + image
//     tokens; the head on the last token). One warm-up run, then the median of `repeats`.
//   * decode: one-token steps. Decoder layers are timed at cache lengths 0, L/2 and L (L = prompt + image tokens
//     + output tokens; the cache is filled by a prefill of that many tokens first), one warm-up step then
//     `repeats` steps (the k-th sees k more cached tokens, which the fit accounts for); the medians are fitted by
//     least squares to decode_ms_at_zero + decode_ms_per_token * cached (both clamped to >= 0). text_embed and
//     the head do not read the cache: timed at length 0 only, per-token slope 0. Vision nodes do not decode (0).
//   * decode batches (batch_sizes, default 2, 4, 8, 16): b requests with one cached token each run one decode step
//     together (Stage::forward_batch), warm-up then the median of `repeats`, less the members' cache growth
//     (decode_ms_per_token x their cached tokens): decode_batch_ms_at_zero, the profile's batch dimension.
// Timings are wall-clock around Stage::forward on the CPU (synchronous). Before every run the CPU caches are
// flushed (4x the L3 size is written): in a pipeline a stage streams through all its layers, so a layer's weights
// are never as cache-hot as back-to-back repeats of one node would make them.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "adaptlink/error.hpp"
#include "adaptlink/exec/model.hpp"
#include "adaptlink/models/graph.hpp"
#include "adaptlink/partition/cost_model.hpp"
#include "adaptlink/partition/scenario.hpp"

namespace adaptlink::exec {

struct NodeProfile {
  std::string name;
  double prefill_ms = 0;                                // median of the repeats
  std::vector<std::pair<double, double>> decode_samples;  // (cached tokens, median step ms) that were fitted
  double decode_ms_at_zero = 0;
  double decode_ms_per_token = 0;
  std::vector<double> decode_batch_ms_at_zero;  // per MeasuredProfile::batch_sizes (0 for nodes that do not decode)
};

struct MeasuredProfile {
  models::LayerGraph graph;  // the checkpoint's layer DAG (node names)
  models::RequestShape shape;
  int repeats = 0;
  int threads = 0;            // at::get_num_threads() while measuring
  std::string dtype;          // "fp32" | "bf16"
  std::filesystem::path model_dir;
  std::vector<NodeProfile> nodes;  // one per graph node, in graph order
  std::vector<int> batch_sizes;    // the decode batches measured (ascending, > 1; empty: none)

  [[nodiscard]] partition::NodeTimes times() const;
};

struct ProfileOptions {
  models::RequestShape shape;  // images, prompt_tokens, output_tokens (decode fit covers the full context)
  int repeats = 3;             // >= 1
  std::vector<int> batch_sizes = {2, 4, 8, 16};  // decode batches to measure (ascending, > 1; empty: none)
  ExecOptions exec;            // CPU only
  // Called after each node with (its result, index, node count): progress lines.
  std::function<void(const NodeProfile&, int, int)> progress;
};

Expected<MeasuredProfile> measure_profile(const std::filesystem::path& model_dir, const ProfileOptions& options);

// Least-squares line through (cached tokens, ms) samples: {at_zero, per_token}, both clamped to >= 0 (a negative
// slope becomes 0 with the mean as intercept; a negative intercept becomes 0 with the slope through the origin).
std::pair<double, double> fit_decode(const std::vector<std::pair<double, double>>& samples);

// Errors unless the scenario's model graph is the checkpoint's (same node names). A profile names the checkpoint's
// nodes: it applies where the checkpoint's model is planned, as adaptlink-run serve|testbed do (they plan the
// checkpoint's config on the scenario's devices), or in a scenario whose [model] config is the checkpoint's.
Status check_scenario_model(const models::LayerGraph& checkpoint_graph, const std::filesystem::path& model_dir,
                            const partition::Scenario& scenario);

// The profile file for a scenario that the testbed emulates: one entry per scenario device, the measured times
// x partition::testbed_slowdown(scenario, device) (which only depends on the devices' tflops), with a "comment"
// saying so.
nlohmann::json testbed_profile_json(const MeasuredProfile& profile, const partition::Scenario& scenario);
// The profile file for one real device measured here: one entry named `device`, unscaled.
nlohmann::json device_profile_json(const MeasuredProfile& profile, const std::string& device);

}  // namespace adaptlink::exec

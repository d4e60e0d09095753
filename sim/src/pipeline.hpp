// What the SimGrid engine simulates, flattened out of the cost model and the plan: per stage its device and
// compute times (prefill, and one decode step per output token with the growing context), the transfers
// after it, the links and routes. SimGrid-free; the engine (engine.cpp) only reads this.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/partition/cost_model.hpp"
#include "adaptlink/partition/plan.hpp"
#include "adaptlink/runtime/report.hpp"
#include "adaptlink/sim/simulator.hpp"

namespace adaptlink::sim::detail {

struct LinkSpec {
  std::string name;
  double bandwidth_bps = 0;  // bytes per second
  double latency_s = 0;
};

// One hop of a route: the link it occupies and the network endpoints it goes between
// (0..devices-1 are devices, `devices` is the access point).
struct HopSpec {
  int link = -1;
  int from = -1;
  int to = -1;
};

struct TransferSpec {
  double bytes = 0;
  int route = -1;  // index into PipelineSpec::routes; -1: nothing to send (same device or 0 bytes)
};

struct StageSpec {
  int device = -1;
  int first_node = 0;  // the stage's node range (inclusive)
  int last_node = 0;
  double prefill_s = 0;
  std::vector<double> prefill_node_s;  // per node of the range (decode-first: a prefill yields between nodes)
  std::vector<double> decode_s;  // [output_tokens]: step k runs with prefill_tokens + k cached tokens
  TransferSpec prefill_out;      // to the next stage (none for the last)
  TransferSpec decode_out;       // per decode step, to the next stage (stages from the text stage on)
};

enum class ArrivalKind { closed, poisson };

// One `[[faults]]` entry, resolved. A dropout carries its recovery, decided here from the plan: every stage on
// the lost device moves to a backup holder that preloaded it, else (redeploy) to the least-loaded surviving
// device with room for it, which first loads the stage's weights over its link.
enum class FaultKindSpec { dropout, rejoin, slowdown, link };
struct FaultSpec {
  double at_s = 0;
  int device = -1;
  FaultKindSpec kind = FaultKindSpec::dropout;
  std::string kind_name;
  double factor = 1;          // slowdown: multiplies the device's compute times from at_s on
  double bandwidth_bps = 0;   // link: new bandwidth (bytes/s) of the device's links from at_s on
  // dropout
  double detect_s = 0;        // dropout: heartbeat timeout; rejoin: heartbeat interval (its first heartbeat)
  double load_s = 0;          // redeploy: weights over the new device's link (0 with a backup)
  bool from_backup = false;
  bool replanned = false;  // dropout: re-planned (no live backup); the switch (switch_s) moves the stages
  std::vector<int> moved;                   // stage indices that move
  std::vector<double> replay_s_per_token;   // per moved stage: prefill of its text layers, per token, new device
  std::vector<StageSpec> stages_after;      // the whole pipeline after the move (dropout) or the switch (rejoin)
  TransferSpec back_edge_after;
  int text_stage_after = 0;
  // rejoin: the rebalance. The planner re-plans on the devices that are up; each device loads the weights it
  // lacks over its link (load_s: the slowest), and at switch_s (detection + load_s) the pipeline drains at a
  // safe point and switches; requests rebuild the KV caches of the text layers that changed device (per new
  // stage: from replay_from_node on, replay_s_per_token_after per token; -1: none). rebalance is false when
  // nothing moves or the planned rebalance was superseded.
  bool rebalance = false;
  bool stages_changed = true;  // false: the stages stay, only the backups are preloaded again (by switch_s)
  double switch_s = 0;
  std::vector<double> replay_s_per_token_after;
  std::vector<int> replay_from_node;
};

// What the fault actor does, in order: apply fault `fault` at at_s, or switch to fault `fault`'s rebalanced
// placement (switch_plan) at its switch_s. Later events wait for earlier ones to be handled.
struct FaultEvent {
  int fault = 0;
  bool switch_plan = false;
  double at_s = 0;
};

struct PipelineSpec {
  std::string scenario;
  std::string planner;
  std::vector<std::string> device_names;
  std::vector<double> device_speed_flops;  // host speeds (informational: tasks run for their exact time)
  std::vector<LinkSpec> links;
  std::vector<std::vector<HopSpec>> routes;
  bool has_access_point = false;
  std::vector<StageSpec> stages;
  int text_stage = 0;     // stage holding text_embed: where every decode step starts
  TransferSpec back_edge;  // the sampled token, last stage -> text stage
  int output_tokens = 0;

  ArrivalKind arrival = ArrivalKind::closed;
  long long requests = 0;
  int in_flight = 1;
  double ramp_gap_s = 0;  // closed loop: the first in_flight requests are admitted this far apart
  double rate_per_s = 1;
  std::uint64_t seed = 1;

  int prefill_tokens = 0;  // tokens of a request's prefill (prompt + image features)
  bool decode_first = true;  // planner.schedule: decode steps first, prefills yield between nodes (else FIFO)
  std::vector<FaultSpec> faults;  // in at_s order
  std::vector<FaultEvent> events;
};

// The running placement while faults are resolved: stages (node ranges and devices) and the backups held.
struct Placement {
  std::vector<partition::Stage> stages;
  std::vector<partition::Backup> backups;
  int text_stage = 0;
};
// Re-plans of one cost model and plan, by (backups, devices up); nullopt: the devices up cannot hold the model.
// Sweeps resolve many fault lists on the same plan and keep one.
using ReplanCache = std::map<std::pair<bool, std::vector<bool>>, std::optional<Placement>>;

Expected<PipelineSpec> build_pipeline(const partition::CostModel& cost, const partition::Plan& plan,
                                      long long max_requests, std::uint64_t seed, bool stagger_start);
// Resolves faults (the scenario's [[faults]] or a sweep's drawn ones) and their recovery (see FaultSpec). An
// error names what is missing (a device that no stage can move to, an unknown device).
Expected<Ok> add_faults(const partition::CostModel& cost, const partition::Plan& plan, PipelineSpec& spec,
                        const std::vector<partition::Fault>& faults, double detect_timeout_s,
                        double heartbeat_interval_s, ReplanCache* cache = nullptr);

// Trace settings and what the engine reports back.
struct EngineOptions {
  std::string network_model = "CM02";
  std::string trace_path;  // empty: no trace
  double trace_from_s = 0;
  double trace_until_s = 0;
  long long trace_max_events = 0;
  // Called (in the engine's process) when the number of completed requests changes by ~1 %.
  std::function<void(long long completed, long long total, double sim_time_s)> progress;
};

struct EngineOutcome {
  long long completed = 0;
  double makespan_s = 0;
  std::vector<double> latencies_ms;         // per completed request
  std::vector<double> completions_s;        // per completed request, its completion time (same order)
  double window_start_s = 0;                // steady-state window (see runtime::steady_window)
  double window_end_s = 0;
  long long window_completions = 0;         // completions inside the window
  double first_arrival_s = 0;               // admission of the first and of the last request
  double last_arrival_s = 0;
  std::vector<double> window_busy_s;        // per device, busy time inside the window
  long long stage_executions = 0;
  long long transfers = 0;
  long long trace_events = 0;
  std::vector<runtime::FaultRecord> faults;
};

// Runs SimGrid. Creates an engine: call at most once per process.
Expected<EngineOutcome> run_engine(const PipelineSpec& spec, const EngineOptions& options);

// Runs a pipeline built (and its faults added) by the caller, as run_simulation does (simulator.cpp).
Expected<SimResult> run_spec(const PipelineSpec& spec, const SimOptions& options);

}  // namespace adaptlink::sim::detail

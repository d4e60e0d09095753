// What the SimGrid engine simulates, flattened out of the cost model and a placement: per stage its device and
// compute times (prefill, and one decode step per output token with the growing context), the transfers after
// it, the links and routes. SimGrid-free; the engine (engine.cpp) reads this and, when faults change the
// placement, flattens the new one the same way (flatten()).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/partition/cost_model.hpp"
#include "adaptlink/partition/plan.hpp"
#include "adaptlink/runtime/placement.hpp"
#include "adaptlink/runtime/recovery.hpp"
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

// A placement flattened: its stages, where decode steps start, and the sampled token's way back.
struct Flat {
  std::vector<StageSpec> stages;
  int text_stage = 0;      // stage holding text_embed: where every decode step starts
  TransferSpec back_edge;  // the sampled token, last stage -> text stage
};

enum class ArrivalKind { closed, poisson };

// The faults to inject and what the fault actor needs to recover from them (runtime::RecoveryPolicy at fault time).
struct FaultSetup {
  const partition::CostModel* cost = nullptr;
  std::vector<partition::Fault> faults;  // in at_s order
  std::string planner;                   // re-plans use the plan's planner and objective
  partition::Objective objective = partition::Objective::throughput;
  bool with_backups = false;             // the running plan had backups: re-plans place them too
  partition::RecoverySettings heartbeat;
  runtime::ReplanCache* cache = nullptr;  // not owned (sweeps share one)
};

struct PipelineSpec {
  std::string scenario;
  std::string planner;
  std::vector<std::string> device_names;
  std::vector<double> device_speed_flops;  // host speeds (informational: tasks run for their exact time)
  std::vector<LinkSpec> links;
  std::vector<std::vector<HopSpec>> routes;
  std::map<std::pair<int, int>, int> route_index;  // (from, to) device -> routes[]
  bool has_access_point = false;
  runtime::Placement placement;  // the plan's
  Flat flat;                     // the plan's, flattened
  int output_tokens = 0;

  ArrivalKind arrival = ArrivalKind::closed;
  long long requests = 0;
  int in_flight = 1;
  double ramp_gap_s = 0;  // closed loop: the first in_flight requests are admitted this far apart
  double rate_per_s = 1;
  std::uint64_t seed = 1;

  int prefill_tokens = 0;  // tokens of a request's prefill (prompt + image features)
  partition::Schedule schedule = partition::Schedule::decode_first;
  int max_batch = 1;                           // decode steps of one stage run as one forward (planner.max_batch)
  const partition::CostModel* cost = nullptr;  // a batch's compute time (CostModel::decode_batch_ms); not owned
  std::optional<FaultSetup> faults;  // none: a fault-free run
};

// The plan's pipeline; with `faults`, routes between every pair of devices are registered too (a recovery may
// place stages anywhere). An error names what is wrong (a plan that does not cover the DAG, a link without
// bandwidth, a route the simulator cannot model).
Expected<PipelineSpec> build_pipeline(const partition::CostModel& cost, const partition::Plan& plan,
                                      long long max_requests, std::uint64_t seed, bool stagger_start,
                                      std::optional<FaultSetup> faults);
// A placement's stages as the engine runs them (their routes must be registered in `spec`).
Expected<Flat> flatten(const partition::CostModel& cost, const PipelineSpec& spec, const runtime::Placement& placement);

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
  runtime::RunReport report;
  double makespan_s = 0;
  std::vector<double> latencies_ms;   // per completed request
  std::vector<double> ttft_ms, tpot_ms;
  std::vector<double> completions_s;  // per completed request, its completion time (same order)
  double first_arrival_s = 0;         // admission of the first and of the last request
  double last_arrival_s = 0;
  long long stage_executions = 0;
  long long transfers = 0;
  long long trace_events = 0;
};

// Runs SimGrid. Creates an engine: call at most once per process.
Expected<EngineOutcome> run_engine(const PipelineSpec& spec, const EngineOptions& options);

// Runs a pipeline built by the caller, as run_simulation does (simulator.cpp).
Expected<SimResult> run_spec(const PipelineSpec& spec, const SimOptions& options);

}  // namespace adaptlink::sim::detail

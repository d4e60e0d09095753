// The SimGrid back-end: simulates a plan on the scenario's devices and network and measures what
// partition/plan.hpp predicts. This header does not include SimGrid (only sim/src/ does).
//
// Model (the semantics of partition/plan.hpp, played out request by request):
//   * one SimGrid host per device; each device serves the stage(s) placed on it one task at a time, in the order
//     runtime::StageQueue gives under the scenario's planner.schedule (decode-first by default, or fifo); a task
//     computes for exactly the cost model's time (prefill_ms of the stage's range, node by node under
//     decode-first, or decode_step_ms with the request's current context);
//   * one SimGrid link per cost-model link (star: one access link per device, shared by both directions;
//     mesh or `[[links]]` pairs: one direct link); a transfer walks the cost model's route hop by hop,
//     store and forward (a star transfer is two communications, device -> AP and AP -> device);
//   * a request: prefill through every stage, then `output_tokens` decode steps through the stages from
//     the one holding text_embed to the last; after the prefill and after each decode step but the last,
//     the 4-byte token goes from the last stage back to the text_embed stage; activations cross each cut
//     (prefill_out_bytes once, decode_out_bytes per step; 0-byte transfers are skipped);
//   * arrivals: closed loop (workload.in_flight requests in the system, a new one admitted when one
//     completes) or Poisson (rate_per_s, std::mt19937_64 seeded with SimOptions::seed, exponential
//     gaps by inversion);
//   * network model CM02 with cross-traffic and the TCP window bound (TCP-gamma) off: a lone transfer
//     over a hop takes exactly latency + bytes / bandwidth, concurrent ones share a link max-min fairly.
//     Other SimGrid models (LV08, SMPI, IB, Constant) run with SimGrid's defaults for what-if studies.
//
// Replicated plans (plan.replicas, see partition/replicas.hpp): every replica is simulated on its own problem
// (partition::replica_problem: the other groups' devices standby, its share of the requests in flight and of
// the requests), one after the other, as independent one-pipeline runs (replicas share no device and no link,
// so running them apart is exact). The report merges them as partition::predict_replicated counts the
// prediction: throughput over the steady window of all completions merged with the summed in_flight, latency
// over every request, each device's utilisation from its replica's steady window. Faults are not simulated on
// replicated plans (an error when options.faults is set and faults are given); their trace is the replicas'
// traces merged into one file (the event budget is shared out among the replicas), and each replica always
// runs in a child process.
//
// Each simulation runs in a child process (SimGrid allows one engine per process), so simulate() may be
// called any number of times; the progress callback still runs in the caller's process.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/partition/cost_model.hpp"
#include "adaptlink/partition/plan.hpp"
#include "adaptlink/runtime/recovery.hpp"
#include "adaptlink/runtime/report.hpp"

namespace adaptlink::sim {

struct SimProgress {
  long long completed = 0;  // requests
  long long total = 0;
  double sim_time_s = 0;
};

struct SimOptions {
  std::uint64_t seed = 1;              // Poisson arrivals
  std::string network_model = "CM02";  // see network_models()
  long long max_requests = 0;          // > 0: overrides workload.requests
  // Closed loop: admit the first in_flight requests one bottleneck time W apart (true), the spacing that
  // completions have once the bottleneck is saturated, or all at t = 0 (false). Identical deterministic
  // requests started together stay in lockstep for ever (FIFO stages, no noise): each "generation" then
  // runs its prefills as a burst that the pipeline cannot overlap with decoding.
  bool stagger_start = true;
  std::function<void(const SimProgress&)> progress;  // called about every 1 % of the requests

  // Faults (the scenario's [[faults]], see sim/README.md): applied when `faults` is true (adaptlink-sim run and
  // compare set it; off by default so that library callers measure the fault-free plan). Recoveries are
  // runtime::RecoveryPolicy's, decided when a fault is detected. Devices answer heartbeats every
  // heartbeat_interval_s; a device is declared lost heartbeat_timeout_s after it drops out (detected_s = at_s +
  // timeout), and a device that rejoins is seen at its first heartbeat. Unset: the scenario's [recovery] values.
  bool faults = false;
  // When set (and `faults` is true), these faults are applied instead of the scenario's [[faults]] (sweeps).
  std::optional<std::vector<partition::Fault>> fault_list;
  std::optional<double> heartbeat_interval_s;
  std::optional<double> heartbeat_timeout_s;
  runtime::ReplanCache* replan_cache = nullptr;  // memoised re-plans (not owned; sweeps share one)

  // Chrome trace (Perfetto): written when trace_path is not empty. To keep big runs cheap, only slices
  // that start in [trace_from_s, trace_until_s] are written, at most trace_max_events of them.
  std::filesystem::path trace_path;
  double trace_from_s = 0;
  double trace_until_s = std::numeric_limits<double>::infinity();
  long long trace_max_events = 200000;

  // Run SimGrid in a child process (the default). false runs it in this process: possible once per
  // process only (benchmarks measuring memory, debugging).
  bool isolate = true;
};

// What the run cost (not part of the report, which stays deterministic).
struct SimStats {
  double wall_s = 0;              // SimGrid run, platform construction included
  double sim_time_s = 0;          // simulated makespan
  long long stage_executions = 0;  // compute tasks run
  long long transfers = 0;         // link hops simulated
  long long trace_events = 0;      // slices written to the trace
  long long peak_rss_kb = 0;       // of the process that ran SimGrid
  double offered_rps = 0;          // Poisson: the realised arrival rate (N - 1) / (a_N - a_1); closed loop: 0
};

struct SimResult {
  runtime::RunReport report;
  SimStats stats;
  // Raw per-request numbers behind the report, in completion order (replicated plans: replica by replica).
  std::vector<double> latencies_ms;
  std::vector<double> ttft_ms, tpot_ms;  // per completed request: time to first token, time per output token
  std::vector<double> completions_s;  // simulated completion times
};

// SimGrid network models accepted by SimOptions::network_model.
std::vector<std::string> network_models();

Expected<SimResult> run_simulation(const partition::CostModel& cost, const partition::Plan& plan,
                                   const SimOptions& options = {});
// The heartbeat settings a simulation uses: the scenario's, with the options' overrides; an error when the timeout
// is shorter than the interval or either is not positive.
Expected<partition::RecoverySettings> heartbeat_settings(const partition::Scenario& scenario, const SimOptions& options);
Expected<runtime::RunReport> simulate(const partition::CostModel& cost, const partition::Plan& plan,
                                        const SimOptions& options = {});

}  // namespace adaptlink::sim

// The RunReport of DESIGN.md: what one run of a plan measured, written as report.json by both back-ends
// (sim/ and exec/). Torch-free and SimGrid-free so that every tool can read and write it.
//
//   {"scenario", "backend": "sim"|"exec", "planner", "requests_completed", "requests_lost",
//    ["requests_failed",] "throughput_rps", "tokens_per_s", "latency_ms": {"p50","p95","p99"},
//    ["ttft_ms": {"p50","p95","p99"}, "tpot_ms": {"p50","p95","p99"},]
//    "device_utilization": {name: 0..1}, "bubble_fraction",
//    "faults": [{"at_s","device","kind","detected_s","recovered_s","recovery_ms","recomputed_tokens"}]}
//
// Each faults[] entry of a dropout or a rejoin also says what the recovery policy decided (runtime/recovery.hpp;
// the same decisions in every back-end): "cause" (dropout: process-exit | heartbeat-timeout | send-failure),
// "action" (none | switch-over | redeploy | re-plan | rebalance), "moves" ([{"stage", "from", "to", "backup"}]:
// the stages that changed device, switch-over and redeploy) and "placement" ([{"device", "first_layer",
// "last_layer"}]: the stages after a re-plan or a rebalance that moved them).
//
// "requests_failed" (exec reports, and any report where it is not 0): requests that ended with an error record
// instead of tokens (refused at admission, or refused or failed by a worker); they are neither completed nor lost.
//
// Definitions (both back-ends use them):
//   throughput_rps      completed requests per second in steady state (see steady_window())
//   tokens_per_s        throughput_rps * output_tokens per request
//   latency_ms          percentiles (linear interpolation between closest ranks) over every completed request,
//                       admission to last token
//   ttft_ms             time to first token: admission to the first generated token (the prefill's), percentiles
//                       over every completed request whose back-end records it (written when there are any)
//   tpot_ms             time per output token after the first: (last token - first token) / decode steps after
//                       the first token, over the completed requests that decoded
//   device_utilization  busy time / length of the steady-state window, per scenario device (0 when idle)
//   bubble_fraction     1 - mean utilisation over the devices that held a stage at some time during the run
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "adaptlink/error.hpp"
#include "adaptlink/partition/scenario.hpp"
#include "adaptlink/runtime/faults.hpp"

namespace adaptlink::runtime {

// A stage that changed device in a recovery.
struct FaultMove {
  int stage = 0;
  std::string from;  // device names
  std::string to;
  bool backup = false;  // `to` had preloaded it
  bool operator==(const FaultMove&) const = default;
};
// A stage of a placement, by device name and DAG node range.
struct PlacedStage {
  std::string device;
  int first_layer = 0;
  int last_layer = 0;
  bool operator==(const PlacedStage&) const = default;
};

struct FaultRecord {
  double at_s = 0;
  std::string device;
  partition::FaultKind kind = partition::FaultKind::dropout;
  std::optional<double> detected_s;    // unset (null) when not detected / not applicable
  std::optional<double> recovered_s;
  std::optional<double> recovery_ms;
  long long recomputed_tokens = 0;
  // Dropouts and rejoins: the recovery policy's decision (unset for slowdown and link faults, and for a fault
  // that never took effect).
  std::optional<LossCause> cause;       // dropout
  std::optional<RecoveryAction> action;
  std::vector<FaultMove> moves;          // switch_over, redeploy
  std::vector<PlacedStage> placement;    // replan, rebalance that moved stages
};

struct LatencySummary {
  double p50 = 0;
  double p95 = 0;
  double p99 = 0;
};

struct RunReport {
  std::string scenario;
  std::string backend;  // "sim" | "exec"
  std::string planner;
  long long requests_completed = 0;
  long long requests_lost = 0;
  long long requests_failed = 0;  // ended with an error record (exec)
  double throughput_rps = 0;
  double tokens_per_s = 0;
  LatencySummary latency_ms;
  std::optional<LatencySummary> ttft_ms;  // set when the back-end recorded first tokens
  std::optional<LatencySummary> tpot_ms;
  std::vector<std::pair<std::string, double>> device_utilization;  // scenario order
  double bubble_fraction = 0;
  std::vector<FaultRecord> faults;

  [[nodiscard]] double mean_utilization() const;  // over devices with utilisation > 0
};

nlohmann::json to_json(const RunReport& report);
// Reads a report back (e.g. bench/plot.py's inputs, comparisons); names the first missing or mistyped key.
Expected<RunReport> report_from_json(const nlohmann::json& json, std::string_view source = "report.json");

// Percentile q in [0, 1] of `values` (sorted in place), linear interpolation between closest ranks
// (numpy's default). 0 for an empty vector.
double percentile(std::vector<double>& values, double q);
LatencySummary summarize_latencies(std::vector<double> latencies_ms);

// Steady-state window for throughput and utilisation, as indices into the sorted completion times
// (1-based: completion k happens at c_k).
//   closed loop, F requests in flight, N requests: [c_F, c_(N-F)] -- after every first-batch request has
//     completed once and before the drain begins (request N is admitted at c_(N-F));
//     throughput = (N - 2F) / (c_(N-F) - c_F). When that window would hold fewer than max(F, 2)
//     completions, the whole run: first = 0, last = N, throughput = N / c_N.
//   Poisson: first = 0, last = N, where "0" means the first arrival a_1: throughput = N / (c_N - a_1).
//     (Counting completions between two instants fails when the load exceeds the capacity: with FIFO
//     stages every backlogged request advances one step per round and they all finish together.)
struct SteadyWindow {
  long long first = 0;  // 0: time 0
  long long last = 0;
};
SteadyWindow steady_window(long long requests, long long in_flight, bool closed_loop);
// Closed-loop throughput (completions per unit of the times given) over the steady window of a set of
// completion times (any order; "time 0" is the common start), as one closed loop of `in_flight` requests would
// count it. Replicated plans: every replica's completions merged, in_flight the sum of theirs.
double steady_throughput(std::vector<double> completion_times, long long in_flight);

}  // namespace adaptlink::runtime

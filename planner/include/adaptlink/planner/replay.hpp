// The replay predictor: a deterministic event-driven pass of a closed-loop workload through a plan's stages,
// the back-end the planners rank their candidates with (see replay.cpp for what it plays out). Its stages
// schedule their tasks by runtime::StageQueue, as the simulator's devices and the workers do.
#pragma once

#include <vector>

#include "adaptlink/partition/plan.hpp"

namespace adaptlink::partition {

struct ReplayResult {
  double throughput_rps = 0;  // over the steady window
  double mean_latency_ms = 0;
  bool cut = false;  // ReplayOptions::beat_rps: stopped early, the plan cannot beat it (throughput_rps = 0)
  std::vector<double> completions_ms;  // every request's completion time, in completion order
  // The same requests' time to first token (admission to the end of its prefill on the last stage) and time per
  // output token after the first ((completion - first token) / its decode steps, as runtime/report.hpp counts it).
  std::vector<double> ttft_ms, tpot_ms;
  // ReplayOptions::busy: per scenario device, its busy time (ms) inside the steady window (runtime/report.hpp);
  // empty otherwise.
  std::vector<double> busy_ms;
  // Completions the steady-state skip played as repeated periods instead of event by event (ReplayOptions).
  long long skipped = 0;
};
// What a replay may skip (ranking) or add (conformance checks) without changing its throughput.
struct ReplayOptions {
  bool stop_at_window_end = false;  // stop at the window's last completion (mean latency then covers fewer)
  double beat_rps = 0;              // > 0: stop as soon as the steady window cannot end above this throughput
  bool busy = false;                // record each device's busy time in the steady window (ReplayResult::busy_ms)
  // Where the clock starts (ms). The pipeline is time-invariant, so results move only by rounding: a probe of how
  // much a plan's replay amplifies rounding differences (tests compare two clocks' results).
  double time_origin_ms = 0;
  // Once the pipeline's state after a completion repeats an earlier one's (shifted in time and in requests), play the
  // repeats at once (replay.cpp). Not with `busy`.
  bool skip_steady = true;
};
// Deterministic event-driven replay of `requests` closed-loop requests through the stages, the first
// in_flight admitted `stagger_ms` apart: what the bound leaves out when prefills and decode steps share stages.
ReplayResult replay(const CostModel& cost, const std::vector<Stage>& stages, long long requests,
                    double stagger_ms, const ReplayOptions& options = {});

// How many requests predict() replays: the scenario's, at most kReplayRequests or 4 x in_flight (enough for a
// steady window well past the warm-up, few enough to rank thousands of candidates). Planners rank with the same replay they report.
inline constexpr long long kReplayRequests = 200;
long long replay_requests(const Workload& workload);

// evaluate(), then for closed loops the replayed throughput and latency of the scenario's requests
// (at most max_requests of them); bound_rps keeps the bound. Planners report predict(cost, stages).
Prediction predict(const CostModel& cost, std::vector<Stage>& stages, long long max_requests = kReplayRequests);
// The same, handing the replay itself (its completion times) to `replayed` when it ran (a replicated plan's
// prediction merges its replicas' completions, replicas.cpp).
Prediction predict(const CostModel& cost, std::vector<Stage>& stages, long long max_requests, ReplayResult* replayed);

}  // namespace adaptlink::partition

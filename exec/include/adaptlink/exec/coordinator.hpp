// The coordinator of a multi-process pipeline (`adaptlink-run serve | testbed | generate --stages K`): hands
// out stages to workers (hello), streams requests through them with up to `in_flight` at once, collects the
// sampled tokens, watches the workers (heartbeats, and process exits when it started them) and recovers from a
// lost worker: a preloaded backup takes over its stage, or the stage is redeployed on a survivor; requests in
// flight are rebuilt on the replacement from the upstream stages' logs and their step re-issued, so every
// request completes with the output of a fault-free run. A worker that comes back is handed a new plan: the
// weights it and the others lack are preloaded while the old placement serves, admission pauses until the
// requests in flight are done (the safe point), and the new placement takes over. A lost worker that was only
// hung (SIGSTOP, found by the heartbeat timeout) and goes on is taken back the same way: its hello drops its old
// stages, logs, queued steps and unsent results, and carries the epoch the recovery raised, so that steps of the
// old placement still reaching it are dropped too.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "adaptlink/error.hpp"
#include "adaptlink/runtime/report.hpp"
#include "adaptlink/runtime/run_recorder.hpp"
#include "adaptlink/partition/scenario.hpp"

namespace adaptlink::exec {

// Link emulation applied by the sending worker (testbed): latency + bytes x ms_per_byte, FIFO per link.
struct LinkShape {
  double latency_ms = 0;
  double ms_per_byte = 0;
};

struct WorkerSpec {
  std::string name;      // scenario device name
  std::string endpoint;  // where its worker listens
  double slowdown = 1;   // testbed: compute time multiplier (1: no emulation)
  std::vector<std::pair<int, int>> backups;  // node ranges it preloads as backups
};

struct StageSpec {
  int first = 0;
  int last = 0;
  int worker = 0;  // index into PipelineSpec::workers
};

// A placement of the stages on workers and the backups each worker preloads (re-planning).
struct Placement {
  std::vector<StageSpec> stages;
  std::vector<std::vector<std::pair<int, int>>> backups;  // per worker
};

struct PipelineSpec {
  std::vector<WorkerSpec> workers;
  std::vector<StageSpec> stages;  // in pipeline order, covering the DAG
  // Testbed link emulation between two workers' devices (and, for redeploys, the time to ship weights);
  // unset: no emulation.
  std::function<LinkShape(int from_worker, int to_worker)> link;
  std::function<double(int to_worker, int first, int last)> redeploy_ms;  // emulated weight transfer
  // Re-plans on the workers that are up (a rejoin rebalances); unset: a returning worker is only a spare.
  std::function<Expected<Placement>(const std::vector<bool>& up)> replan;
};

struct ExecRequest {
  std::string id;
  std::vector<int64_t> input_ids;
  at::Tensor pixel_values;  // [crops, 3, H, W] float, or undefined
  int max_new_tokens = 32;
};

struct ExecResult {
  std::string id;
  std::vector<int64_t> generated;
  double admitted_s = 0;  // since the run started
  double done_s = 0;
  double latency_ms = 0;
  at::Tensor prefill_logits;  // [tokens, vocab] when asked for
};

struct CoordinatorOptions {
  std::filesystem::path model;  // the coordinator's checkpoint (fingerprint, and the path workers fall back to)
  std::string dtype = "fp32";
  std::string exec_device = "cpu";
  std::string listen = "tcp://127.0.0.1:*";  // where the last stage returns tokens (must be reachable by workers)
  int in_flight = 4;
  std::vector<int64_t> eos_ids;
  bool keep_prefill_logits = false;
  // How each worker orders the steps waiting for its stages (the scenario's planner.schedule; the hello's
  // "schedule"): decode steps first, a prefill yielding to them between its nodes; or arrival order.
  partition::Schedule schedule = partition::Schedule::decode_first;
  double hello_timeout_s = 120;      // per worker, includes loading its weights
  double heartbeat_interval_s = 0.25;
  double heartbeat_timeout_s = 5;    // a worker silent this long is lost
  double step_timeout_s = 600;       // no progress at all for this long: give up
  bool recover = true;               // on a lost worker: fail over (else: error)
  // Called every loop turn with the seconds since the start: returns the names of workers known to be gone
  // (the testbed watches its child processes; a broken connection counts as lost at once).
  std::function<std::vector<std::string>(double now_s)> poll_lost;
  std::function<void(double now_s)> tick;  // e.g. the testbed injecting faults at their times
  // When a device's fault was injected (seconds since the start), if known: the fault record's at_s.
  std::function<std::optional<double>(const std::string& device)> fault_time;
  // Workers that are back (the testbed restarts a device's worker at its rejoin, or continues a stopped one):
  // name and (new) endpoint.
  std::function<std::vector<std::pair<std::string, std::string>>(double now_s)> poll_rejoined;
  // Devices whose emulated links changed since the last call (a testbed link fault; PipelineSpec::link gives the new
  // shapes): the workers that send over those links are told their new shapes.
  std::function<std::vector<std::string>(double now_s)> poll_relinked;
  std::function<void(size_t done, size_t total)> progress;
  // Called once every worker answered the hello, before the first admission (replicated serving: waits until
  // every replica's workers are ready, so that all replicas start together); an error ends the run.
  std::function<Status()> ready;
  // Checked every loop turn: true ends the run with an error (replicated serving: another replica failed).
  std::function<bool()> cancelled;
};

struct StageTiming {
  std::string device;
  std::string name;
  int64_t request = 0;
  double start_s = 0;
  double end_s = 0;
};

struct ExecRun {
  std::vector<ExecResult> results;  // in request order
  std::vector<StageTiming> events;  // stage executions, relative to the start
  std::vector<runtime::FaultRecord> faults;
  double wall_s = 0;
  int64_t start_wall_us = 0;  // time 0 (the first admission), microseconds since the Unix epoch
};

// Connects to the workers, sends them their stages, runs the requests. Errors name the worker (unreachable,
// refused the handshake, failed a step, lost without a way to recover) and never hang.
Expected<ExecRun> run_pipeline(const PipelineSpec& spec, const std::vector<ExecRequest>& requests,
                               const CoordinatorOptions& options);

// An exec run as runtime::RunRecorder accounts it: admissions and completions from the results, busy intervals
// (and the devices that held a stage) from the stage events, the fault records.
runtime::RunRecorder record_exec_run(const ExecRun& run, const std::vector<std::string>& device_names, int in_flight);
// report.json for an exec run (the RunReport schema of DESIGN.md): record_exec_run's report.
runtime::RunReport make_exec_report(const ExecRun& run, const std::string& scenario, const std::string& planner,
                                      const std::vector<std::string>& device_names, int in_flight);
// Independent runs that served at once (the replicas of a replicated plan) as one run: times from the earliest
// run's start (start_wall_us), results[indices[r][i]] = runs[r].results[i] (`requests` results in all), every
// run's events and faults; wall_s until the last run ended.
ExecRun merge_exec_runs(const std::vector<ExecRun>& runs, const std::vector<std::vector<size_t>>& indices,
                        size_t requests);
// Chrome trace of the stage executions, one row per device.
nlohmann::json make_exec_trace(const ExecRun& run, const std::vector<std::string>& device_names);

}  // namespace adaptlink::exec

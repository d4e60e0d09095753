// The coordinator of a multi-process pipeline (`adaptlink-run serve | testbed | generate --stages K`): hands
// out stages to workers (hello), streams requests through them with up to `in_flight` at once, collects the
// sampled tokens, watches the workers (heartbeats, failed sends, and what its Environment reports: the testbed's
// process exits and injected faults) and recovers from a lost worker by runtime::RecoveryPolicy's decision, the
// simulator's: a preloaded backup takes over its stage, or the planner re-plans on the workers up, or the stage is
// redeployed on a survivor with room; requests in flight are rebuilt on the replacement from the upstream stages'
// logs and their step re-issued, so every request completes with the output of a fault-free run. A worker that
// comes back is handed the policy's rebalance: the weights it and the others lack are preloaded while the old
// placement serves, admission pauses until the requests in flight are done (the safe point), and the new
// placement takes over. A lost worker that was only hung (SIGSTOP, found by the heartbeat timeout) and goes on is
// taken back the same way: its hello drops its old stages, logs, queued steps and unsent results, and carries the
// epoch the recovery raised, so that steps of the old placement still reaching it are dropped too.
//
// Security (transport.hpp): the coordinator reaches each worker as a CURVE client of that worker's public key and
// takes results only from its workers' keys; it holds every worker's lease for the run (its hello's lease, which
// is also its routing id) and releases them when the run ends, whether it succeeded or failed.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "adaptlink/error.hpp"
#include "adaptlink/exec/transport.hpp"
#include "adaptlink/exec/wire.hpp"
#include "adaptlink/partition/cost_model.hpp"
#include "adaptlink/partition/scenario.hpp"
#include "adaptlink/runtime/faults.hpp"
#include "adaptlink/runtime/placement.hpp"
#include "adaptlink/runtime/recovery.hpp"
#include "adaptlink/runtime/report.hpp"
#include "adaptlink/runtime/run_recorder.hpp"

namespace adaptlink::exec {

// Link emulation applied by the sending worker (testbed): latency + bytes x ms_per_byte, FIFO per destination.
using LinkShape = wire::LinkMeta;

struct WorkerSpec {
  std::string name;      // scenario device name
  std::string endpoint;  // where its worker listens
  double slowdown = 1;   // testbed: compute time multiplier (1: no emulation)
  std::vector<std::pair<int, int>> backups;  // node ranges it preloads as backups
  std::string public_key;  // its CURVE public key (transport.hpp; "" only with an insecure transport)
};

struct StageSpec {
  int first = 0;
  int last = 0;
  int worker = 0;  // index into PipelineSpec::workers
};

// What recovery decides with (a planned run: serve, testbed): the scenario's cost model, which scenario device each
// worker is, and how to re-plan. Without it the coordinator recovers over its workers alone (one device each, room
// for any stage, compute by the roofline of equal devices, no re-planning).
struct RecoverySpec {
  const partition::CostModel* cost = nullptr;
  runtime::WorkerMap map;
  runtime::PlanFunction plan;  // empty: no re-planning
  bool with_backups = false;   // re-plans place backups
};

struct PipelineSpec {
  std::vector<WorkerSpec> workers;
  std::vector<StageSpec> stages;  // in pipeline order, covering the DAG
  std::optional<RecoverySpec> recovery;
};

// What the coordinator learns from outside the wire, each loop turn (Environment::poll).
struct EnvEvent {
  enum class Kind {
    worker_lost,     // `device`'s worker is gone (the testbed saw its process exit)
    worker_back,     // `device`'s worker is back at `endpoint` (restarted, or continued after a stop)
    links_changed,   // the emulated links with `device` at an end changed (Environment::link gives them)
    fault_injected,  // a fault of `device` was injected at `at_s` (its report entry's at_s)
    slowdown,        // `device`'s emulated compute slowdown is `factor` from now on (a testbed slowdown fault)
  };
  Kind kind = Kind::worker_lost;
  std::string device;
  runtime::LossCause cause = runtime::LossCause::process_exit;
  std::string endpoint;
  double at_s = 0;
  double factor = 1;  // slowdown
};

// The coordinator's surroundings: a testbed that starts the workers, emulates the scenario's network and injects its
// faults; a replicated run's gate; nothing (real workers). Every method has a do-nothing default.
class Environment {
 public:
  virtual ~Environment() = default;
  // Called every loop turn with the seconds since the first admission; with a negative time during the handshake
  // (before it: report exits, inject no fault).
  virtual std::vector<EnvEvent> poll(double now_s) {
    (void)now_s;
    return {};
  }
  // Emulated link between two workers' devices (unemulated: zero).
  [[nodiscard]] virtual LinkShape link(int from_worker, int to_worker) const {
    (void)from_worker;
    (void)to_worker;
    return {};
  }
  // Whether a move or re-placement waits for its weights' emulated transfer (RecoveryPlan::load_ms).
  [[nodiscard]] virtual bool emulates_loads() const { return false; }
  // Every worker answered the hello; before the first admission (an error ends the run).
  virtual Status ready() { return Ok{}; }
  // Checked every loop turn: true ends the run with an error (another replica failed).
  virtual bool cancelled() { return false; }
};

struct ExecRequest {
  std::string id;
  std::vector<int64_t> input_ids;
  at::Tensor pixel_values;  // [crops, 3, H, W] float, or undefined
  int max_new_tokens = 32;
  std::string refused = {};  // not "": refused before the run (e.g. a requests file's line); its result is this error
};

// One request's outcome: its tokens, or an error (refused at admission, refused or failed by a worker, or given up as
// the likely cause of worker crashes); either way the run goes on with the others.
struct ExecResult {
  std::string id;
  std::vector<int64_t> generated;
  double admitted_s = 0;  // since the run started
  double done_s = 0;
  double latency_ms = 0;
  at::Tensor prefill_logits;  // [tokens, vocab] when asked for
  std::string error = {};     // not "": the request failed (`generated` holds what it had produced)
};

struct ExecRun;

struct CoordinatorOptions {
  std::filesystem::path model;  // the coordinator's checkpoint (fingerprint, and the path workers fall back to)
  std::string dtype = "fp32";
  std::string exec_device = "cpu";
  std::string listen = "tcp://127.0.0.1:*";  // where the last stage returns tokens (must be reachable by workers)
  Transport transport;                       // CURVE key pair, or insecure (loopback only); see transport.hpp
  int in_flight = 4;
  std::vector<int64_t> eos_ids;
  bool keep_prefill_logits = false;
  // How each worker orders the steps waiting for its stages (the scenario's planner.schedule; the hello's
  // "schedule"): runtime::StageQueue's order.
  partition::Schedule schedule = partition::Schedule::decode_first;
  // Up to how many waiting decode steps of a stage a worker runs as one forward (the hello's "max_batch"; the
  // scenario's planner.max_batch, "auto" resolved to its in_flight).
  int max_batch = 1;
  double hello_timeout_s = 120;  // per worker, includes loading its weights
  // Heartbeats (the scenario's [recovery], as the simulator detects): a worker silent for the timeout is lost.
  double heartbeat_interval_s = partition::RecoverySettings{}.heartbeat_interval_s;
  double heartbeat_timeout_s = partition::RecoverySettings{}.heartbeat_timeout_s;
  double step_timeout_s = 600;  // no progress at all for this long: give up
  bool recover = true;          // on a lost worker: fail over (else: error)
  Environment* environment = nullptr;  // not owned; none: real workers, nothing emulated
  std::function<void(size_t done, size_t total)> progress;
  // Called once per request as it completes or fails (completion order; admission times relative to the start).
  std::function<void(const ExecResult&)> on_result;
  // Not owned; set: a failed run leaves what it had done here (the requests that ended, stage events, faults).
  ExecRun* failed_run = nullptr;
  // Not owned; set and not 0 (a signal number, SIGINT/SIGTERM): the run stops with an error naming it.
  const std::atomic<int>* interrupt = nullptr;
  // Poison requests: a request in flight at this many worker losses the environment did not inject (crashes,
  // heartbeat or connection losses) fails instead of being replayed again; the cluster keeps its other workers.
  int poison_losses = 2;
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

// Connects to the workers, sends them their stages, runs the requests. A request that a worker refuses or fails, or
// that the coordinator refuses (no input ids, longer than the model's context, image tokens without an image), ends
// with its error in its ExecResult and the run goes on. Errors of the run name the worker (unreachable, refused the
// handshake, lost without a way to recover) and never hang.
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

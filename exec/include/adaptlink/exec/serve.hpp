// `adaptlink-run serve` and `adaptlink-run testbed`: plan a scenario with the core for the checkpoint's model,
// hand the stages to workers (the scenario's endpoints, or local emulating workers), run the requests, write
// DIR/{plan.json, outputs.jsonl, report.json, trace.json} (those files of an earlier run there are removed first, so
// that a run that fails leaves none of them looking current). outputs.jsonl grows as requests end (a line each,
// flushed: a killed coordinator leaves every request that ended before) and is rewritten in request order at the
// end; a request that failed alone has the line {"id", "error"}. A run that fails still writes outputs.jsonl (what
// ended) and report.json with "status": "failed", "error" and "completed" (ids); a run that completes writes
// "status": "completed". A replicated plan (plan.replicas) is served as the
// simulator runs it: one pipeline per replica on its own devices' workers, with its in_flight and its share of the
// requests (dealt out in request order), all at once; the report merges them as the simulator's does. Recoveries
// are runtime::RecoveryPolicy's decisions on the scenario's devices, as in the simulator (exec/src/serve_internal.hpp
// lists the files that do each part).
//
// Testbed emulation (one machine standing in for the scenario's devices):
//   compute  every stage execution on device d takes its measured time x testbed_slowdown(scenario, d)
//            (partition/testbed.hpp: fastest device = this machine); the extra is idle waiting;
//   links    the sending worker holds each message for latency + bytes / bandwidth of the scenario's route
//            between the two devices (FIFO per destination);
//   faults   the scenario's [[faults]], at at_s after the first request is admitted: a dropout kills the device's
//            worker (SIGKILL: its exit is seen at once) or, with signal = "stop", stops it (SIGSTOP: found lost
//            by the heartbeat timeout); a rejoin restarts a killed worker or continues a stopped one (SIGCONT:
//            its hello drops the old state); a slowdown changes its factor; a link fault sets every link with
//            the device at an end to bandwidth_mbps from then on (the workers sending over them are told; later
//            routes keep it). Slowdown and link faults appear in report.json's faults[] without detection or
//            recovery. A redeploy waits for the weights' transfer over the device's link
//            (partition::redeploy_ms, at the scenario's bandwidth).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/exec/coordinator.hpp"
#include "adaptlink/exec/generate.hpp"
#include "adaptlink/partition/plan.hpp"
#include "adaptlink/runtime/report.hpp"

namespace adaptlink::exec {

struct ServeOptions {
  std::filesystem::path scenario;
  std::filesystem::path model;
  std::optional<std::filesystem::path> requests;  // JSONL; testbed without it: synthetic requests
  std::filesystem::path out;                      // empty: no files
  std::optional<std::string> planner;             // overrides the scenario's
  std::vector<std::string> profiles;              // profile files for the planner
  std::string dtype = "fp32";
  std::string device = "cpu";
  std::optional<int> in_flight;
  std::optional<int> max_batch;  // overrides the scenario's planner.max_batch (partition::kAutoBatch: "auto")
  std::optional<int> synthetic_requests;  // number of synthetic requests (scenario workload shape)
  uint64_t seed = 1;
  bool ignore_eos = false;
  bool testbed = false;
  bool inject_faults = true;    // testbed: apply the scenario's [[faults]]
  std::optional<bool> backups;  // overrides the scenario's planner.backups
  int worker_threads = 0;
  std::filesystem::path worker_binary;  // testbed: the adaptlink-run executable
  std::string listen = "tcp://127.0.0.1:*";
  // CURVE (transport.hpp): serve uses transport.key and each worker's public key (the scenario's public_key, or
  // worker_keys: a JSON object device name -> public key); the testbed makes its own keys. insecure: plain TCP.
  Transport transport;
  std::optional<std::filesystem::path> worker_keys;
  std::optional<double> heartbeat_interval_s;  // unset: the scenario's [recovery]
  std::optional<double> heartbeat_timeout_s;
  double hello_timeout_s = 120;
  bool progress = true;
  const std::atomic<int>* interrupt = nullptr;  // not owned; not 0 (a signal number): the run stops (CoordinatorOptions)
};

struct ServeOutcome {
  partition::Plan plan;
  runtime::RunReport report;
  std::vector<ExecResult> results;
  std::vector<std::string> request_ids;
  double predicted_rps = 0;  // the core's replayed prediction for this plan (profiles applied)
};

Expected<ServeOutcome> run_serve(const ServeOptions& options);

// The stages serve plans for options.scenario on options.model at options.dtype (a replicated plan: its first
// replica's), as (scenario device name, DAG node range) in pipeline order: `generate --scenario`.
Expected<std::vector<std::pair<std::string, std::pair<int, int>>>> plan_stages(const ServeOptions& options);

// A request fits the model's context: its prompt ids (image tokens included) and the tokens it may generate, at most
// max_position_embeddings positions (a sliding_window does not bound it: the decoder applies the window). The error
// says how many new tokens would fit.
Expected<Ok> check_context(const models::LlavaConfig& config, size_t prompt_ids, long long max_new_tokens);
// A prompt with image tokens (config.image_token_index) needs an image: without one they would embed nothing.
Expected<Ok> check_image_tokens(const models::LlavaConfig& config, const std::vector<int64_t>& ids, bool has_image);

// Reads a requests file (JSONL: {"id", "prompt" | "input_ids", "image" | "pixel_values", "max_new_tokens"});
// relative paths resolve against the file's folder. A line that is not a JSON object, an id that is not a string
// or an integer, and an id used twice make the whole file an error (file and line); any other problem of a request
// (unknown key, image, ids, context) refuses that request alone (ExecRequest::refused names the file and line):
// its outputs line is its error and the others run.
Expected<std::vector<ExecRequest>> read_requests(const std::filesystem::path& file, const std::filesystem::path& model,
                                                 int default_max_new_tokens);

}  // namespace adaptlink::exec

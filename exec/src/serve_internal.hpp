// The pieces of `adaptlink-run serve | testbed` (serve.hpp), one job a file:
//   serve_plan.cpp        scenario + checkpoint -> plan, workers, the coordinator's PipelineSpec and options
//   requests.cpp          the requests file, synthetic requests
//   testbed.cpp           the testbed: local emulating workers, the scenario's network and faults (an Environment)
//   serve_replicated.cpp  a replicated plan: one coordinator per replica, started together, merged
//   serve.cpp             run_serve: the above in order, report and output files
// Not installed: only exec/src includes it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "adaptlink/exec/coordinator.hpp"
#include "adaptlink/exec/local_workers.hpp"
#include "adaptlink/exec/serve.hpp"
#include "adaptlink/exec/tokenizer.hpp"
#include "adaptlink/partition/problem.hpp"

namespace adaptlink::exec {

// A served run, planned: the scenario for the checkpoint's model (profiles applied), the plan, one worker per
// scenario device that takes part (testbed: every device), the coordinator's pipeline and base options, requests.
struct ServedPlan {
  std::unique_ptr<partition::Problem> problem;
  partition::Plan plan;
  runtime::WorkerMap map;
  PipelineSpec spec;  // stages, backups, recovery; endpoints the scenario's (the testbed sets its own)
  CoordinatorOptions co;
  std::vector<ExecRequest> requests;
  std::vector<std::string> device_names;  // scenario order
  [[nodiscard]] const partition::Scenario& scenario() const { return problem->scenario; }
  [[nodiscard]] const partition::CostModel& cost() const { return *problem->cost; }
};
Expected<ServedPlan> plan_served_run(const ServeOptions& options);

// Stages and backups in worker terms (map: scenario device <-> worker).
PipelineSpec pipeline_of(const std::vector<partition::Stage>& stages, const std::vector<partition::Backup>& backups,
                         const runtime::WorkerMap& map, const std::vector<WorkerSpec>& workers);

std::optional<Tokenizer> load_tokenizer(const std::filesystem::path& model);
// Synthetic requests of the scenario's shape: <bos>, the image tokens, random text ids; random pixels.
std::vector<ExecRequest> synthetic_requests(const models::LlavaConfig& config, const models::RequestShape& shape,
                                            int count, uint64_t seed);
models::Dtype model_dtype(const std::string& dtype);

// The testbed (testbed.cpp): one local worker per scenario device, each emulating its device's compute (slowdown)
// and the scenario's links (latency + bytes / bandwidth of the route), weight transfers for loads, and the
// scenario's [[faults]] at their times (serve.hpp says how each is made).
class Testbed : public Environment {
 public:
  Testbed(const ServedPlan& served, const ServeOptions& options);
  Status start(const std::filesystem::path& binary, int workers, int threads);
  [[nodiscard]] const std::vector<std::string>& endpoints() const { return local_.endpoints(); }
  [[nodiscard]] const std::vector<std::string>& public_keys() const { return local_.public_keys(); }
  [[nodiscard]] const Transport& transport() const { return local_.transport(); }

  std::vector<EnvEvent> poll(double now_s) override;
  [[nodiscard]] LinkShape link(int from_worker, int to_worker) const override;
  [[nodiscard]] bool emulates_loads() const override { return true; }

  // Whether worker w has exited (thread-safe: replicas poll from their own threads).
  bool exited(int w);
  // Slowdown and link faults, applied at once (their report entries have no detection or recovery).
  [[nodiscard]] const std::vector<runtime::FaultRecord>& applied() const { return applied_; }
  void stop_all();

 private:
  void inject(size_t fault, double now_s, std::vector<EnvEvent>& events);

  const ServedPlan& served_;
  const ServeOptions& options_;
  LocalWorkers local_;  // made with the options' transport (insecure, or CURVE keys of its own)
  std::mutex mutex_;                 // LocalWorkers is not thread-safe (exited() reaps)
  std::vector<bool> reported_exit_;  // per worker: its exit was reported (once per life)
  std::vector<bool> done_;           // per fault: injected
  std::map<int, double> link_mbps_;  // link faults: the bandwidth of each degraded link, from then on
  std::vector<runtime::FaultRecord> applied_;
};

// A replicated plan (replicas.hpp), served as the simulator runs it (serve_replicated.cpp).
Expected<ServeOutcome> serve_replicated(const ServeOptions& options, ServedPlan& served, Testbed* testbed);

// One outputs.jsonl line: {"id", "generated", "latency_ms"[, "text"]}, or {"id", "error"} for a failed request.
std::string output_line(const ExecResult& r, const std::optional<Tokenizer>& tokenizer);

// DIR/outputs.jsonl as requests end (completion order; each line flushed, so a killed coordinator leaves every
// request that ended before on disk). open() clears the run's own files of an earlier run first. Thread-safe (the
// replicas of a replicated run add from their own threads).
class ResultStream {
 public:
  ResultStream() = default;
  ResultStream(const ResultStream&) = delete;
  ResultStream& operator=(const ResultStream&) = delete;
  ~ResultStream();
  Status open(const std::filesystem::path& out, const std::filesystem::path& model);
  void add(const ExecResult& r);
  [[nodiscard]] std::vector<ExecResult> results() const;  // those added, in that order
  [[nodiscard]] Status status() const;                    // an error once a write failed
 private:
  mutable std::mutex mu_;
  std::filesystem::path out_;
  std::optional<Tokenizer> tokenizer_;
  std::FILE* file_ = nullptr;
  bool failed_ = false;
  std::vector<ExecResult> results_;
};

// DIR/{outputs.jsonl, report.json, trace.json, plan.json}.
Status write_outputs(const ServeOptions& options, const std::vector<ExecResult>& results,
                     const runtime::RunReport& report, double predicted_rps, const nlohmann::json& trace,
                     const nlohmann::json& plan);
// After a failed run: outputs.jsonl with what ended, report.json with "status": "failed", "error", "completed".
void write_failed_outputs(const ServeOptions& options, const ExecRun& partial, const std::vector<ExecRequest>& requests,
                          const std::string& scenario, const std::string& planner,
                          const std::vector<std::string>& device_names, int in_flight, const Error& why);

}  // namespace adaptlink::exec

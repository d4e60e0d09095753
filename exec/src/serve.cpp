// adaptlink-run serve | testbed (serve.hpp): plan the scenario for the checkpoint, start the testbed's workers when
// emulating, run the coordinator (one pipeline, or one per replica), write the report and outputs.
#include "adaptlink/exec/serve.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>

#include "serve_internal.hpp"

namespace adaptlink::exec {

namespace {

// What a run writes into --out (write_outputs), in that order.
constexpr const char* kOutputFiles[] = {"outputs.jsonl", "report.json", "trace.json", "plan.json"};

// Writes `text` to `path` through a temporary file renamed over it: a reader (or a crash) never sees half a file.
Status write_text(const std::filesystem::path& path, const std::string& text) {
  auto tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      return make_error("cannot write {}", path.string());
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return make_error("cannot write {}: {}", path.string(), ec.message());
  return Ok{};
}

// A run's own files of an earlier run in `out` go before it starts: a run that then fails leaves none of them
// looking current. Other files there are left alone.
Status clear_previous_outputs(const std::filesystem::path& out) {
  for (const char* file : kOutputFiles) {
    std::error_code ec;
    std::filesystem::remove(out / file, ec);
    if (ec) return make_error("cannot remove the earlier run's {}: {}", (out / file).string(), ec.message());
  }
  return Ok{};
}

}  // namespace

std::string output_line(const ExecResult& r, const std::optional<Tokenizer>& tokenizer) {
  nlohmann::json j;
  if (!r.error.empty()) {
    j = {{"id", r.id}, {"error", r.error}};
  } else {
    j = {{"id", r.id}, {"generated", r.generated}, {"latency_ms", r.latency_ms}};
    if (tokenizer) j["text"] = tokenizer->decode(r.generated);
  }
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

Status ResultStream::open(const std::filesystem::path& out, const std::filesystem::path& model) {
  out_ = out;
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  if (ec) return make_error("cannot create {}: {}", out.string(), ec.message());
  if (auto st = clear_previous_outputs(out); !st) return st;
  tokenizer_ = load_tokenizer(model);
  file_ = std::fopen((out / kOutputFiles[0]).c_str(), "w");
  if (file_ == nullptr) return make_error("cannot write {}", (out / kOutputFiles[0]).string());
  return Ok{};
}

ResultStream::~ResultStream() {
  if (file_ != nullptr) std::fclose(file_);
}

void ResultStream::add(const ExecResult& r) {
  std::lock_guard lock(mu_);
  results_.push_back(r);
  if (file_ == nullptr || failed_) return;
  const auto line = output_line(r, tokenizer_);
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) failed_ = true;
}

std::vector<ExecResult> ResultStream::results() const {
  std::lock_guard lock(mu_);
  return results_;
}

Status ResultStream::status() const {
  std::lock_guard lock(mu_);
  if (failed_) return make_error("cannot write {}", (out_ / kOutputFiles[0]).string());
  return Ok{};
}

// DIR/{outputs.jsonl (request order, replacing the stream's completion order), report.json, trace.json, plan.json}.
Status write_outputs(const ServeOptions& options, const std::vector<ExecResult>& results,
                     const runtime::RunReport& report, double predicted_rps, const nlohmann::json& trace,
                     const nlohmann::json& plan) {
  std::error_code ec;
  std::filesystem::create_directories(options.out, ec);
  if (ec) return make_error("cannot create {}: {}", options.out.string(), ec.message());
  const auto tokenizer = load_tokenizer(options.model);
  std::string lines;
  for (const auto& r : results) lines += output_line(r, tokenizer);
  auto report_json = runtime::to_json(report);
  report_json["status"] = "completed";
  report_json["predicted_throughput_rps"] = predicted_rps;
  const std::string texts[] = {lines, report_json.dump(2) + "\n", trace.dump() + "\n", plan.dump(2) + "\n"};
  static_assert(std::size(texts) == std::size(kOutputFiles));
  for (size_t i = 0; i < std::size(kOutputFiles); ++i) {
    auto st = write_text(options.out / kOutputFiles[i], texts[i]);
    if (!st) return st.error();
  }
  return Ok{};
}

// A run that stopped: outputs.jsonl holds what ended (request order), report.json what it measured up to then, with
// "status": "failed", the reason, and the ids of the requests that completed.
void write_failed_outputs(const ServeOptions& options, const ExecRun& partial, const std::vector<ExecRequest>& requests,
                          const std::string& scenario, const std::string& planner,
                          const std::vector<std::string>& device_names, int in_flight, const Error& why) {
  std::map<std::string, size_t> order;
  for (size_t i = 0; i < requests.size(); ++i) order.emplace(requests[i].id, i);
  std::vector<ExecResult> ended = partial.results;
  std::stable_sort(ended.begin(), ended.end(), [&](const auto& a, const auto& b) { return order[a.id] < order[b.id]; });
  const auto tokenizer = load_tokenizer(options.model);
  std::string lines;
  nlohmann::json completed = nlohmann::json::array();
  for (const auto& r : ended) {
    lines += output_line(r, tokenizer);
    if (r.error.empty()) completed.push_back(r.id);
  }
  ExecRun run = partial;
  run.results = ended;
  auto rec = record_exec_run(run, device_names, in_flight);
  auto report = runtime::to_json(rec.report(scenario, "exec", planner));
  report["requests_lost"] = static_cast<long long>(requests.size()) - static_cast<long long>(ended.size());
  report["status"] = "failed";
  report["error"] = why.to_string();
  report["completed"] = completed;
  // Best effort: the run's own error is what the caller reports.
  (void)write_text(options.out / kOutputFiles[0], lines);
  (void)write_text(options.out / kOutputFiles[1], report.dump(2) + "\n");
}

Expected<ServeOutcome> run_serve(const ServeOptions& options) {
  auto served = plan_served_run(options);
  if (!served) return served.error();
  served->co.interrupt = options.interrupt;
  ResultStream stream;
  if (!options.out.empty()) {
    if (auto st = stream.open(options.out, options.model); !st) return st.error();
    served->co.on_result = [&stream](const ExecResult& r) { stream.add(r); };
  }
  const auto& sc = served->scenario();
  // A failed run still leaves what ended on disk.
  auto failed = [&](const Error& e, const ExecRun& partial) -> Error {
    if (!options.out.empty()) {
      write_failed_outputs(options, partial, served->requests, sc.name, served->plan.planner, served->device_names,
                           sc.workload.in_flight, e);
    }
    return e;
  };
  std::optional<Testbed> testbed;
  if (options.testbed) {
    testbed.emplace(*served, options);
    auto st = testbed->start(options.worker_binary, static_cast<int>(served->spec.workers.size()), options.worker_threads);
    if (!st) return failed(st.error(), {});
    for (size_t w = 0; w < served->spec.workers.size(); ++w) {
      served->spec.workers[w].endpoint = testbed->endpoints()[w];
      served->spec.workers[w].public_key = testbed->public_keys()[w];
    }
    served->co.transport = testbed->transport();
    served->co.environment = &*testbed;
  }
  if (!served->plan.replicas.empty()) {
    auto outcome = serve_replicated(options, *served, testbed ? &*testbed : nullptr);
    if (testbed) testbed->stop_all();
    if (!outcome) {
      ExecRun partial;
      partial.results = stream.results();
      return failed(outcome.error(), partial);
    }
    if (auto st = stream.status(); !st) return st.error();
    return outcome;
  }
  if (options.progress) {
    served->co.progress = [](size_t done, size_t total) {
      std::fprintf(stderr, "\r%zu/%zu requests", done, total);
      if (done == total) std::fprintf(stderr, "\n");
      std::fflush(stderr);
    };
  }
  ExecRun partial;
  served->co.failed_run = &partial;
  auto run = run_pipeline(served->spec, served->requests, served->co);
  if (testbed) testbed->stop_all();
  if (!run) return failed(run.error(), partial);
  if (auto st = stream.status(); !st) return st.error();

  ServeOutcome outcome;
  outcome.report = make_exec_report(*run, sc.name, served->plan.planner, served->device_names, sc.workload.in_flight);
  if (testbed) {
    auto& faults = outcome.report.faults;
    faults.insert(faults.end(), testbed->applied().begin(), testbed->applied().end());
    std::stable_sort(faults.begin(), faults.end(), [](const auto& a, const auto& b) { return a.at_s < b.at_s; });
  }
  outcome.predicted_rps = served->plan.predicted.throughput_rps;
  outcome.results = run->results;
  for (const auto& r : served->requests) outcome.request_ids.push_back(r.id);
  if (!options.out.empty()) {
    auto st = write_outputs(options, run->results, outcome.report, outcome.predicted_rps,
                            make_exec_trace(*run, served->device_names), partition::to_json(served->plan, served->cost()));
    if (!st) return st.error();
  }
  outcome.plan = std::move(served->plan);
  return outcome;
}

}  // namespace adaptlink::exec

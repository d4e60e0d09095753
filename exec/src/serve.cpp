// adaptlink-run serve | testbed (serve.hpp): plan the scenario for the checkpoint, start the testbed's workers when
// emulating, run the coordinator (one pipeline, or one per replica), write the report and outputs.
#include "adaptlink/exec/serve.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "serve_internal.hpp"

namespace adaptlink::exec {

namespace {

Status write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) return make_error("cannot write {}", path.string());
  return Ok{};
}

// What a run writes into --out (write_outputs), in that order.
constexpr const char* kOutputFiles[] = {"outputs.jsonl", "report.json", "trace.json", "plan.json"};

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

// DIR/{outputs.jsonl, report.json, trace.json, plan.json}.
Status write_outputs(const ServeOptions& options, const std::vector<ExecResult>& results,
                     const runtime::RunReport& report, double predicted_rps, const nlohmann::json& trace,
                     const nlohmann::json& plan) {
  std::error_code ec;
  std::filesystem::create_directories(options.out, ec);
  if (ec) return make_error("cannot create {}: {}", options.out.string(), ec.message());
  auto tokenizer = load_tokenizer(options.model);
  std::string lines;
  for (const auto& r : results) {
    nlohmann::json j = {{"id", r.id}, {"generated", r.generated}, {"latency_ms", r.latency_ms}};
    if (tokenizer) j["text"] = tokenizer->decode(r.generated);
    lines += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  auto report_json = runtime::to_json(report);
  report_json["predicted_throughput_rps"] = predicted_rps;
  const std::string texts[] = {lines, report_json.dump(2) + "\n", trace.dump() + "\n", plan.dump(2) + "\n"};
  static_assert(std::size(texts) == std::size(kOutputFiles));
  for (size_t i = 0; i < std::size(kOutputFiles); ++i) {
    auto st = write_text(options.out / kOutputFiles[i], texts[i]);
    if (!st) return st.error();
  }
  return Ok{};
}

Expected<ServeOutcome> run_serve(const ServeOptions& options) {
  auto served = plan_served_run(options);
  if (!served) return served.error();
  if (!options.out.empty()) {
    if (auto st = clear_previous_outputs(options.out); !st) return st.error();
  }
  std::optional<Testbed> testbed;
  if (options.testbed) {
    testbed.emplace(*served, options);
    auto st = testbed->start(options.worker_binary, static_cast<int>(served->spec.workers.size()), options.worker_threads);
    if (!st) return st.error();
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
    return outcome;
  }
  if (options.progress) {
    served->co.progress = [](size_t done, size_t total) {
      std::fprintf(stderr, "\r%zu/%zu requests", done, total);
      if (done == total) std::fprintf(stderr, "\n");
      std::fflush(stderr);
    };
  }
  auto run = run_pipeline(served->spec, served->requests, served->co);
  if (testbed) testbed->stop_all();
  if (!run) return run.error();

  const auto& sc = served->scenario();
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

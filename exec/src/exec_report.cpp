// Accounting and traces of exec runs: runtime::RunRecorder fed from the coordinator's results and stage events,
// replicated runs merged onto one clock, the Chrome trace.
#include <algorithm>

#include "adaptlink/exec/coordinator.hpp"

namespace adaptlink::exec {

runtime::RunRecorder record_exec_run(const ExecRun& run, const std::vector<std::string>& device_names, int in_flight) {
  runtime::RunRecorder rec(device_names, static_cast<long long>(run.results.size()), in_flight, true);
  for (const auto& res : run.results) {
    if (!res.error.empty()) {
      rec.fail();
      continue;
    }
    rec.admit(res.admitted_s);
    rec.complete(res.admitted_s, res.done_s, static_cast<long long>(res.generated.size()));
  }
  for (const auto& e : run.events) {
    const auto it = std::find(device_names.begin(), device_names.end(), e.device);
    if (it == device_names.end()) continue;
    const int d = static_cast<int>(it - device_names.begin());
    rec.busy(d, e.start_s, e.end_s);
    rec.holds_stage(d);
  }
  for (const auto& f : run.faults) rec.fault(f);
  return rec;
}

runtime::RunReport make_exec_report(const ExecRun& run, const std::string& scenario, const std::string& planner,
                                    const std::vector<std::string>& device_names, int in_flight) {
  return record_exec_run(run, device_names, in_flight).report(scenario, "exec", planner);
}

ExecRun merge_exec_runs(const std::vector<ExecRun>& runs, const std::vector<std::vector<size_t>>& indices,
                        size_t requests) {
  ExecRun out;
  out.results.resize(requests);
  if (runs.empty()) return out;
  int64_t start = runs.front().start_wall_us;
  for (const auto& run : runs) start = std::min(start, run.start_wall_us);
  out.start_wall_us = start;
  for (size_t r = 0; r < runs.size(); ++r) {
    const auto& run = runs[r];
    const double offset = static_cast<double>(run.start_wall_us - start) / 1e6;
    for (size_t i = 0; i < run.results.size() && i < indices[r].size(); ++i) {
      auto& res = out.results[indices[r][i]];
      res = run.results[i];
      res.admitted_s += offset;
      res.done_s += offset;
    }
    for (auto e : run.events) {
      e.start_s += offset;
      e.end_s += offset;
      out.events.push_back(std::move(e));
    }
    for (auto f : run.faults) {
      f.at_s += offset;
      if (f.detected_s) *f.detected_s += offset;
      if (f.recovered_s) *f.recovered_s += offset;
      out.faults.push_back(std::move(f));
    }
    out.wall_s = std::max(out.wall_s, offset + run.wall_s);
  }
  std::stable_sort(out.events.begin(), out.events.end(), [](const auto& a, const auto& b) { return a.start_s < b.start_s; });
  std::stable_sort(out.faults.begin(), out.faults.end(), [](const auto& a, const auto& b) { return a.at_s < b.at_s; });
  return out;
}

nlohmann::json make_exec_trace(const ExecRun& run, const std::vector<std::string>& device_names) {
  nlohmann::json events = nlohmann::json::array();
  for (size_t d = 0; d < device_names.size(); ++d) {
    events.push_back({{"ph", "M"}, {"pid", 1}, {"tid", d + 1}, {"name", "thread_name"},
                      {"args", {{"name", device_names[d]}}}});
  }
  events.push_back({{"ph", "M"}, {"pid", 1}, {"name", "process_name"}, {"args", {{"name", "devices"}}}});
  for (const auto& e : run.events) {
    const auto it = std::find(device_names.begin(), device_names.end(), e.device);
    const size_t tid = it == device_names.end() ? device_names.size() + 1 : static_cast<size_t>(it - device_names.begin()) + 1;
    events.push_back({{"ph", "X"}, {"pid", 1}, {"tid", tid}, {"name", e.name}, {"cat", "stage"},
                      {"ts", e.start_s * 1e6}, {"dur", (e.end_s - e.start_s) * 1e6},
                      {"args", {{"request", e.request}}}});
  }
  for (const auto& f : run.faults) {
    events.push_back({{"ph", "i"}, {"pid", 1}, {"tid", 0}, {"s", "g"}, {"name", std::string(partition::fault_kind_name(f.kind)) + " " + f.device},
                      {"ts", f.at_s * 1e6}});
  }
  return {{"traceEvents", events}, {"displayTimeUnit", "ms"}};
}

}  // namespace adaptlink::exec

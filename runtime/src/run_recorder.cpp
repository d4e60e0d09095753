#include "adaptlink/runtime/run_recorder.hpp"

#include <algorithm>
#include <cmath>

namespace adaptlink::runtime {

RunRecorder::RunRecorder(std::vector<std::string> device_names, long long requests, long long in_flight,
                         bool closed_loop)
    : names_(std::move(device_names)),
      requests_(requests),
      in_flight_(in_flight),
      closed_loop_(closed_loop),
      busy_(names_.size()),
      holders_(names_.size(), false) {}

void RunRecorder::admit(double t_s) {
  if (first_admission_s_ < 0 || t_s < first_admission_s_) first_admission_s_ = t_s;
}

void RunRecorder::complete(double admitted_s, double done_s, long long tokens) {
  done_s_.push_back(done_s);
  latencies_ms_.push_back((done_s - admitted_s) * 1e3);
  tokens_ += tokens;
}

void RunRecorder::complete(double admitted_s, double done_s, long long tokens, double first_token_s, long long steps) {
  complete(admitted_s, done_s, tokens);
  ttft_ms_.push_back((first_token_s - admitted_s) * 1e3);
  if (steps > 0) tpot_ms_.push_back((done_s - first_token_s) * 1e3 / static_cast<double>(steps));
}

void RunRecorder::fail() { ++failed_; }

void RunRecorder::busy(int device, double start_s, double end_s) {
  if (device < 0 || static_cast<size_t>(device) >= busy_.size() || !(end_s > start_s)) return;
  auto& list = busy_[static_cast<size_t>(device)];
  if (!list.empty() && list.back().second == start_s) {
    list.back().second = end_s;  // back to back: one interval
  } else {
    list.emplace_back(start_s, end_s);
  }
}

void RunRecorder::holds_stage(int device) {
  if (device >= 0 && static_cast<size_t>(device) < holders_.size()) holders_[static_cast<size_t>(device)] = true;
}

void RunRecorder::fault(FaultRecord record) { faults_.push_back(std::move(record)); }

RunRecorder::Window RunRecorder::window() const {
  Window w;
  auto done = done_s_;
  std::sort(done.begin(), done.end());
  const auto n = static_cast<long long>(done.size());
  const double start = first_admission_s_ < 0 ? 0.0 : first_admission_s_;
  const auto steady = steady_window(std::max<long long>(0, requests_ - failed_), in_flight_, closed_loop_);
  if (n >= steady.last && steady.last > steady.first) {
    w.first_s = steady.first == 0 ? (closed_loop_ ? 0.0 : start) : done[static_cast<size_t>(steady.first - 1)];
    w.last_s = done[static_cast<size_t>(steady.last - 1)];
    w.completions = steady.last - steady.first;
    w.steady = w.last_s > w.first_s;
  }
  if (!w.steady && n > 0) {  // the whole run
    w.first_s = closed_loop_ ? 0.0 : start;
    w.last_s = done.back();
    w.completions = n;
  }
  return w;
}

double RunRecorder::busy_in(int device, double from_s, double to_s) const {
  double sum = 0;
  for (const auto& [s, e] : busy_[static_cast<size_t>(device)]) sum += std::max(0.0, std::min(e, to_s) - std::max(s, from_s));
  return sum;
}

RunReport RunRecorder::report(std::string scenario, std::string backend, std::string planner) const {
  RunReport r;
  r.scenario = std::move(scenario);
  r.backend = std::move(backend);
  r.planner = std::move(planner);
  r.requests_completed = completed();
  r.requests_failed = failed_;
  r.requests_lost = std::max<long long>(0, requests_ - r.requests_completed - failed_);
  const auto w = window();
  const double span = w.last_s - w.first_s;
  if (span > 0) r.throughput_rps = static_cast<double>(w.completions) / span;
  if (r.requests_completed > 0) {
    r.tokens_per_s = r.throughput_rps * static_cast<double>(tokens_) / static_cast<double>(r.requests_completed);
  }
  r.latency_ms = summarize_latencies(latencies_ms_);
  if (!ttft_ms_.empty()) r.ttft_ms = summarize_latencies(ttft_ms_);
  if (!tpot_ms_.empty()) r.tpot_ms = summarize_latencies(tpot_ms_);
  double sum = 0;
  int holders = 0;
  for (size_t d = 0; d < names_.size(); ++d) {
    const double u = w.steady ? std::clamp(busy_in(static_cast<int>(d), w.first_s, w.last_s) / span, 0.0, 1.0) : 0.0;
    r.device_utilization.emplace_back(names_[d], u);
    if (holders_[d]) {
      sum += u;
      ++holders;
    }
  }
  r.bubble_fraction = holders == 0 ? 0.0 : 1.0 - sum / holders;
  r.faults = faults_;
  std::stable_sort(r.faults.begin(), r.faults.end(), [](const auto& a, const auto& b) { return a.at_s < b.at_s; });
  return r;
}

RunReport merge_replicas(const partition::Scenario& scenario, const std::vector<partition::Replica>& replicas,
                         const std::vector<ReplicaRun>& runs, std::string backend, std::string planner) {
  RunReport merged;
  merged.scenario = scenario.name;
  merged.backend = std::move(backend);
  merged.planner = std::move(planner);
  std::vector<double> done, latencies, ttft, tpot;
  long long in_flight = 0, tokens = 0;
  for (size_t r = 0; r < runs.size() && r < replicas.size(); ++r) {
    const auto& run = runs[r];
    in_flight += replicas[r].in_flight;
    merged.requests_completed += run.report.requests_completed;
    merged.requests_lost += run.report.requests_lost;
    merged.requests_failed += run.report.requests_failed;
    done.insert(done.end(), run.completions_s.begin(), run.completions_s.end());
    latencies.insert(latencies.end(), run.latencies_ms.begin(), run.latencies_ms.end());
    ttft.insert(ttft.end(), run.ttft_ms.begin(), run.ttft_ms.end());
    tpot.insert(tpot.end(), run.tpot_ms.begin(), run.tpot_ms.end());
    tokens += run.tokens;
    merged.faults.insert(merged.faults.end(), run.report.faults.begin(), run.report.faults.end());
  }
  merged.throughput_rps = steady_throughput(done, in_flight);
  if (merged.requests_completed > 0) {
    merged.tokens_per_s = merged.throughput_rps * static_cast<double>(tokens) / static_cast<double>(merged.requests_completed);
  }
  merged.latency_ms = summarize_latencies(std::move(latencies));
  if (!ttft.empty()) merged.ttft_ms = summarize_latencies(std::move(ttft));
  if (!tpot.empty()) merged.tpot_ms = summarize_latencies(std::move(tpot));
  // Each device's utilisation from the replica whose group holds it; the bubble over the stage holders.
  double stage_sum = 0;
  int stage_devices = 0;
  for (size_t d = 0; d < scenario.devices.size(); ++d) {
    const auto& name = scenario.devices[d].name;
    double u = 0;
    bool holds_stage = false;
    for (size_t r = 0; r < replicas.size(); ++r) {
      const auto& rep = replicas[r];
      if (std::find(rep.devices.begin(), rep.devices.end(), static_cast<int>(d)) == rep.devices.end()) continue;
      if (r < runs.size()) {
        for (const auto& [n, value] : runs[r].report.device_utilization) {
          if (n == name) u = value;
        }
      }
      for (const auto& st : rep.stages) holds_stage = holds_stage || st.device == static_cast<int>(d);
    }
    merged.device_utilization.emplace_back(name, u);
    if (holds_stage) {
      stage_sum += u;
      ++stage_devices;
    }
  }
  merged.bubble_fraction = stage_devices == 0 ? 0.0 : 1.0 - stage_sum / stage_devices;
  std::stable_sort(merged.faults.begin(), merged.faults.end(), [](const auto& a, const auto& b) { return a.at_s < b.at_s; });
  return merged;
}

}  // namespace adaptlink::runtime

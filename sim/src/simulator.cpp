// simulate(): builds the pipeline description, runs the SimGrid engine (in a child process unless told
// otherwise: SimGrid allows one engine per process) and turns what it measured into a RunReport.
#include "adaptlink/sim/simulator.hpp"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "pipeline.hpp"

namespace adaptlink::sim {

namespace {

using detail::EngineOptions;
using detail::EngineOutcome;
using detail::PipelineSpec;

partition::RunReport make_report(const PipelineSpec& spec, const EngineOutcome& out) {
  partition::RunReport r;
  r.scenario = spec.scenario;
  r.backend = "sim";
  r.planner = spec.planner;
  r.requests_completed = out.completed;
  r.requests_lost = spec.requests - out.completed;
  const double window_s = out.window_end_s - out.window_start_s;
  const bool steady = out.window_completions > 0 && window_s > 0;
  if (steady) {
    r.throughput_rps = static_cast<double>(out.window_completions) / window_s;
  } else if (out.makespan_s > 0) {
    r.throughput_rps = static_cast<double>(out.completed) / out.makespan_s;
  }
  r.tokens_per_s = r.throughput_rps * spec.output_tokens;
  r.latency_ms = partition::summarize_latencies(out.latencies_ms);

  std::set<int> stage_devices;
  for (const auto& st : spec.stages) stage_devices.insert(st.device);
  double sum = 0;
  for (size_t d = 0; d < spec.device_names.size(); ++d) {
    double u = 0;
    if (steady && d < out.window_busy_s.size()) u = out.window_busy_s[d] / window_s;
    u = std::clamp(u, 0.0, 1.0);
    r.device_utilization.emplace_back(spec.device_names[d], u);
    if (stage_devices.count(static_cast<int>(d)) > 0) sum += u;
  }
  r.bubble_fraction = stage_devices.empty() ? 0.0 : 1.0 - sum / static_cast<double>(stage_devices.size());
  r.faults = out.faults;
  return r;
}

nlohmann::json stats_to_json(const SimStats& s) {
  return {{"wall_s", s.wall_s},
          {"sim_time_s", s.sim_time_s},
          {"stage_executions", s.stage_executions},
          {"transfers", s.transfers},
          {"trace_events", s.trace_events},
          {"peak_rss_kb", s.peak_rss_kb},
          {"offered_rps", s.offered_rps}};
}

SimStats stats_from_json(const nlohmann::json& j) {
  SimStats s;
  s.wall_s = j.value("wall_s", 0.0);
  s.sim_time_s = j.value("sim_time_s", 0.0);
  s.stage_executions = j.value("stage_executions", 0LL);
  s.transfers = j.value("transfers", 0LL);
  s.trace_events = j.value("trace_events", 0LL);
  s.peak_rss_kb = j.value("peak_rss_kb", 0LL);
  s.offered_rps = j.value("offered_rps", 0.0);
  return s;
}

// Runs the engine here; the utilisation window needs the outcome in full, so the report is built here too.
Expected<SimResult> run_here(const PipelineSpec& spec, const EngineOptions& engine_options) {
  const auto t0 = std::chrono::steady_clock::now();
  auto outcome = detail::run_engine(spec, engine_options);
  if (!outcome) return outcome.error();
  SimResult result;
  result.stats.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  result.stats.sim_time_s = outcome->makespan_s;
  result.stats.stage_executions = outcome->stage_executions;
  result.stats.transfers = outcome->transfers;
  result.stats.trace_events = outcome->trace_events;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  result.stats.peak_rss_kb = usage.ru_maxrss;
  if (spec.arrival == detail::ArrivalKind::poisson && spec.requests > 1 &&
      outcome->last_arrival_s > outcome->first_arrival_s) {
    result.stats.offered_rps =
        static_cast<double>(spec.requests - 1) / (outcome->last_arrival_s - outcome->first_arrival_s);
  }
  result.report = make_report(spec, *outcome);
  return result;
}

// --- child process protocol: frames of {type byte, 8-byte length, payload} -----------------------------------
bool write_all(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool read_all(int fd, void* data, size_t size) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = ::read(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

void write_frame(int fd, char type, const std::string& payload) {
  const std::uint64_t size = payload.size();
  write_all(fd, &type, 1);
  write_all(fd, &size, sizeof size);
  write_all(fd, payload.data(), payload.size());
}

Expected<SimResult> run_isolated(const PipelineSpec& spec, EngineOptions engine_options, const SimOptions& options) {
  int fds[2];
  if (::pipe(fds) != 0) return make_error("cannot create a pipe for the simulator: {}", std::strerror(errno));
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return make_error("cannot start the simulator process: {}", std::strerror(errno));
  }
  if (pid == 0) {
    ::close(fds[0]);
    const int fd = fds[1];
    if (options.progress) {
      engine_options.progress = [fd](long long completed, long long total, double sim_time_s) {
        write_frame(fd, 'P', nlohmann::json{completed, total, sim_time_s}.dump());
      };
    }
    auto result = run_here(spec, engine_options);
    if (result) {
      nlohmann::json order = nlohmann::json::array();
      for (const auto& [name, u] : result->report.device_utilization) order.push_back(name);
      write_frame(fd, 'R',
                  nlohmann::json{{"report", partition::to_json(result->report)},
                                 {"device_order", order},
                                 {"stats", stats_to_json(result->stats)}}
                      .dump());
    } else {
      write_frame(fd, 'E', result.error().to_string());
    }
    ::close(fd);
    ::_exit(result ? 0 : 1);
  }
  ::close(fds[1]);
  std::optional<Expected<SimResult>> answer;
  for (;;) {
    char type = 0;
    std::uint64_t size = 0;
    if (!read_all(fds[0], &type, 1) || !read_all(fds[0], &size, sizeof size)) break;
    std::string payload(size, '\0');
    if (!read_all(fds[0], payload.data(), size)) break;
    if (type == 'P') {
      auto j = nlohmann::json::parse(payload);
      if (options.progress) options.progress(SimProgress{j[0].get<long long>(), j[1].get<long long>(), j[2].get<double>()});
    } else if (type == 'R') {
      auto j = nlohmann::json::parse(payload);
      auto report = partition::report_from_json(j.at("report"), "simulator");
      if (!report) {
        answer = report.error();
      } else {
        // JSON objects come back sorted by key: restore the scenario's device order.
        std::vector<std::pair<std::string, double>> ordered;
        for (const auto& name : j.at("device_order")) {
          for (const auto& entry : report->device_utilization) {
            if (entry.first == name.get<std::string>()) ordered.push_back(entry);
          }
        }
        report->device_utilization = std::move(ordered);
        answer = SimResult{std::move(*report), stats_from_json(j.at("stats"))};
      }
    } else if (type == 'E') {
      answer = Error{payload, {}, 0, 0};
    }
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (answer) return std::move(*answer);
  if (WIFSIGNALED(status)) return make_error("the simulator process died of signal {}", WTERMSIG(status));
  return make_error("the simulator process ended (status {}) without a result", WEXITSTATUS(status));
}

}  // namespace

std::vector<std::string> network_models() { return {"CM02", "LV08", "SMPI", "IB", "Constant"}; }

Expected<SimResult> run_simulation(const partition::CostModel& cost, const partition::Plan& plan,
                                   const SimOptions& options) {
  const auto models = network_models();
  if (std::find(models.begin(), models.end(), options.network_model) == models.end()) {
    return make_error("unknown network model '{}' (expected one of CM02, LV08, SMPI, IB, Constant)",
                      options.network_model);
  }
  auto spec = detail::build_pipeline(cost, plan, options.max_requests, options.seed, options.stagger_start);
  if (!spec) return spec.error();
  if (options.faults) {
    if (!(options.heartbeat_interval_s > 0) || options.heartbeat_timeout_s < options.heartbeat_interval_s) {
      return make_error("heartbeat timeout ({} s) must be at least the interval ({} s), which must be positive",
                        options.heartbeat_timeout_s, options.heartbeat_interval_s);
    }
    const auto& faults = options.fault_list ? *options.fault_list : cost.scenario().faults;
    if (auto added = detail::add_faults(cost, plan, *spec, faults, options.heartbeat_timeout_s,
                                        options.heartbeat_interval_s);
        !added) {
      return added.error();
    }
  }
  return detail::run_spec(*spec, options);
}

Expected<SimResult> detail::run_spec(const PipelineSpec& spec, const SimOptions& options) {
  EngineOptions engine_options;
  engine_options.network_model = options.network_model;
  engine_options.trace_path = options.trace_path.string();
  engine_options.trace_from_s = options.trace_from_s;
  engine_options.trace_until_s = options.trace_until_s;
  engine_options.trace_max_events = options.trace_max_events;
  if (!options.isolate) {
    if (options.progress) {
      engine_options.progress = [&options](long long completed, long long total, double sim_time_s) {
        options.progress(SimProgress{completed, total, sim_time_s});
      };
    }
    return run_here(spec, engine_options);
  }
  return run_isolated(spec, std::move(engine_options), options);
}

Expected<partition::RunReport> simulate(const partition::CostModel& cost, const partition::Plan& plan,
                                        const SimOptions& options) {
  auto result = run_simulation(cost, plan, options);
  if (!result) return result.error();
  return std::move(result->report);
}

}  // namespace adaptlink::sim

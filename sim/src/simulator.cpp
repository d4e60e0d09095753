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
#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "adaptlink/planner/replicas.hpp"
#include "adaptlink/runtime/run_recorder.hpp"
#include "pipeline.hpp"
#include "trace.hpp"

namespace adaptlink::sim {

namespace {

using detail::EngineOptions;
using detail::EngineOutcome;
using detail::PipelineSpec;

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
  result.report = std::move(outcome->report);
  result.latencies_ms = std::move(outcome->latencies_ms);
  result.ttft_ms = std::move(outcome->ttft_ms);
  result.tpot_ms = std::move(outcome->tpot_ms);
  result.completions_s = std::move(outcome->completions_s);
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
                  nlohmann::json{{"report", runtime::to_json(result->report)},
                                 {"device_order", order},
                                 {"stats", stats_to_json(result->stats)},
                                 {"latencies_ms", result->latencies_ms},
                                 {"ttft_ms", result->ttft_ms},
                                 {"tpot_ms", result->tpot_ms},
                                 {"completions_s", result->completions_s}}
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
      auto report = runtime::report_from_json(j.at("report"), "simulator");
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
        SimResult result;
        result.report = std::move(*report);
        result.stats = stats_from_json(j.at("stats"));
        result.latencies_ms = j.at("latencies_ms").get<std::vector<double>>();
        result.ttft_ms = j.at("ttft_ms").get<std::vector<double>>();
        result.tpot_ms = j.at("tpot_ms").get<std::vector<double>>();
        result.completions_s = j.at("completions_s").get<std::vector<double>>();
        answer = std::move(result);
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

// --- replicated plans ----------------------------------------------------------------------------------------

// Checks what a replicated plan must be before its replicas are run: disjoint groups of existing devices,
// each with requests in flight and stages on its own devices.
Expected<Ok> check_replicas(const partition::CostModel& cost, const partition::Plan& plan) {
  const auto& sc = cost.scenario();
  std::vector<int> owner(sc.devices.size(), -1);
  for (size_t r = 0; r < plan.replicas.size(); ++r) {
    const auto& rep = plan.replicas[r];
    if (rep.in_flight < 1) return make_error("replica {}: in_flight must be at least 1 (got {})", r, rep.in_flight);
    if (rep.stages.empty()) return make_error("replica {} has no stages", r);
    for (int d : rep.devices) {
      if (d < 0 || static_cast<size_t>(d) >= sc.devices.size()) {
        return make_error("replica {}: device index {} is not a scenario device", r, d);
      }
      if (owner[static_cast<size_t>(d)] >= 0) {
        return make_error("replicas {} and {} share device '{}': replicas need disjoint device groups",
                          owner[static_cast<size_t>(d)], r, sc.devices[static_cast<size_t>(d)].name);
      }
      owner[static_cast<size_t>(d)] = static_cast<int>(r);
    }
    for (const auto& st : rep.stages) {
      if (std::find(rep.devices.begin(), rep.devices.end(), st.device) == rep.devices.end()) {
        return make_error("replica {}: a stage runs on device {}, outside the replica's group", r, st.device);
      }
    }
  }
  return Ok{};
}

// Merges the replicas' Chrome traces (trace.cpp's format) into one file. Device rows (pid 1) are numbered by
// scenario device and the replicas' devices are disjoint, so their slices go in as they are; link rows (pid 2)
// are numbered per run from 0, so each replica's are moved past the previous ones'. Metadata that every run
// writes alike (process names, the device rows' names) is written once.
Expected<Ok> merge_traces(const std::vector<std::filesystem::path>& parts, const std::filesystem::path& out_path) {
  std::vector<nlohmann::json> slices, metadata;
  std::set<std::string> seen;
  nlohmann::json other = nlohmann::json::object();
  long long events = 0;
  bool truncated = false;
  int link_tid_base = 0;
  for (size_t r = 0; r < parts.size(); ++r) {
    nlohmann::json part;
    try {
      std::ifstream in(parts[r]);
      if (!in) return make_error("cannot read the trace of replica {} ('{}')", r, parts[r].string());
      part = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      return make_error("the trace of replica {} ('{}') is not JSON: {}", r, parts[r].string(), e.what());
    }
    int next_base = link_tid_base;
    for (auto& e : part.at("traceEvents")) {
      if (e.value("pid", 0) == detail::TraceWriter::kLinkPid && e.contains("tid")) {
        const int tid = e["tid"].get<int>() + link_tid_base;
        e["tid"] = tid;
        next_base = std::max(next_base, tid + 1);
      }
      if (e.value("ph", "") == "M") {
        if (seen.insert(e.dump()).second) metadata.push_back(std::move(e));
      } else {
        slices.push_back(std::move(e));
      }
    }
    link_tid_base = next_base;
    const auto o = part.value("otherData", nlohmann::json::object());
    if (r == 0) other = o;
    events += o.value("events", 0LL);
    truncated = truncated || o.value("truncated", false);
  }
  other["events"] = events;
  other["truncated"] = truncated;
  other["replicas"] = parts.size();
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  if (!out) return make_error("cannot write the trace to '{}'", out_path.string());
  out << "{\"traceEvents\":[\n";
  bool first = true;
  for (const auto* list : {&slices, &metadata}) {
    for (const auto& e : *list) {
      if (!first) out << ",\n";
      first = false;
      out << e.dump();
    }
  }
  out << "\n],\"displayTimeUnit\":\"ms\",\"otherData\":" << other.dump() << "}\n";
  out.close();
  if (!out) return make_error("cannot write the trace to '{}'", out_path.string());
  return Ok{};
}

// A replicated plan (see simulator.hpp): every replica run alone on its own problem, the results merged as
// partition::predict_replicated merges its replays.
Expected<SimResult> run_replicated(const partition::CostModel& cost, const partition::Plan& plan,
                                   const SimOptions& options) {
  const auto& sc = cost.scenario();
  const auto& replicas = plan.replicas;
  if (options.faults) {
    const auto& faults = options.fault_list ? *options.fault_list : sc.faults;
    if (!faults.empty()) {
      return make_error(
          "faults are not simulated on replicated plans ({} replicas): plan one pipeline to simulate them (set "
          "[planner] replicas = false in the scenario), or simulate without faults",
          replicas.size());
    }
  }
  if (auto ok = check_replicas(cost, plan); !ok) return ok.error();

  std::vector<long long> shares;
  if (options.max_requests > 0) {
    shares = partition::share_requests(replicas, options.max_requests);  // as predict_replicated shares a replay
  } else {
    for (const auto& r : replicas) shares.push_back(std::max<long long>(r.requests, r.in_flight));
  }
  const long long total = std::accumulate(shares.begin(), shares.end(), 0LL);

  std::vector<std::filesystem::path> trace_parts;
  auto remove_parts = [&trace_parts] {
    std::error_code ec;
    for (const auto& t : trace_parts) std::filesystem::remove(t, ec);
  };
  std::vector<SimResult> results;
  long long done = 0;
  for (size_t r = 0; r < replicas.size(); ++r) {
    const auto& rep = replicas[r];
    auto problem = partition::replica_problem(cost, rep.devices, rep.in_flight, shares[r]);
    partition::Plan one;
    one.planner = plan.planner;
    one.objective = plan.objective;
    one.stages = rep.stages;
    one.predicted = rep.predicted;

    SimOptions sub = options;
    sub.faults = false;
    sub.fault_list.reset();
    sub.max_requests = 0;  // the replica's problem holds its share
    sub.isolate = true;    // one SimGrid engine per process: every replica needs its own
    sub.progress = nullptr;
    if (options.progress) {
      sub.progress = [&options, done, total](const SimProgress& p) {
        options.progress(SimProgress{done + p.completed, total, p.sim_time_s});
      };
    }
    if (!options.trace_path.empty()) {
      sub.trace_path = options.trace_path.string() + fmt::format(".replica{}", r);
      // The event budget shared out: the merged trace keeps at most trace_max_events slices.
      const auto n = static_cast<long long>(replicas.size());
      sub.trace_max_events = options.trace_max_events / n + (static_cast<long long>(r) < options.trace_max_events % n);
      trace_parts.push_back(sub.trace_path);
    }
    auto result = run_simulation(*problem.cost, one, sub);
    if (!result) {
      remove_parts();
      auto e = result.error();
      e.message = fmt::format("replica {} ({} stages): {}", r, rep.stages.size(), e.message);
      return e;
    }
    done += shares[r];
    results.push_back(std::move(*result));
  }
  if (!trace_parts.empty()) {
    auto merged = merge_traces(trace_parts, options.trace_path);
    remove_parts();
    if (!merged) return merged.error();
  }

  SimResult out;
  std::vector<runtime::ReplicaRun> runs;
  for (const auto& res : results) {
    runs.push_back({res.report, res.completions_s, res.latencies_ms,
                    res.report.requests_completed * cost.shape().output_tokens, res.ttft_ms, res.tpot_ms});
    out.latencies_ms.insert(out.latencies_ms.end(), res.latencies_ms.begin(), res.latencies_ms.end());
    out.ttft_ms.insert(out.ttft_ms.end(), res.ttft_ms.begin(), res.ttft_ms.end());
    out.tpot_ms.insert(out.tpot_ms.end(), res.tpot_ms.begin(), res.tpot_ms.end());
    out.completions_s.insert(out.completions_s.end(), res.completions_s.begin(), res.completions_s.end());
    out.stats.wall_s += res.stats.wall_s;
    out.stats.sim_time_s = std::max(out.stats.sim_time_s, res.stats.sim_time_s);
    out.stats.stage_executions += res.stats.stage_executions;
    out.stats.transfers += res.stats.transfers;
    out.stats.trace_events += res.stats.trace_events;
    out.stats.peak_rss_kb = std::max(out.stats.peak_rss_kb, res.stats.peak_rss_kb);
  }
  out.report = runtime::merge_replicas(sc, replicas, runs, "sim", plan.planner);
  return out;
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
  if (!plan.replicas.empty()) return run_replicated(cost, plan, options);
  std::optional<detail::FaultSetup> setup;
  if (options.faults) {
    auto heartbeat = heartbeat_settings(cost.scenario(), options);
    if (!heartbeat) return heartbeat.error();
    setup = detail::FaultSetup{&cost,
                               options.fault_list ? *options.fault_list : cost.scenario().faults,
                               plan.planner,
                               plan.objective,
                               !plan.backups.empty(),
                               *heartbeat,
                               options.replan_cache};
    std::stable_sort(setup->faults.begin(), setup->faults.end(), [](const auto& a, const auto& b) { return a.at_s < b.at_s; });
    for (const auto& f : setup->faults) {
      if (cost.scenario().device_index(f.device) < 0) {
        return make_error("fault at {} s names an unknown device '{}'", f.at_s, f.device);
      }
    }
  }
  auto spec = detail::build_pipeline(cost, plan, options.max_requests, options.seed, options.stagger_start,
                                     std::move(setup));
  if (!spec) return spec.error();
  return detail::run_spec(*spec, options);
}

Expected<partition::RecoverySettings> heartbeat_settings(const partition::Scenario& scenario, const SimOptions& options) {
  auto h = scenario.recovery;
  if (options.heartbeat_interval_s) h.heartbeat_interval_s = *options.heartbeat_interval_s;
  if (options.heartbeat_timeout_s) h.heartbeat_timeout_s = *options.heartbeat_timeout_s;
  if (!(h.heartbeat_interval_s > 0) || h.heartbeat_timeout_s < h.heartbeat_interval_s) {
    return make_error("heartbeat timeout ({} s) must be at least the interval ({} s), which must be positive",
                      h.heartbeat_timeout_s, h.heartbeat_interval_s);
  }
  return h;
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

Expected<runtime::RunReport> simulate(const partition::CostModel& cost, const partition::Plan& plan,
                                        const SimOptions& options) {
  auto result = run_simulation(cost, plan, options);
  if (!result) return result.error();
  return std::move(result->report);
}

}  // namespace adaptlink::sim

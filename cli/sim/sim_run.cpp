// adaptlink-sim run | compare (see sim_commands.hpp).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <numeric>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "adaptlink/planner/planner.hpp"
#include "adaptlink/partition/problem.hpp"
#include "adaptlink/partition/profile.hpp"
#include "adaptlink/runtime/report.hpp"
#include "adaptlink/sim/simulator.hpp"
#include "common.hpp"
#include "sim_commands.hpp"

namespace al = adaptlink;
namespace part = adaptlink::partition;
namespace fs = std::filesystem;

namespace {

struct CommonOptions {
  std::string scenario;
  std::string objective;  // empty: the scenario's
  std::string format = "table";
  std::uint64_t seed = 1;
  std::string network_model = "CM02";
  std::vector<std::string> profiles;
  long long requests = 0;
  std::optional<double> heartbeat_interval_s;  // unset: the scenario's [recovery]
  std::optional<double> heartbeat_timeout_s;
};

struct RunOptions : CommonOptions {
  std::string planner;
  std::string out;
  bool no_trace = false;
  double trace_from_s = 0;
  double trace_until_s = -1;  // < 0: no limit
  long long trace_max_events = 200000;
  bool quiet = false;
};

struct CompareOptions : CommonOptions {
  std::vector<std::string> planners;
  std::string output;
};

void add_common(CLI::App* cmd, CommonOptions& o) {
  cmd->add_option("scenario", o.scenario, "Scenario TOML file")->required();
  cmd->add_option("--objective", o.objective, "throughput | latency (default: the scenario's)")
      ->check(CLI::IsMember({"throughput", "latency"}));
  cmd->add_option("--seed", o.seed, "Seed of the Poisson arrivals (default 1)");
  cmd->add_option("--network-model", o.network_model,
                  "SimGrid network model: CM02 (exact, default), LV08, SMPI, IB, Constant")
      ->check(CLI::IsMember(al::sim::network_models()));
  cmd->add_option("--profile", o.profiles,
                  "Measured per-node times (JSON, adaptlink-run profile; sim/README.md); repeatable");
  cmd->add_option("--requests", o.requests, "Simulate N requests instead of the scenario's workload.requests")
      ->check(CLI::PositiveNumber);
  al::cli::add_heartbeat_options(cmd, o.heartbeat_interval_s, o.heartbeat_timeout_s);
}

struct Loaded {
  std::unique_ptr<part::Problem> problem;
  part::Objective objective = part::Objective::throughput;
};

// Scenario, profiles, objective: errors are bad input (exit 2).
al::Expected<Loaded> load(const CommonOptions& o) {
  auto problem = part::load_problem(o.scenario);
  if (!problem) return problem.error();
  Loaded l;
  l.problem = std::move(*problem);
  if (auto st = part::apply_profiles(o.profiles, *l.problem->cost); !st) return st.error();
  l.objective = l.problem->scenario.planner.objective;
  if (o.objective == "throughput") l.objective = part::Objective::throughput;
  if (o.objective == "latency") l.objective = part::Objective::latency;
  al::sim::SimOptions heartbeat;
  heartbeat.heartbeat_interval_s = o.heartbeat_interval_s;
  heartbeat.heartbeat_timeout_s = o.heartbeat_timeout_s;
  if (auto h = al::sim::heartbeat_settings(l.problem->scenario, heartbeat); !h) return h.error();
  return l;
}

al::Expected<part::Plan> plan_for(const Loaded& l, const std::string& planner, const std::string& file) {
  auto plan = part::make_plan(*l.problem->cost, planner, l.objective);
  if (!plan) {
    auto e = plan.error();
    if (e.file.empty()) e.file = file;
    return e;
  }
  return plan;
}

// `admitted`: the requests a plan admits at once (0: not known, as in a comparison of several plans).
std::string workload_text(const part::Scenario& sc, long long requests, int admitted = 0) {
  const auto& w = sc.workload;
  const long long n = requests > 0 ? requests : w.requests;
  const std::string admits = admitted > 0 ? fmt::format(", {} admitted at once", admitted) : "";
  if (w.arrival == part::Arrival::closed) {
    return fmt::format("{} requests, closed loop with {} in flight{}, {} output tokens", n, w.in_flight,
                       admitted > 0 && admitted != w.in_flight ? admits : "", w.shape.output_tokens);
  }
  if (w.arrival == part::Arrival::saturate) {
    return fmt::format("{} requests, saturate (unlimited demand){}, {} output tokens", n, admits, w.shape.output_tokens);
  }
  return fmt::format("{} requests, Poisson arrivals at {}/s, {} output tokens", n, w.rate_per_s, w.shape.output_tokens);
}

// "a>b>c", or per replica of a replicated plan "a>b | c | d".
std::string stage_devices(const part::Plan& plan, const part::Scenario& sc) {
  auto one = [&sc](const std::vector<part::Stage>& stages) {
    std::string s;
    for (const auto& st : stages) s += (s.empty() ? "" : ">") + sc.devices[static_cast<size_t>(st.device)].name;
    return s;
  };
  if (plan.replicas.empty()) return one(plan.stages);
  std::string s;
  for (const auto& r : plan.replicas) s += (s.empty() ? "" : " | ") + one(r.stages);
  return s;
}

// Progress on stderr when it is a terminal.
std::function<void(const al::sim::SimProgress&)> progress_printer(const std::string& label, bool quiet) {
  if (quiet || ::isatty(STDERR_FILENO) == 0) return {};
  auto last = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
  return [label, last](const al::sim::SimProgress& p) {
    const auto now = std::chrono::steady_clock::now();
    if (p.completed < p.total && now - *last < std::chrono::milliseconds(200)) return;
    *last = now;
    std::cerr << fmt::format("\r{}: {}/{} requests, simulated {:.1f} s", label, p.completed, p.total, p.sim_time_s)
              << (p.completed >= p.total ? "\n" : "") << std::flush;
  };
}

al::Expected<fs::path> make_run_dir(const std::string& requested, const std::string& scenario_name) {
  fs::path dir = requested;
  if (dir.empty()) {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
    const fs::path base = fs::path("runs") / scenario_name / stamp;
    dir = base;
    for (int k = 2; fs::exists(dir); ++k) dir = base.string() + fmt::format("-{}", k);
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return al::make_error("{}: cannot create the output directory: {}", dir.string(), ec.message());
  return dir;
}

al::Status write_file(const fs::path& path, const std::string& text) { return al::cli::write_output(path.string(), text); }

// `cost`: the one the plan ran on (PlanCost); `original`: the scenario as written (its workload).
std::string summary_table(const part::Plan& plan, const part::CostModel& cost, const part::Scenario& original,
                          const al::sim::SimResult& result, const std::string& model, long long requests) {
  const auto& r = result.report;
  const auto& stats = result.stats;
  const auto& sc = cost.scenario();
  std::string out = fmt::format("scenario {}: planner {}, {}, stage batches of up to {}, network model {}\n\n", sc.name,
                                plan.planner, workload_text(original, requests, sc.workload.in_flight),
                                part::effective_max_batch(sc.planner, sc.workload.in_flight), model);
  al::cli::Table t({"metric", "simulated", "predicted", "sim/pred"});
  const auto& p = plan.predicted;
  auto ratio = [](double a, double b) { return b > 0 ? fmt::format("{:.4f}", a / b) : std::string("-"); };
  t.add({"throughput (requests/s)", fmt::format("{:.5f}", r.throughput_rps), fmt::format("{:.5f}", p.throughput_rps),
         ratio(r.throughput_rps, p.throughput_rps)});
  t.add({"tokens/s", fmt::format("{:.2f}", r.tokens_per_s), fmt::format("{:.2f}", p.tokens_per_s),
         ratio(r.tokens_per_s, p.tokens_per_s)});
  // The prediction's latency is a mean (of the replay's requests): compare like with like. A replicated plan's
  // percentiles mix fast and slow replicas and can sit far from the mean.
  const auto& lat = result.latencies_ms;
  const double mean = lat.empty() ? 0.0 : std::accumulate(lat.begin(), lat.end(), 0.0) / static_cast<double>(lat.size());
  t.add({"latency mean (ms)", fmt::format("{:.1f}", mean), fmt::format("{:.1f}", p.latency_ms), ratio(mean, p.latency_ms)});
  t.add({"latency p50 (ms)", fmt::format("{:.1f}", r.latency_ms.p50), "", ""});
  t.add({"latency p95 (ms)", fmt::format("{:.1f}", r.latency_ms.p95), "", ""});
  t.add({"latency p99 (ms)", fmt::format("{:.1f}", r.latency_ms.p99), "", ""});
  // The replay's percentiles cover its steady window (planner/replay.hpp), the simulator's every request.
  const std::pair<double, double> predicted_ttft{p.ttft_p50_ms, p.ttft_p99_ms}, predicted_tpot{p.tpot_p50_ms, p.tpot_p99_ms};
  for (auto [what, summary, pred] : {std::tuple{"time to first token", &r.ttft_ms, predicted_ttft},
                                     std::tuple{"time per output token", &r.tpot_ms, predicted_tpot}}) {
    if (!*summary) continue;
    auto cell = [](double v) { return v > 0 ? fmt::format("{:.1f}", v) : std::string(); };
    t.add({fmt::format("{} p50 (ms)", what), fmt::format("{:.1f}", (*summary)->p50), cell(pred.first),
           pred.first > 0 ? ratio((*summary)->p50, pred.first) : ""});
    t.add({fmt::format("{} p99 (ms)", what), fmt::format("{:.1f}", (*summary)->p99), cell(pred.second),
           pred.second > 0 ? ratio((*summary)->p99, pred.second) : ""});
  }
  t.add({"bubble fraction", fmt::format("{:.3f}", r.bubble_fraction), "", ""});
  t.add({"requests completed", std::to_string(r.requests_completed), "", ""});
  out += t.str() + "\n";
  al::cli::Table d({"device", "stage", "layers", "busy_ms/request", "utilization"});
  for (size_t i = 0; i < r.device_utilization.size(); ++i) {
    std::string stage = "-", layers = "-", busy = "-";
    // A replicated plan's stages are named by replica: "r1 s0".
    const size_t replicas = std::max<size_t>(1, plan.replicas.size());
    for (size_t rep = 0; rep < replicas; ++rep) {
      const auto& stages = plan.replicas.empty() ? plan.stages : plan.replicas[rep].stages;
      for (size_t s = 0; s < stages.size(); ++s) {
        const auto& st = stages[s];
        if (st.device == static_cast<int>(i)) {
          stage = plan.replicas.empty() ? std::to_string(s) : fmt::format("r{} s{}", rep, s);
          layers = fmt::format("{}-{}", st.first_node, st.last_node);
          busy = fmt::format("{:.1f}", st.prefill_ms + st.decode_ms);
        }
      }
    }
    d.add({r.device_utilization[i].first, stage, layers, busy, fmt::format("{:.3f}", r.device_utilization[i].second)});
  }
  out += d.str();
  out += fmt::format("\nsimulated {:.1f} s in {:.2f} s wall ({} stage executions, {} link transfers)\n", stats.sim_time_s,
                     stats.wall_s, stats.stage_executions, stats.transfers);
  return out;
}

int cmd_run(const RunOptions& o) {
  auto loaded = load(o);
  if (!loaded) return al::cli::report(loaded.error(), "adaptlink-sim");
  const auto& problem = *loaded->problem;
  const std::string planner = o.planner.empty() ? problem.scenario.planner.name : o.planner;
  auto plan = plan_for(*loaded, planner, o.scenario);
  if (!plan) return al::cli::report(plan.error(), "adaptlink-sim");
  const part::PlanCost runs(*problem.cost, *plan);  // its admission limit and batch limit
  const auto& cost = runs.get();

  auto dir = make_run_dir(o.out, problem.scenario.name);
  if (!dir) return al::cli::report(dir.error(), "adaptlink-sim");
  if (auto st = write_file(*dir / "scenario.toml", part::to_toml(problem.scenario)); !st) {
    return al::cli::report(st.error(), "adaptlink-sim");
  }
  if (auto st = write_file(*dir / "plan.json", part::to_json(*plan, cost).dump(2) + "\n"); !st) {
    return al::cli::report(st.error(), "adaptlink-sim");
  }

  al::sim::SimOptions options;
  options.faults = true;
  options.seed = o.seed;
  options.network_model = o.network_model;
  options.max_requests = o.requests;
  options.heartbeat_interval_s = o.heartbeat_interval_s;
  options.heartbeat_timeout_s = o.heartbeat_timeout_s;
  options.progress = progress_printer("simulating " + planner, o.quiet);
  if (!o.no_trace) {
    options.trace_path = *dir / "trace.json";
    options.trace_from_s = o.trace_from_s;
    if (o.trace_until_s >= 0) options.trace_until_s = o.trace_until_s;
    options.trace_max_events = o.trace_max_events;
  }
  auto result = al::sim::run_simulation(cost, *plan, options);
  if (!result) {
    al::cli::report(result.error(), "adaptlink-sim");
    return al::cli::kExitFailure;
  }
  if (auto st = write_file(*dir / "report.json", al::runtime::to_json(result->report).dump(2) + "\n"); !st) {
    return al::cli::report(st.error(), "adaptlink-sim");
  }
  if (o.format == "json") {
    std::cout << al::runtime::to_json(result->report).dump(2) << "\n";
  } else {
    std::cout << summary_table(*plan, cost, problem.scenario, *result, o.network_model, o.requests);
    std::cout << fmt::format("wrote {}/{{scenario.toml, plan.json, report.json{}}}\n", dir->string(),
                             o.no_trace ? "" : ", trace.json");
  }
  return al::cli::kExitOk;
}

int cmd_compare(const CompareOptions& o) {
  auto loaded = load(o);
  if (!loaded) return al::cli::report(loaded.error(), "adaptlink-sim");
  const auto& problem = *loaded->problem;
  const auto& cost = *problem.cost;
  std::vector<std::string> planners = o.planners.empty() ? part::planner_names() : o.planners;
  for (const auto& name : planners) {
    auto made = part::make_planner(name);
    if (!made) return al::cli::report(made.error(), "adaptlink-sim");
  }
  bool has_uniform = false;
  for (const auto& p : planners) has_uniform = has_uniform || p == "uniform";
  if (!has_uniform) planners.insert(planners.begin(), "uniform");  // the reference for the ratios

  struct Row {
    std::string planner;
    std::optional<part::Plan> plan;
    std::optional<part::PlanCost> runs;  // the cost model the plan runs on (its admission and batch limits)
    std::optional<al::runtime::RunReport> report;
    std::string error;
  };
  std::vector<Row> rows;
  bool any = false;
  for (const auto& name : planners) {
    Row row{name, std::nullopt, std::nullopt, std::nullopt, ""};
    auto plan = plan_for(*loaded, name, o.scenario);
    if (!plan) {
      row.error = plan.error().message;
    } else {
      row.plan = *plan;
      row.runs.emplace(cost, *row.plan);
      al::sim::SimOptions options;
      options.faults = true;
      options.seed = o.seed;
      options.network_model = o.network_model;
      options.max_requests = o.requests;
      options.heartbeat_interval_s = o.heartbeat_interval_s;
      options.heartbeat_timeout_s = o.heartbeat_timeout_s;
      options.progress = progress_printer("simulating " + name, false);
      auto report = al::sim::simulate(row.runs->get(), *plan, options);
      if (!report) {
        row.error = report.error().to_string();
      } else {
        row.report = *report;
        any = true;
      }
    }
    rows.push_back(std::move(row));
  }
  double uniform_rps = 0;
  for (const auto& r : rows) {
    if (r.planner == "uniform" && r.report) uniform_rps = r.report->throughput_rps;
  }
  auto ratio_of = [&](const Row& r) -> std::optional<double> {
    if (!r.report || uniform_rps <= 0) return std::nullopt;
    return r.report->throughput_rps / uniform_rps;
  };

  std::string text;
  if (o.format == "json") {
    nlohmann::json results = nlohmann::json::array();
    for (const auto& r : rows) {
      nlohmann::json j{{"planner", r.planner}};
      if (r.plan) {
        auto device_names = [&](const std::vector<part::Stage>& stages) {
          nlohmann::json devices = nlohmann::json::array();
          for (const auto& st : stages) devices.push_back(problem.scenario.devices[st.device].name);
          return devices;
        };
        j["stages"] = device_names(r.plan->stages);  // a replicated plan: its first replica's (as in plan JSON)
        if (!r.plan->replicas.empty()) {
          nlohmann::json replicas = nlohmann::json::array();
          for (const auto& rep : r.plan->replicas) {
            replicas.push_back({{"stages", device_names(rep.stages)}, {"in_flight", rep.in_flight}, {"requests", rep.requests}});
          }
          j["replicas"] = replicas;
        }
        const auto& ran = r.runs->scenario();
        j["in_flight"] = ran.workload.in_flight;
        j["max_batch"] = part::effective_max_batch(ran.planner, ran.workload.in_flight);
        j["predicted"] = part::prediction_json(r.plan->predicted);
      }
      if (r.report) {
        j["report"] = al::runtime::to_json(*r.report);
        j["mean_utilization"] = 1.0 - r.report->bubble_fraction;
        auto ratio = ratio_of(r);
        j["ratio_to_uniform"] = ratio ? nlohmann::json(*ratio) : nlohmann::json(nullptr);
      }
      if (!r.error.empty()) j["error"] = r.error;
      results.push_back(j);
    }
    const auto& w = problem.scenario.workload;
    nlohmann::json out{{"scenario", problem.scenario.name},
                       {"backend", "sim"},
                       {"network_model", o.network_model},
                       {"seed", o.seed},
                       {"requests", o.requests > 0 ? o.requests : w.requests},
                       {"arrival", part::arrival_name(w.arrival)},
                       {"in_flight", w.in_flight},
                       {"output_tokens", w.shape.output_tokens},
                       {"baseline", "uniform"},
                       {"results", results}};
    text = out.dump(2) + "\n";
  } else {
    text = fmt::format("scenario {}: {}, network model {}\n\n", problem.scenario.name,
                       workload_text(problem.scenario, o.requests), o.network_model);
    al::cli::Table t({"planner", "stages", "pred_rps", "sim_rps", "sim/pred", "tokens/s", "p50_ms", "p95_ms", "util",
                      "bubble", "x_uniform", "in_flight", "batch", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms",
                      "tpot_p99_ms"});
    for (const auto& r : rows) {
      if (!r.report) {
        t.add({r.planner, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"});
        continue;
      }
      const auto& ran = r.runs->scenario();
      const auto& rep = *r.report;
      auto ratio = ratio_of(r);
      const double pred = r.plan->predicted.throughput_rps;
      t.add({r.planner, stage_devices(*r.plan, problem.scenario), fmt::format("{:.5f}", pred),
             fmt::format("{:.5f}", rep.throughput_rps), pred > 0 ? fmt::format("{:.4f}", rep.throughput_rps / pred) : "-",
             fmt::format("{:.2f}", rep.tokens_per_s), fmt::format("{:.0f}", rep.latency_ms.p50),
             fmt::format("{:.0f}", rep.latency_ms.p95), fmt::format("{:.3f}", 1.0 - rep.bubble_fraction),
             fmt::format("{:.3f}", rep.bubble_fraction), ratio ? fmt::format("{:.3f}", *ratio) : "-",
             std::to_string(ran.workload.in_flight),
             std::to_string(part::effective_max_batch(ran.planner, ran.workload.in_flight)),
             rep.ttft_ms ? fmt::format("{:.0f}", rep.ttft_ms->p50) : "-",
             rep.ttft_ms ? fmt::format("{:.0f}", rep.ttft_ms->p99) : "-",
             rep.tpot_ms ? fmt::format("{:.1f}", rep.tpot_ms->p50) : "-",
             rep.tpot_ms ? fmt::format("{:.1f}", rep.tpot_ms->p99) : "-"});
    }
    text += t.str();
    for (const auto& r : rows) {
      if (!r.error.empty()) text += fmt::format("{}: {}\n", r.planner, r.error);
    }
  }
  if (auto st = al::cli::write_output(o.output, text); !st) return al::cli::report(st.error(), "adaptlink-sim");
  if (!any) {
    std::cerr << "adaptlink-sim: no planner produced a plan that could be simulated\n";
    return al::cli::kExitBadInput;
  }
  return al::cli::kExitOk;
}

}  // namespace

void add_sim_commands(CLI::App& app, std::function<int()>& action) {
  auto run_opts = std::make_shared<RunOptions>();
  auto* run = app.add_subcommand("run", "Simulate one plan with SimGrid; write scenario.toml, plan.json, report.json, "
                                        "trace.json");
  add_common(run, *run_opts);
  run->add_option("--planner", run_opts->planner,
                  al::cli::planner_choices() + " (default: the scenario's)");
  run->add_option("--out", run_opts->out, "Output directory (default runs/<scenario>/<timestamp>)");
  run->add_option("--format", run_opts->format, "table | json (the report)")
      ->check(CLI::IsMember({"table", "text", "json"}));
  run->add_flag("--no-trace", run_opts->no_trace, "Do not write trace.json");
  run->add_option("--trace-from", run_opts->trace_from_s, "Trace slices starting at or after S seconds (default 0)");
  run->add_option("--trace-until", run_opts->trace_until_s, "Trace slices starting up to S seconds (default: end)");
  run->add_option("--trace-max-events", run_opts->trace_max_events, "At most N trace slices (default 200000)")
      ->check(CLI::NonNegativeNumber);
  run->add_flag("-q,--quiet", run_opts->quiet, "No progress on stderr");
  run->callback([&action, run_opts] { action = [run_opts] { return cmd_run(*run_opts); }; });

  auto cmp_opts = std::make_shared<CompareOptions>();
  auto* compare = app.add_subcommand("compare", "Simulate every planner on the same workload; ratios to uniform");
  add_common(compare, *cmp_opts);
  compare->add_option("--planners", cmp_opts->planners, "Comma-separated planners (default: all)")->delimiter(',');
  compare->add_option("--format", cmp_opts->format, "table | json")->check(CLI::IsMember({"table", "text", "json"}));
  compare->add_option("-o,--output", cmp_opts->output, "Write the table or JSON to FILE instead of stdout");
  compare->callback([&action, cmp_opts] { action = [cmp_opts] { return cmd_compare(*cmp_opts); }; });

  add_sweep_command(app, action);
}

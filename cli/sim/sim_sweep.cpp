// adaptlink-sim sweep: seeded Monte Carlo dropouts, with and without backups (see sim_commands.hpp and
// adaptlink/sim/sweep.hpp for the dropout model).
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "adaptlink/planner/planner.hpp"
#include "adaptlink/partition/problem.hpp"
#include "adaptlink/partition/profile.hpp"
#include "adaptlink/sim/simulator.hpp"
#include "adaptlink/sim/sweep.hpp"
#include "common.hpp"
#include "sim_commands.hpp"

extern char** environ;

namespace al = adaptlink;
namespace part = adaptlink::partition;
namespace fs = std::filesystem;

namespace {

struct SweepCliOptions {
  std::string scenario;
  std::vector<std::string> rates;  // as given: parsed in cmd_sweep for one-line errors
  int runs = 5;
  std::uint64_t seed = 1;
  std::string out;
  std::string format = "text";
  std::string planner;
  std::string objective;
  std::string network_model = "CM02";
  long long requests = 0;
  std::vector<std::string> profiles;
  double mean_downtime_s = 60;
  std::optional<double> heartbeat_interval_s;  // unset: the scenario's [recovery]
  std::optional<double> heartbeat_timeout_s;
  bool no_plot = false;
  bool quiet = false;
};

al::Expected<std::vector<double>> parse_rates(const std::vector<std::string>& items) {
  std::vector<double> rates;
  for (const auto& item : items) {
    std::string s = item;
    while (!s.empty() && s.front() == ' ') s.erase(s.begin());
    while (!s.empty() && s.back() == ' ') s.pop_back();
    if (s.empty()) continue;
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(s.c_str(), &end);
    if (end == s.c_str() || *end != '\0' || errno != 0 || !std::isfinite(v)) {
      return al::make_error("--dropout-rate: '{}' is not a number", s);
    }
    if (v < 0) return al::make_error("--dropout-rate: rates must be >= 0 (got {})", s);
    rates.push_back(v);
  }
  if (rates.empty()) return al::make_error("--dropout-rate: no rates given (expected e.g. 0,2,6)");
  return rates;
}

al::Expected<fs::path> make_sweep_dir(const std::string& requested, const std::string& scenario_name) {
  fs::path dir = requested;
  if (dir.empty()) {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
    const fs::path base = fs::path("runs") / scenario_name / (std::string("sweep-") + stamp);
    dir = base;
    for (int k = 2; fs::exists(dir); ++k) dir = base.string() + fmt::format("-{}", k);
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return al::make_error("{}: cannot create the output directory: {}", dir.string(), ec.message());
  return dir;
}

std::string plot_script() {
  if (const char* env = std::getenv("ADAPTLINK_SWEEP_PLOT"); env != nullptr && *env != '\0') return env;
#ifdef ADAPTLINK_SWEEP_PLOT
  return ADAPTLINK_SWEEP_PLOT;
#else
  return "sim/plot_sweep.py";
#endif
}

// Runs `/usr/bin/python3 sim/plot_sweep.py DIR/sweep.json -o DIR/sweep.png` (output in DIR/plot.log). Returns "" when the
// plot was written, else why not (one line).
std::string plot(const fs::path& dir) {
  const std::string script = plot_script();
  if (!fs::exists(script)) return fmt::format("the plot script {} is missing", script);
  const std::string json = (dir / "sweep.json").string(), png = (dir / "sweep.png").string();
  const std::string log = (dir / "plot.log").string();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  // Debian's python3 (with python3-matplotlib) before whatever python3 comes first on PATH.
  const std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  std::vector<std::string> args = {python, script, json, "-o", png};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, python.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return fmt::format("cannot run python3: {}", std::strerror(rc));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && fs::exists(png)) {
    std::error_code ec;
    fs::remove(log, ec);
    return "";
  }
  std::ifstream in(log);
  std::string line, last;
  while (std::getline(in, line)) {
    if (!line.empty()) last = line;
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) return "python3 is not installed";
  return fmt::format("{} failed ({}; see {})", script, last.empty() ? "no message" : last, log);
}

std::string ms_or_dash(const std::optional<double>& v) { return v ? fmt::format("{:.0f}", *v) : "-"; }

std::string sweep_table(const al::sim::SweepResult& r, const al::sim::SweepOptions& o, const part::Scenario& sc) {
  const auto& ff = *r.fault_free.report;
  std::string devices;
  for (const auto& d : r.active_devices) devices += (devices.empty() ? "" : ", ") + d;
  std::string out = fmt::format(
      "scenario {}: planner {}, {} requests; fault-free: {:.5f} requests/s (steady {:.5f}), p99 {:.0f} ms, "
      "makespan {:.1f} s\n"
      "dropouts: Poisson per active device ({}) over the fault-free makespan, rate in dropouts per device per hour;\n"
      "a dropped device stays out for an exponential time (mean {:g} s), then rejoins empty; {} runs per rate, seed {}\n"
      "rps = requests completed / makespan (recovery stalls included), mean over the runs\n\n",
      sc.name, r.planner, r.requests, r.fault_free.goodput_rps, ff.throughput_rps, ff.latency_ms.p99, r.horizon_s,
      devices, o.mean_downtime_s, o.runs, o.seed);
  al::cli::Table t({"rate/h", "dropouts", "skipped", "rps_backup", "rps_redeploy", "backup/redeploy", "p99_backup_ms",
                    "p99_redeploy_ms", "recovery_backup_ms", "recovery_redeploy_ms", "lost"});
  for (const auto& rate : r.rates) {
    const auto& w = rate.with_backups;
    const auto& wo = rate.without_backups;
    t.add({fmt::format("{:g}", rate.rate_per_hour), std::to_string(rate.dropouts), std::to_string(rate.skipped_dropouts),
           fmt::format("{:.5f}", w.mean_goodput_rps), fmt::format("{:.5f}", wo.mean_goodput_rps),
           wo.mean_goodput_rps > 0 ? fmt::format("{:.3f}", w.mean_goodput_rps / wo.mean_goodput_rps) : "-",
           fmt::format("{:.0f}", w.mean_p99_ms), fmt::format("{:.0f}", wo.mean_p99_ms), ms_or_dash(w.mean_recovery_ms),
           ms_or_dash(wo.mean_recovery_ms), std::to_string(w.requests_lost + wo.requests_lost)});
  }
  out += t.str();
  return out;
}

int cmd_sweep(const SweepCliOptions& o) {
  auto rates = parse_rates(o.rates);
  if (!rates) return al::cli::report(rates.error(), "adaptlink-sim");
  if (o.runs < 1) return al::cli::report(al::make_error("--runs must be at least 1 (got {})", o.runs), "adaptlink-sim");
  if (!(o.mean_downtime_s > 0)) {
    return al::cli::report(al::make_error("--mean-downtime must be positive (got {})", o.mean_downtime_s), "adaptlink-sim");
  }
  auto problem = part::load_problem(o.scenario);
  if (!problem) return al::cli::report(problem.error(), "adaptlink-sim");
  if (auto st = part::apply_profiles(o.profiles, *(*problem)->cost); !st) return al::cli::report(st.error(), "adaptlink-sim");
  // Sweeps draw dropouts, which replicated plans do not simulate: plan one pipeline (its backups and redeploys
  // are what a sweep compares).
  (*problem)->scenario.planner.replicas = false;
  const auto& p = **problem;
  auto objective = p.scenario.planner.objective;
  if (o.objective == "throughput") objective = part::Objective::throughput;
  if (o.objective == "latency") objective = part::Objective::latency;
  const std::string planner = o.planner.empty() ? p.scenario.planner.name : o.planner;
  auto plan = part::make_plan(*p.cost, planner, objective);
  if (!plan) {
    auto e = plan.error();
    if (e.file.empty()) e.file = o.scenario;
    return al::cli::report(e, "adaptlink-sim");
  }
  al::sim::SweepOptions options;
  options.dropout_rates_per_hour = *rates;
  options.runs = o.runs;
  options.seed = o.seed;
  options.mean_downtime_s = o.mean_downtime_s;
  options.sim.network_model = o.network_model;
  options.sim.max_requests = o.requests;
  options.sim.seed = o.seed;
  options.sim.heartbeat_interval_s = o.heartbeat_interval_s;
  options.sim.heartbeat_timeout_s = o.heartbeat_timeout_s;
  if (auto h = al::sim::heartbeat_settings(p.scenario, options.sim); !h) return al::cli::report(h.error(), "adaptlink-sim");
  auto dir = make_sweep_dir(o.out, p.scenario.name);
  if (!dir) return al::cli::report(dir.error(), "adaptlink-sim");
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  const int per_rate = 2 * o.runs;
  if (!o.quiet) {
    auto last = std::make_shared<std::chrono::steady_clock::time_point>();
    options.progress = [tty, per_rate, last](const al::sim::SweepProgress& pr) {
      if (tty) {
        const auto now = std::chrono::steady_clock::now();
        if (pr.done < pr.total && now - *last < std::chrono::milliseconds(200)) return;
        *last = now;
        std::cerr << fmt::format("\rsweep: {}/{} simulations (rate {:g}/h, run {})", pr.done, pr.total,
                                 pr.rate_per_hour, pr.run + 1)
                  << (pr.done >= pr.total ? "\n" : "") << std::flush;
      } else if (pr.run >= 0 && (pr.done - 1) % per_rate == 0) {
        std::cerr << fmt::format("sweep: rate {:g}/h done ({}/{} simulations)\n", pr.rate_per_hour, pr.done, pr.total);
      }
    };
  }
  const part::PlanCost runs(*p.cost, *plan);  // its admission limit and batch limit
  auto result = al::sim::run_sweep(runs.get(), *plan, options);
  if (!result) {
    al::cli::report(result.error(), "adaptlink-sim");
    return al::cli::kExitFailure;
  }
  const auto json = al::sim::to_json(*result, options);
  if (auto st = al::cli::write_output((*dir / "sweep.json").string(), json.dump(2) + "\n"); !st) {
    return al::cli::report(st.error(), "adaptlink-sim");
  }
  std::string plotted = "not plotted (--no-plot)";
  if (!o.no_plot) {
    const std::string why = plot(*dir);
    plotted = why.empty() ? (*dir / "sweep.png").string() : "";
    if (!why.empty()) std::cerr << "adaptlink-sim: sweep.png not written: " << why << "\n";
  }
  if (o.format == "json") {
    std::cout << json.dump(2) << "\n";
  } else {
    std::cout << sweep_table(*result, options, p.scenario);
    std::cout << fmt::format("\nwrote {}{}\n", (*dir / "sweep.json").string(),
                             plotted.empty() ? "" : (o.no_plot ? "" : " and " + plotted));
  }
  if (result->failed > 0) {
    std::cerr << fmt::format("adaptlink-sim: {} simulation(s) failed; see sweep.json\n", result->failed);
    return al::cli::kExitFailure;
  }
  return al::cli::kExitOk;
}

}  // namespace

void add_sweep_command(CLI::App& app, std::function<int()>& action) {
  auto o = std::make_shared<SweepCliOptions>();
  auto* sweep = app.add_subcommand(
      "sweep",
      "Monte Carlo dropouts: for each rate (dropouts per active device per hour) and run, draw seeded Poisson "
      "dropouts and simulate the plan with backups and without (redeploy); write DIR/sweep.json and DIR/sweep.png");
  sweep->add_option("scenario", o->scenario, "Scenario TOML file")->required();
  sweep->add_option("--dropout-rate", o->rates,
                    "Comma-separated dropout rates, dropouts per active device per hour of simulated time (>= 0)")
      ->delimiter(',')
      ->required();
  sweep->add_option("--runs", o->runs, "Runs per rate, each with its own drawn dropouts (default 5)");
  sweep->add_option("--seed", o->seed, "Seed; run r of rate i draws from a seed derived from (seed, i, r) (default 1)");
  sweep->add_option("--mean-downtime", o->mean_downtime_s,
                    "Mean time a dropped device stays out before it rejoins, seconds (exponential; default 60)");
  sweep->add_option("--out", o->out, "Output directory (default runs/<scenario>/sweep-<timestamp>)");
  sweep->add_option("--format", o->format, "text | json (json prints sweep.json)")
      ->check(CLI::IsMember({"text", "table", "json"}));
  sweep->add_option("--planner", o->planner, "Planner (default: the scenario's)");
  sweep->add_option("--objective", o->objective, "throughput | latency (default: the scenario's)")
      ->check(CLI::IsMember({"throughput", "latency"}));
  sweep->add_option("--network-model", o->network_model, "SimGrid network model (default CM02)")
      ->check(CLI::IsMember(al::sim::network_models()));
  sweep->add_option("--profile", o->profiles,
                    "Measured per-node times (JSON, adaptlink-run profile; sim/README.md); repeatable");
  sweep->add_option("--requests", o->requests, "Simulate N requests per run instead of workload.requests")
      ->check(CLI::PositiveNumber);
  al::cli::add_heartbeat_options(sweep, o->heartbeat_interval_s, o->heartbeat_timeout_s);
  sweep->add_flag("--no-plot", o->no_plot, "Do not write sweep.png");
  sweep->add_flag("-q,--quiet", o->quiet, "No progress on stderr");
  sweep->callback([&action, o] { action = [o] { return cmd_sweep(*o); }; });
}

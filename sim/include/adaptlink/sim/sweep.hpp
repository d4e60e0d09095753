// Monte Carlo dropout sweeps (`adaptlink-sim sweep`): for each dropout rate and run, draw dropouts of every active
// device as a Poisson process over the fault-free run's horizon, then simulate the same plan once with its backups
// (switch-over) and once without (redeploy), on the same drawn faults.
//
// Dropout model (see sim/README.md, "Sweeps"):
//   * rate: dropouts per active device (role = "active") per hour of simulated time; standby devices do not
//     drop out. Each device alternates up and down: up for an exponential time (mean 3600 / rate s), then down
//     for an exponential time (mean SweepOptions::mean_downtime_s), after which it rejoins, empty (no weights,
//     no backups), as `kind = "rejoin"` does in a scenario (and is taken back in by a rebalance); then up
//     again, and so on.
//   * horizon: dropouts are drawn in [0, makespan of the fault-free run); a rejoin may fall later.
//   * a drawn dropout that would leave some stage with no device to run it, with or without backups (the last
//     device of the pipeline, or every device with room for a stage, lost), is not applied, nor its rejoin;
//     it is counted in `skipped_dropouts`. So the pipeline always survives and no request is lost.
//   * seeds: run r of rate index i uses std::mt19937_64(derive_sweep_seed(seed, i, r)); devices draw in
//     scenario order. Same options, same faults, same results (sweep.json is byte-identical).
//   * the scenario's own [[faults]] are ignored: a sweep's runs carry only the drawn faults.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "adaptlink/error.hpp"
#include "adaptlink/partition/cost_model.hpp"
#include "adaptlink/partition/plan.hpp"
#include "adaptlink/runtime/report.hpp"
#include "adaptlink/sim/simulator.hpp"

namespace adaptlink::sim {

struct SweepProgress {
  int done = 0;  // simulations finished (the fault-free reference included)
  int total = 0;
  double rate_per_hour = 0;
  int run = 0;
};

struct SweepOptions {
  std::vector<double> dropout_rates_per_hour;  // per active device; each >= 0
  int runs = 5;                                // per rate; >= 1
  std::uint64_t seed = 1;
  double mean_downtime_s = 60;  // mean of the exponential time a dropped device stays out; > 0
  // Network model, max_requests, heartbeat interval and timeout of every simulation. The sweep sets
  // faults / fault_list itself and writes no trace.
  SimOptions sim;
  std::function<void(const SweepProgress&)> progress;  // after each simulation
};

// One simulation of one run: with backups (switch-over) or without (redeploy).
struct SweepSide {
  std::optional<runtime::RunReport> report;  // absent when the simulation failed
  std::string error;
  double makespan_s = 0;    // simulated time to the last completion
  double goodput_rps = 0;   // requests_completed / makespan_s: the whole run, recovery stalls included (the
                            // report's throughput_rps is the steady-state window's, which a stall can fall outside)
  int stage_dropouts = 0;                      // dropouts that moved at least one stage
  int recovered = 0;                           // ... of which recovered before the run ended
  std::optional<double> mean_recovery_ms;      // over those
};

struct SweepRun {
  int rate_index = 0;
  double rate_per_hour = 0;
  int run = 0;
  std::uint64_t seed = 0;
  std::vector<partition::Fault> faults;  // applied: dropouts and rejoins, in time order
  int dropouts = 0;
  int skipped_dropouts = 0;
  SweepSide with_backups;
  SweepSide without_backups;
};

// Aggregate of one side at one rate over the runs that completed.
struct SweepSummary {
  int runs = 0;
  double mean_goodput_rps = 0;    // requests / makespan: what the table and the plot show
  double std_goodput_rps = 0;     // sample standard deviation (0 for one run)
  double mean_throughput_rps = 0;  // the reports' steady-state throughput_rps
  double std_throughput_rps = 0;
  double mean_tokens_per_s = 0;
  double mean_p50_ms = 0;
  double mean_p95_ms = 0;
  double mean_p99_ms = 0;
  long long requests_lost = 0;  // summed over the runs
  int stage_dropouts = 0;
  std::optional<double> mean_recovery_ms;  // pooled over every recovered stage dropout
};

struct SweepRate {
  double rate_per_hour = 0;
  int dropouts = 0;  // applied, over all runs
  int skipped_dropouts = 0;
  SweepSummary with_backups;
  SweepSummary without_backups;
};

struct SweepResult {
  std::string scenario;
  std::string planner;
  std::vector<std::string> active_devices;
  long long requests = 0;
  double horizon_s = 0;              // makespan of the fault-free run: dropouts are drawn before it
  partition::RecoverySettings heartbeat;  // the simulations' (the scenario's [recovery], options overriding)
  SweepSide fault_free;              // the plan without faults (what every run with no dropout reports)
  std::vector<SweepRun> runs;        // rate-major
  std::vector<SweepRate> rates;
  int failed = 0;                    // simulations that failed (their error is in the run)
};

// The seed of run `run` of rate index `rate_index` (splitmix64 over the three).
std::uint64_t derive_sweep_seed(std::uint64_t seed, int rate_index, int run);

// The dropouts and rejoins drawn for one run (before the survivability filter), in time order.
std::vector<partition::Fault> draw_dropouts(const partition::Scenario& scenario, double rate_per_hour,
                                            double mean_downtime_s, double horizon_s, std::uint64_t seed);

// Runs the sweep on `plan` (its stages; the sweep places backups itself for the "with" side, and clears them for
// the "without" side). Bad options are an error, and so is a replicated plan (faults are not simulated on
// those; adaptlink-sim sweep plans with replicas off); a failing simulation is recorded in its run.
Expected<SweepResult> run_sweep(const partition::CostModel& cost, const partition::Plan& plan,
                                const SweepOptions& options);

// sweep.json: the options, the fault-free reference, every run and the per-rate summaries.
nlohmann::json to_json(const SweepResult& result, const SweepOptions& options);

}  // namespace adaptlink::sim

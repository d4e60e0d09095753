// Monte Carlo dropout sweeps (see adaptlink/sim/sweep.hpp and sim/README.md, "Sweeps").
#include "adaptlink/sim/sweep.hpp"

#include <algorithm>
#include <cmath>
#include <random>

#include <nlohmann/json.hpp>

#include "adaptlink/planner/backup.hpp"
#include "adaptlink/planner/planner.hpp"
#include "fault_timeline.hpp"
#include "pipeline.hpp"
#include "random.hpp"

namespace adaptlink::sim {

namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Whether `plan` survives `faults` as a simulation would recover from them (the recovery policy's decisions,
// in the simulation's order and times): an error when some stage is left with nowhere to run.
Expected<Ok> survivable(const partition::CostModel& cost, const partition::Plan& plan,
                        const std::vector<partition::Fault>& faults, const partition::RecoverySettings& heartbeat,
                        runtime::ReplanCache& cache) {
  detail::FaultSetup setup{&cost, faults, plan.planner, plan.objective, !plan.backups.empty(), heartbeat, &cache};
  return detail::FaultTimeline::dry_run(setup, runtime::Placement::of(plan), cost.num_devices());
}

void fill_side(SweepSide& side, Expected<SimResult> result) {
  if (!result) {
    side.error = result.error().to_string();
    return;
  }
  auto* report = &result->report;
  side.makespan_s = result->stats.sim_time_s;
  if (side.makespan_s > 0) side.goodput_rps = static_cast<double>(report->requests_completed) / side.makespan_s;
  double sum_ms = 0;
  for (const auto& f : report->faults) {
    // A dropout of a device that held a stage: the policy moved its stages or re-planned.
    if (f.kind != partition::FaultKind::dropout || !f.action || *f.action == runtime::RecoveryAction::none) continue;
    ++side.stage_dropouts;
    if (f.recovery_ms) {
      ++side.recovered;
      sum_ms += *f.recovery_ms;
    }
  }
  if (side.recovered > 0) side.mean_recovery_ms = sum_ms / side.recovered;
  side.report = std::move(*report);
}

SweepSummary summarize(const std::vector<const SweepSide*>& sides) {
  SweepSummary s;
  std::vector<double> rps, goodput;
  double recovery_sum = 0;
  int recovered = 0;
  for (const auto* side : sides) {
    s.stage_dropouts += side->stage_dropouts;
    if (!side->report) continue;
    const auto& r = *side->report;
    ++s.runs;
    rps.push_back(r.throughput_rps);
    goodput.push_back(side->goodput_rps);
    s.mean_tokens_per_s += r.tokens_per_s;
    s.mean_p50_ms += r.latency_ms.p50;
    s.mean_p95_ms += r.latency_ms.p95;
    s.mean_p99_ms += r.latency_ms.p99;
    s.requests_lost += r.requests_lost;
    if (side->mean_recovery_ms) {
      recovery_sum += *side->mean_recovery_ms * side->recovered;
      recovered += side->recovered;
    }
  }
  if (s.runs == 0) return s;
  const double n = s.runs;
  auto mean_std = [n](const std::vector<double>& v, double& mean, double& sd) {
    for (double x : v) mean += x;
    mean /= n;
    if (v.size() > 1) {
      double ss = 0;
      for (double x : v) ss += (x - mean) * (x - mean);
      sd = std::sqrt(ss / (n - 1));
    }
  };
  mean_std(goodput, s.mean_goodput_rps, s.std_goodput_rps);
  mean_std(rps, s.mean_throughput_rps, s.std_throughput_rps);
  s.mean_tokens_per_s /= n;
  s.mean_p50_ms /= n;
  s.mean_p95_ms /= n;
  s.mean_p99_ms /= n;
  if (recovered > 0) s.mean_recovery_ms = recovery_sum / recovered;
  return s;
}

nlohmann::json optional_json(const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }

nlohmann::json side_json(const SweepSide& side) {
  nlohmann::json j;
  if (side.report) {
    const auto& r = *side.report;
    j["goodput_rps"] = side.goodput_rps;
    j["makespan_s"] = side.makespan_s;
    j["throughput_rps"] = r.throughput_rps;
    j["tokens_per_s"] = r.tokens_per_s;
    j["latency_ms"] = {{"p50", r.latency_ms.p50}, {"p95", r.latency_ms.p95}, {"p99", r.latency_ms.p99}};
    j["requests_completed"] = r.requests_completed;
    j["requests_lost"] = r.requests_lost;
  } else {
    j["error"] = side.error;
  }
  j["stage_dropouts"] = side.stage_dropouts;
  j["recovered"] = side.recovered;
  j["mean_recovery_ms"] = optional_json(side.mean_recovery_ms);
  if (side.report) j["faults"] = runtime::to_json(*side.report).at("faults");
  return j;
}

nlohmann::json summary_json(const SweepSummary& s) {
  return {{"runs", s.runs},
          {"mean_goodput_rps", s.mean_goodput_rps},
          {"std_goodput_rps", s.std_goodput_rps},
          {"mean_throughput_rps", s.mean_throughput_rps},
          {"std_throughput_rps", s.std_throughput_rps},
          {"mean_tokens_per_s", s.mean_tokens_per_s},
          {"mean_latency_ms", {{"p50", s.mean_p50_ms}, {"p95", s.mean_p95_ms}, {"p99", s.mean_p99_ms}}},
          {"requests_lost", s.requests_lost},
          {"stage_dropouts", s.stage_dropouts},
          {"mean_recovery_ms", optional_json(s.mean_recovery_ms)}};
}

}  // namespace

std::uint64_t derive_sweep_seed(std::uint64_t seed, int rate_index, int run) {
  std::uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ (static_cast<std::uint64_t>(rate_index) + 1));
  return splitmix64(h ^ ((static_cast<std::uint64_t>(run) + 1) << 32));
}

std::vector<partition::Fault> draw_dropouts(const partition::Scenario& scenario, double rate_per_hour,
                                            double mean_downtime_s, double horizon_s, std::uint64_t seed) {
  std::vector<partition::Fault> out;
  if (!(rate_per_hour > 0) || !(horizon_s > 0)) return out;
  std::mt19937_64 rng(seed);
  const double mean_up_s = 3600.0 / rate_per_hour;
  for (int d : partition::active_devices(scenario)) {
    const auto& name = scenario.devices[static_cast<size_t>(d)].name;
    double t = 0;
    for (;;) {
      t += detail::exponential_by_mean(rng, mean_up_s);
      if (t >= horizon_s) break;
      const double down_s = detail::exponential_by_mean(rng, mean_downtime_s);
      out.push_back({t, name, partition::FaultKind::dropout, 1, 0});
      out.push_back({t + down_s, name, partition::FaultKind::rejoin, 1, 0});
      t += down_s;
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.at_s < b.at_s; });
  return out;
}

Expected<SweepResult> run_sweep(const partition::CostModel& cost, const partition::Plan& plan,
                                const SweepOptions& options) {
  if (options.dropout_rates_per_hour.empty()) return make_error("--dropout-rate: no rates given");
  for (double r : options.dropout_rates_per_hour) {
    if (!(r >= 0) || !std::isfinite(r)) return make_error("--dropout-rate: rates must be >= 0 (got {})", r);
  }
  if (options.runs < 1) return make_error("--runs must be at least 1 (got {})", options.runs);
  if (!plan.replicas.empty()) {
    // Sweeps draw dropouts, and faults are not simulated on replicated plans (simulator.hpp).
    return make_error("dropout sweeps need a one-pipeline plan, and this {} plan has {} replicas (plan it with "
                      "[planner] replicas = false)",
                      plan.planner, plan.replicas.size());
  }
  if (!(options.mean_downtime_s > 0) || !std::isfinite(options.mean_downtime_s)) {
    return make_error("--mean-downtime must be positive (got {})", options.mean_downtime_s);
  }
  const auto& scenario = cost.scenario();

  // The same stages on both sides: with the backups placed for them, and with none (redeploy).
  partition::Plan with = plan;
  with.backups.clear();
  with.unbacked_stages.clear();
  partition::place_backups(cost, with);
  partition::Plan without = plan;
  without.backups.clear();
  without.unbacked_stages.clear();
  for (size_t s = 0; s < plan.stages.size(); ++s) without.unbacked_stages.push_back(static_cast<int>(s));

  SimOptions sim = options.sim;
  sim.faults = true;
  sim.trace_path.clear();
  sim.progress = nullptr;

  runtime::ReplanCache cache;  // recoveries re-plan on the devices up: the same sets recur across runs
  sim.replan_cache = &cache;   // the simulations' fault actors find them there (each runs in a fork of this process)
  auto heartbeat = heartbeat_settings(scenario, sim);
  if (!heartbeat) return heartbeat.error();
  SweepResult result;
  result.scenario = scenario.name;
  result.heartbeat = *heartbeat;
  result.planner = plan.planner;
  for (int d : partition::active_devices(scenario)) result.active_devices.push_back(scenario.devices[d].name);
  const int total = 1 + 2 * options.runs * static_cast<int>(options.dropout_rates_per_hour.size());
  int done = 0;
  auto tick = [&](double rate, int run) {
    ++done;
    if (options.progress) options.progress(SweepProgress{done, total, rate, run});
  };

  // The fault-free reference: its makespan is the horizon over which dropouts are drawn.
  sim.fault_list = std::vector<partition::Fault>{};
  auto reference = run_simulation(cost, with, sim);
  if (!reference) return reference.error();
  result.requests = reference->report.requests_completed + reference->report.requests_lost;
  result.horizon_s = reference->stats.sim_time_s;
  fill_side(result.fault_free, std::move(*reference));
  tick(0, -1);

  for (size_t ri = 0; ri < options.dropout_rates_per_hour.size(); ++ri) {
    const double rate = options.dropout_rates_per_hour[ri];
    SweepRate summary;
    summary.rate_per_hour = rate;
    const size_t first_run = result.runs.size();
    for (int run = 0; run < options.runs; ++run) {
      SweepRun r;
      r.rate_index = static_cast<int>(ri);
      r.rate_per_hour = rate;
      r.run = run;
      r.seed = derive_sweep_seed(options.seed, r.rate_index, run);
      const auto drawn = draw_dropouts(scenario, rate, options.mean_downtime_s, result.horizon_s, r.seed);
      // Keep a dropout (and its rejoin) only when both sides can still run every stage after it.
      for (size_t i = 0; i < drawn.size(); ++i) {
        if (drawn[i].kind != partition::FaultKind::dropout) continue;
        size_t back = i + 1;  // its rejoin: the next fault of the same device
        while (back < drawn.size() && drawn[back].device != drawn[i].device) ++back;
        auto candidate = r.faults;
        candidate.push_back(drawn[i]);
        if (back < drawn.size()) candidate.push_back(drawn[back]);
        std::stable_sort(candidate.begin(), candidate.end(),
                         [](const auto& a, const auto& b) { return a.at_s < b.at_s; });
        if (survivable(cost, with, candidate, *heartbeat, cache) && survivable(cost, without, candidate, *heartbeat, cache)) {
          r.faults = std::move(candidate);
          ++r.dropouts;
        } else {
          ++r.skipped_dropouts;
        }
      }
      if (r.faults.empty()) {
        // No dropout: both sides are the fault-free run.
        r.with_backups = result.fault_free;
        r.without_backups = result.fault_free;
        tick(rate, run);
        tick(rate, run);
      } else {
        sim.fault_list = r.faults;
        for (auto [side, side_plan] : {std::pair{&r.with_backups, &with}, std::pair{&r.without_backups, &without}}) {
          fill_side(*side, run_simulation(cost, *side_plan, sim));
          if (!side->report) ++result.failed;
          tick(rate, run);
        }
      }
      summary.dropouts += r.dropouts;
      summary.skipped_dropouts += r.skipped_dropouts;
      result.runs.push_back(std::move(r));
    }
    std::vector<const SweepSide*> w, wo;
    for (size_t i = first_run; i < result.runs.size(); ++i) {
      w.push_back(&result.runs[i].with_backups);
      wo.push_back(&result.runs[i].without_backups);
    }
    summary.with_backups = summarize(w);
    summary.without_backups = summarize(wo);
    result.rates.push_back(summary);
  }
  return result;
}

nlohmann::json to_json(const SweepResult& result, const SweepOptions& options) {
  nlohmann::json rates = nlohmann::json::array();
  for (const auto& r : result.rates) {
    const double w = r.with_backups.mean_goodput_rps, wo = r.without_backups.mean_goodput_rps;
    rates.push_back({{"dropout_rate_per_hour", r.rate_per_hour},
                     {"dropouts", r.dropouts},
                     {"skipped_dropouts", r.skipped_dropouts},
                     {"with_backups", summary_json(r.with_backups)},
                     {"without_backups", summary_json(r.without_backups)},
                     {"goodput_ratio", wo > 0 ? nlohmann::json(w / wo) : nlohmann::json(nullptr)}});
  }
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& r : result.runs) {
    nlohmann::json faults = nlohmann::json::array();
    for (const auto& f : r.faults) {
      faults.push_back({{"at_s", f.at_s},
                        {"device", f.device},
                        {"kind", f.kind == partition::FaultKind::dropout ? "dropout" : "rejoin"}});
    }
    runs.push_back({{"rate_index", r.rate_index},
                    {"dropout_rate_per_hour", r.rate_per_hour},
                    {"run", r.run},
                    {"seed", r.seed},
                    {"dropouts", r.dropouts},
                    {"skipped_dropouts", r.skipped_dropouts},
                    {"faults", faults},
                    {"with_backups", side_json(r.with_backups)},
                    {"without_backups", side_json(r.without_backups)}});
  }
  nlohmann::json rates_in = nlohmann::json::array();
  for (double r : options.dropout_rates_per_hour) rates_in.push_back(r);
  return {{"scenario", result.scenario},
          {"backend", "sim"},
          {"planner", result.planner},
          {"network_model", options.sim.network_model},
          {"seed", options.seed},
          {"runs_per_rate", options.runs},
          {"dropout_rates_per_hour", rates_in},
          {"rate_unit", "dropouts per active device per hour of simulated time"},
          {"active_devices", result.active_devices},
          {"mean_downtime_s", options.mean_downtime_s},
          {"heartbeat_interval_s", result.heartbeat.heartbeat_interval_s},
          {"heartbeat_timeout_s", result.heartbeat.heartbeat_timeout_s},
          {"requests", result.requests},
          {"horizon_s", result.horizon_s},
          {"fault_free", side_json(result.fault_free)},
          {"failed_simulations", result.failed},
          {"rates", rates},
          {"runs", runs}};
}

}  // namespace adaptlink::sim

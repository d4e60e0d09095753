// Monte Carlo dropout sweeps (adaptlink/sim/sweep.hpp): seeded draws, reproducible results, rate 0 = the
// fault-free run, backups beat redeploy, nothing lost. jetson-quartet with 12 requests (3 x in_flight) keeps
// each simulation at a few tens of milliseconds.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "adaptlink/sim/simulator.hpp"
#include "adaptlink/sim/sweep.hpp"
#include "helpers.hpp"

namespace adaptlink::sim {
namespace {

using namespace testing;

constexpr long long kRequests = 12;

struct Setup {
  std::unique_ptr<part::Problem> problem;
  part::Plan plan;
};

// Unbatched: a batched run's makespan is not monotone in its faults (a perturbation can gather steps into larger
// batches: measured 6 % shorter with backups at 12 dropouts/h), and the tests below compare against the fault-free run.
Setup setup(const std::string& scenario = "jetson-quartet.toml") {
  auto p = problem(unbatched(load(source_dir() / "scenarios" / scenario)));
  auto pl = plan(*p, "adaptlink");
  return {std::move(p), std::move(pl)};
}

SweepOptions sweep_options(std::vector<double> rates, int runs) {
  SweepOptions o;
  o.dropout_rates_per_hour = std::move(rates);
  o.runs = runs;
  o.seed = 7;
  o.sim.max_requests = kRequests;
  return o;
}

TEST(Sweep, DrawsArePoissonPerActiveDeviceAndSeeded) {
  auto sc = load(source_dir() / "scenarios" / "jetson-quartet-dropout.toml");  // 'spare' is standby
  const double horizon_s = 3600;
  const auto a = draw_dropouts(sc, 30, 60, horizon_s, derive_sweep_seed(1, 0, 0));
  const auto b = draw_dropouts(sc, 30, 60, horizon_s, derive_sweep_seed(1, 0, 0));
  const auto c = draw_dropouts(sc, 30, 60, horizon_s, derive_sweep_seed(1, 0, 1));
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].at_s, b[i].at_s);
    EXPECT_EQ(a[i].device, b[i].device);
  }
  ASSERT_FALSE(c.empty());
  EXPECT_NE(a.front().at_s, c.front().at_s);
  EXPECT_NE(derive_sweep_seed(1, 0, 1), derive_sweep_seed(1, 1, 0));
  EXPECT_NE(derive_sweep_seed(1, 0, 0), derive_sweep_seed(2, 0, 0));
  EXPECT_TRUE(draw_dropouts(sc, 0, 60, horizon_s, 1).empty());

  // Per device: dropout, rejoin, dropout, ... in time order; dropouts inside the horizon; standby never drops.
  std::map<std::string, std::vector<part::Fault>> per_device;
  for (size_t i = 0; i < a.size(); ++i) {
    if (i > 0) {
      EXPECT_LE(a[i - 1].at_s, a[i].at_s);
    }
    per_device[a[i].device].push_back(a[i]);
  }
  EXPECT_EQ(per_device.count("spare"), 0u);
  EXPECT_EQ(per_device.size(), 4u);
  int dropouts = 0;
  double down_s = 0;
  for (const auto& [name, faults] : per_device) {
    for (size_t i = 0; i < faults.size(); ++i) {
      EXPECT_EQ(faults[i].kind, i % 2 == 0 ? part::FaultKind::dropout : part::FaultKind::rejoin) << name;
      if (faults[i].kind == part::FaultKind::dropout) {
        ++dropouts;
        EXPECT_LT(faults[i].at_s, horizon_s);
        ASSERT_LT(i + 1, faults.size());
        down_s += faults[i + 1].at_s - faults[i].at_s;
      }
    }
  }
  // 30 per hour per device while up (~98 % of the time with 60 s mean downtime): ~118 over 4 device-hours.
  EXPECT_GT(dropouts, 80);
  EXPECT_LT(dropouts, 160);
  EXPECT_NEAR(down_s / dropouts, 60, 20);
}

TEST(Sweep, SameSeedGivesIdenticalJson) {
  auto s = setup();
  const auto o = sweep_options({0, 20}, 2);
  auto a = run_sweep(*s.problem->cost, s.plan, o);
  auto b = run_sweep(*s.problem->cost, s.plan, o);
  ASSERT_TRUE(a) << a.error().to_string();
  ASSERT_TRUE(b) << b.error().to_string();
  EXPECT_EQ(to_json(*a, o).dump(), to_json(*b, o).dump());
  auto other = o;
  other.seed = 8;
  auto c = run_sweep(*s.problem->cost, s.plan, other);
  ASSERT_TRUE(c);
  EXPECT_NE(to_json(*a, o).at("runs").dump(), to_json(*c, other).at("runs").dump());
}

TEST(Sweep, RateZeroIsTheFaultFreeRun) {
  auto s = setup();
  const auto o = sweep_options({0}, 2);
  auto r = run_sweep(*s.problem->cost, s.plan, o);
  ASSERT_TRUE(r) << r.error().to_string();
  SimOptions plain;
  plain.max_requests = kRequests;
  auto fault_free = simulate(*s.problem->cost, s.plan, plain);
  ASSERT_TRUE(fault_free);
  ASSERT_EQ(r->runs.size(), 2u);
  for (const auto& run : r->runs) {
    EXPECT_TRUE(run.faults.empty());
    for (const auto* side : {&run.with_backups, &run.without_backups}) {
      ASSERT_TRUE(side->report.has_value());
      EXPECT_EQ(runtime::to_json(*side->report).dump(), runtime::to_json(*fault_free).dump());
    }
  }
  const auto& rate = r->rates.at(0);
  EXPECT_EQ(rate.dropouts, 0);
  EXPECT_DOUBLE_EQ(rate.with_backups.mean_throughput_rps, fault_free->throughput_rps);
  EXPECT_DOUBLE_EQ(rate.without_backups.mean_throughput_rps, fault_free->throughput_rps);
  EXPECT_DOUBLE_EQ(rate.with_backups.mean_p99_ms, fault_free->latency_ms.p99);
  EXPECT_EQ(rate.with_backups.std_goodput_rps, 0);
  EXPECT_NEAR(r->fault_free.goodput_rps * r->horizon_s, kRequests, 1e-9);
}

// At a positive rate the same drawn dropouts cost less with backups: higher throughput over the run, lower tail
// latency, recovery by switch-over in seconds instead of a redeploy in minutes; no request is lost either way.
TEST(Sweep, BackupsBeatRedeployAndNothingIsLost) {
  auto s = setup();
  const auto o = sweep_options({12}, 4);
  auto r = run_sweep(*s.problem->cost, s.plan, o);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->failed, 0);
  const auto& rate = r->rates.at(0);
  ASSERT_GT(rate.dropouts, 0);
  const auto& w = rate.with_backups;
  const auto& wo = rate.without_backups;
  EXPECT_EQ(w.runs, 4);
  EXPECT_EQ(wo.runs, 4);
  EXPECT_GE(w.mean_goodput_rps, wo.mean_goodput_rps);
  EXPECT_LT(w.mean_p99_ms, wo.mean_p99_ms);
  ASSERT_TRUE(w.mean_recovery_ms && wo.mean_recovery_ms);
  EXPECT_LT(*w.mean_recovery_ms * 5, *wo.mean_recovery_ms);
  EXPECT_EQ(w.requests_lost, 0);
  EXPECT_EQ(wo.requests_lost, 0);
  for (const auto& run : r->runs) {
    for (const auto* side : {&run.with_backups, &run.without_backups}) {
      ASSERT_TRUE(side->report.has_value()) << side->error;
      EXPECT_EQ(side->report->requests_completed, kRequests);
      EXPECT_EQ(side->report->requests_lost, 0);
      EXPECT_GE(side->makespan_s, r->horizon_s - 1e-9);  // faults only ever slow the run down
    }
    // The report lists exactly the applied faults, in order.
    ASSERT_EQ(run.with_backups.report->faults.size(), run.faults.size());
    for (size_t i = 0; i < run.faults.size(); ++i) {
      EXPECT_EQ(run.with_backups.report->faults[i].at_s, run.faults[i].at_s);
      EXPECT_EQ(run.with_backups.report->faults[i].device, run.faults[i].device);
    }
  }
}

// The same drawn dropouts on the batched runtime (the scenario's max_batch "auto"): nothing is lost either way, and
// the backups' switch-overs still recover faster than redeploys.
TEST(Sweep, BatchedRunsLoseNothing) {
  auto p = problem(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  ASSERT_TRUE(part::batches_decode(p->scenario));
  auto pl = plan(*p, "adaptlink");
  ASSERT_GT(pl.max_batch, 1);
  auto r = run_sweep(*p->cost, pl, sweep_options({12}, 2));
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->failed, 0);
  const auto& rate = r->rates.at(0);
  ASSERT_GT(rate.dropouts, 0);
  EXPECT_EQ(rate.with_backups.requests_lost, 0);
  EXPECT_EQ(rate.without_backups.requests_lost, 0);
  ASSERT_TRUE(rate.with_backups.mean_recovery_ms && rate.without_backups.mean_recovery_ms);
  EXPECT_LT(*rate.with_backups.mean_recovery_ms * 5, *rate.without_backups.mean_recovery_ms);
  for (const auto& run : r->runs) {
    for (const auto* side : {&run.with_backups, &run.without_backups}) {
      ASSERT_TRUE(side->report.has_value()) << side->error;
      EXPECT_EQ(side->report->requests_completed, kRequests);
    }
  }
}

// At a rate where devices are often down together, dropouts after which the recovery policy, deciding when the
// simulation detects them, would find some stage nowhere to run are not applied: every simulation still completes
// every request, and each kept dropout was decided (detected) on a cluster that could take its stages.
TEST(Sweep, UnsurvivableDropoutsAreSkipped) {
  auto s = setup();
  auto o = sweep_options({400}, 2);
  o.mean_downtime_s = 120;
  auto r = run_sweep(*s.problem->cost, s.plan, o);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->failed, 0);
  EXPECT_GT(r->rates[0].skipped_dropouts, 0);
  EXPECT_GT(r->rates[0].dropouts, 0);
  for (const auto& run : r->runs) {
    for (const auto* side : {&run.with_backups, &run.without_backups}) {
      ASSERT_TRUE(side->report.has_value()) << side->error;
      EXPECT_EQ(side->report->requests_lost, 0);
      for (const auto& f : side->report->faults) {
        if (f.kind != part::FaultKind::dropout || !f.detected_s) continue;
        ASSERT_TRUE(f.action.has_value());  // decided, and every stage of the lost device found a place
        if (*f.action != runtime::RecoveryAction::none) {
          EXPECT_TRUE(f.recovered_s.has_value()) << f.at_s;
        }
      }
    }
  }
}

TEST(Sweep, BadOptionsAreErrors) {
  auto s = setup();
  auto o = sweep_options({}, 1);
  EXPECT_FALSE(run_sweep(*s.problem->cost, s.plan, o));
  o = sweep_options({1, -2}, 1);
  auto neg = run_sweep(*s.problem->cost, s.plan, o);
  ASSERT_FALSE(neg);
  EXPECT_NE(neg.error().message.find(">= 0"), std::string::npos);
  o = sweep_options({1}, 0);
  EXPECT_FALSE(run_sweep(*s.problem->cost, s.plan, o));
  o = sweep_options({1}, 1);
  o.mean_downtime_s = 0;
  EXPECT_FALSE(run_sweep(*s.problem->cost, s.plan, o));
}

// Two dropouts close together (jetson-quartet-dropout, backups on): agx at 20 s (its stage moves to the spare),
// xavier at 20.1 s (its stage moves to the spare too). The second switch-over happens while the first one's
// replays still run on the spare; each fault counts its own replays, so both get their recovery time.
// Unbatched: that plan keeps both lost stages' backups off the other lost device (batched, xavier's backup is on agx).
TEST(Faults, OverlappingRecoveriesAreEachTimed) {
  auto p = problem(unbatched(load(source_dir() / "scenarios" / "jetson-quartet-dropout.toml")));
  auto pl = plan(*p, "adaptlink");
  SimOptions o;
  o.faults = true;
  o.max_requests = kRequests;
  o.fault_list = std::vector<part::Fault>{{20, "agx", part::FaultKind::dropout, 1, 0},
                                          {20.1, "xavier", part::FaultKind::dropout, 1, 0}};
  auto r = simulate(*p->cost, pl, o);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->requests_completed, kRequests);
  EXPECT_EQ(r->requests_lost, 0);
  ASSERT_EQ(r->faults.size(), 2u);
  for (const auto& f : r->faults) {
    ASSERT_TRUE(f.recovered_s.has_value()) << f.device;
    EXPECT_GT(f.recomputed_tokens, 0) << f.device;
    EXPECT_NEAR(*f.recovery_ms, (*f.recovered_s - f.at_s) * 1e3, 1e-6);
    EXPECT_LT(*f.recovery_ms, 15000) << f.device << ": a switch-over, not a redeploy";
  }
  // The second is detected once the first one's detection is over (faults are handled one at a time).
  EXPECT_GT(*r->faults[1].recovered_s, 20 + 2 * 1.5);
}

}  // namespace
}  // namespace adaptlink::sim

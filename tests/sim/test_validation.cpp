// Validation of the simulator against the closed forms of partition/plan.hpp, recomputed in helpers.hpp from
// CostModel numbers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "adaptlink/sim/simulator.hpp"
#include "adaptlink/planner/replicas.hpp"
#include "adaptlink/runtime/report.hpp"
#include "helpers.hpp"

namespace adaptlink::sim::testing {
namespace {

// One request in flight: the simulated latency is the sum of stage times and transfer times.
TEST(Validation, OneRequestLatencyIsSumOfStagesAndTransfers) {
  for (const auto& file : bundled_scenarios()) {
    auto sc = load(file);
    sc.workload.arrival = part::Arrival::closed;
    sc.workload.in_flight = 1;
    sc.workload.requests = 3;
    auto p = problem(sc);
    for (const std::string name : {"uniform", "adaptlink"}) {
      SCOPED_TRACE(file.filename().string() + " / " + name);
      auto pl = plan(*p, name);
      const double expected = alone_ms(*p->cost, pl);
      auto report = simulate(*p->cost, pl);
      ASSERT_TRUE(report) << report.error().to_string();
      EXPECT_EQ(report->requests_completed, 3);
      EXPECT_EQ(report->requests_lost, 0);
      EXPECT_NEAR(report->latency_ms.p50, expected, 1e-3 * expected);
      EXPECT_NEAR(report->latency_ms.p99, expected, 1e-3 * expected);
      // The planner's R0 is the same number.
      EXPECT_NEAR(pl.predicted.alone_ms, expected, 1e-3 * expected);
      // Closed loop with one request: throughput = 1 / latency.
      EXPECT_NEAR(report->throughput_rps, 1e3 / expected, 1e-3 * 1e3 / expected);
      EXPECT_NEAR(report->tokens_per_s, report->throughput_rps * sc.workload.shape.output_tokens, 1e-9);
      // Time to first token: the prefill through every stage and its transfers; then each decode step's share.
      double first_ms = 0;
      for (size_t s = 0; s < pl.stages.size(); ++s) {
        const auto& st = pl.stages[s];
        first_ms += p->cost->prefill_ms(st.device, st.first_node, st.last_node);
        if (s + 1 < pl.stages.size()) {
          first_ms += p->cost->transfer_ms(st.device, pl.stages[s + 1].device,
                                           p->graph.prefill_out_bytes(st.last_node, sc.workload.shape));
        }
      }
      ASSERT_TRUE(report->ttft_ms && report->tpot_ms);
      EXPECT_NEAR(report->ttft_ms->p50, first_ms, 1e-3 * first_ms);
      EXPECT_NEAR(report->ttft_ms->p99, first_ms, 1e-3 * first_ms);
      const double per_token = (expected - first_ms) / sc.workload.shape.output_tokens;
      EXPECT_NEAR(report->tpot_ms->p50, per_token, 1e-3 * per_token);
    }
  }
}

// Many requests in flight: throughput = 1 / bottleneck (the busiest stage or link per request). "Many" is
// 20x the knee R0/W: balanced plans have several near-equal bottleneck stages, and a closed network with
// FIFO stages needs that population to keep the slowest one busy all the time (see sim/README.md).
// Decode-first is work-conserving too, so the bottleneck stays busy; but with that many requests decoding,
// new prefills wait for gaps and completions come in bursts, so the finite steady window (4 x in_flight
// requests) reads up to ~1.2 % low (0.2 % with 16 x): it gets 2 %. FIFO gets 1 %, or 2 % where two or more stages
// are within 5 % of the bottleneck: there the closed network needs a larger population still (phone-laptop-pi's
// adaptlink plan, stages of 2,670 and 2,723 ms, reads 1.55 % low at 20 x the knee, 1.71 % with 16 x the requests,
// 0.92 % at 40 x: the population, not the window).
TEST(Validation, SaturatedThroughputIsOneOverBottleneck) {
  for (const auto& file : bundled_scenarios()) {
    for (const auto schedule : {part::Schedule::fifo, part::Schedule::decode_first}) {
      auto loaded = unbatched(load(file));
      loaded.planner.schedule = schedule;
      auto original = problem(loaded);
      for (const std::string name : {"uniform", "adaptlink"}) {
        SCOPED_TRACE(file.filename().string() + " / " + name +
                     (schedule == part::Schedule::fifo ? " / fifo" : " / decode-first"));
        auto pl = plan(*original, name);
        const double w = bottleneck_ms(*original->cost, pl);
        const double r0 = alone_ms(*original->cost, pl);
        auto sc = original->scenario;
        sc.workload.arrival = part::Arrival::closed;
        sc.workload.in_flight = 20 * static_cast<int>(std::ceil(r0 / w));
        sc.workload.requests = 4 * sc.workload.in_flight;
        auto p = problem(sc);
        auto report = simulate(*p->cost, pl);
        ASSERT_TRUE(report) << report.error().to_string();
        int near_bottleneck = 0;
        for (const auto& st : pl.stages) {
          near_bottleneck += st.prefill_ms + st.decode_ms >= 0.95 * w ? 1 : 0;
        }
        const double tolerance = schedule == part::Schedule::fifo && near_bottleneck < 2 ? 0.01 : 0.02;
        const double expected = 1e3 / w;
        EXPECT_NEAR(report->throughput_rps, expected, tolerance * expected)
            << "in_flight " << sc.workload.in_flight << ", stages within 5 % of the bottleneck " << near_bottleneck;
        // The bottleneck device is busy all the time.
        double busiest = 0;
        for (const auto& [name_, u] : report->device_utilization) busiest = std::max(busiest, u);
        if (std::abs(w - pl.predicted.bottleneck_ms) < 1e-6 * w) {
          EXPECT_GT(busiest, 0.98);
        }
      }
    }
  }
}

// Replay vs SimGrid: the planner's replay predictor (planner/src/replay.cpp: virtual time in ms, equal-share links)
// and the simulator (SimGrid actors in seconds, CM02 max-min sharing) are two implementations of one pipeline, both
// scheduling by runtime::StageQueue (simultaneous arrivals seen by a stage's pick in both) and accounted by the same
// steady window. On every bundled and suite scenario with a closed loop, for every planner, fault-free: the
// throughput, the mean latency and each device's busy time in the steady window agree to 1e-9 relative (a
// replicated plan: replica by replica, each on its own problem, as both back-ends run it). exhaustive is left out (it
// is for small cases; its plans are the others' kind).
//
// One kind of pipeline cannot be held to 1e-9 by two implementations whose roundings differ: where a transfer ends
// while it shares its link, its end moves twice as far as its start (end = 2 join - other join + bytes / share), and
// some plans chain such transfers so that a rounding difference of 1e-15 doubles every few hundred ms of simulated
// time. The replay itself shows it: started on another clock origin (every time shifted, every rounding different),
// its throughput moves by far more than rounding (or with one device 1e-13 slower). Such pipelines are held to 1 %, and
// that spread must exceed 1e-10 (else the disagreement is a real drift and fails the test).
std::vector<std::filesystem::path> conformance_scenarios() {
  auto out = bundled_scenarios();
  for (const auto& e : std::filesystem::directory_iterator(source_dir() / "scenarios" / "suite")) {
    if (e.path().extension() == ".toml") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

int chaotic_ = 0;  // pipelines held to 1 % (amplified rounding)

bool agree(double replayed, double simulated) {
  const double scale = std::max({std::abs(replayed), std::abs(simulated), 1e-12});
  return std::abs(replayed - simulated) <= 1e-9 * scale;
}

// One pipeline of `stages` on `cost`'s scenario, `requests` of them: replayed and simulated.
void expect_conformant(const part::CostModel& cost, const std::vector<part::Stage>& stages, long long requests,
                       const std::string& where, int& compared) {
  auto st = stages;
  const auto bound = part::evaluate(cost, st);
  part::ReplayOptions ro;
  ro.busy = true;
  const auto replayed = part::replay(cost, st, requests, bound.bottleneck_ms, ro);
  part::Plan one;
  one.planner = "replayed";
  one.stages = st;
  SimOptions so;
  so.max_requests = requests;
  auto sim = run_simulation(cost, one, so);
  ASSERT_TRUE(sim) << where << ": " << sim.error().to_string();
  double mean_ms = 0;
  for (double l : sim->latencies_ms) mean_ms += l;
  mean_ms /= static_cast<double>(std::max<size_t>(1, sim->latencies_ms.size()));
  const double gap = std::abs(replayed.throughput_rps / sim->report.throughput_rps - 1);
  if (gap > 1e-9) {  // a pipeline that amplifies rounding (see above): its replay moves under a clock shift, or when
                     // one device computes 1e-13 slower
    ro.time_origin_ms = 123456.789;
    const auto shifted = part::replay(cost, st, requests, bound.bottleneck_ms, ro);
    double spread = std::abs(shifted.throughput_rps / replayed.throughput_rps - 1);
    ro.time_origin_ms = 0;
    part::CostModel probe(cost, cost.scenario());
    for (const auto& stage : st) {
      probe.set_slowdown(stage.device, 1 + 1e-13);
      const auto slower = part::replay(probe, st, requests, bound.bottleneck_ms, ro);
      probe.set_slowdown(stage.device, 1);
      spread = std::max(spread, std::abs(slower.throughput_rps / replayed.throughput_rps - 1));
    }
    std::printf("%s: replay and SimGrid differ by %.2e; the replay, perturbed at rounding level, by %.2e\n",
                where.c_str(), gap, spread);
    EXPECT_GT(spread, 1e-10) << where << ": the replay is stable under a clock shift, so a " << gap
                             << " difference from SimGrid is a drift in semantics";
    EXPECT_LT(gap, 0.01) << where;
    EXPECT_LT(std::abs(replayed.mean_latency_ms / mean_ms - 1), 0.01) << where;
    ++chaotic_;
    ++compared;
    return;
  }
  EXPECT_TRUE(agree(replayed.throughput_rps, sim->report.throughput_rps))
      << where << ": throughput replayed " << replayed.throughput_rps << ", simulated " << sim->report.throughput_rps;
  EXPECT_TRUE(agree(replayed.mean_latency_ms, mean_ms))
      << where << ": mean latency replayed " << replayed.mean_latency_ms << " ms, simulated " << mean_ms << " ms";
  // Busy time in the steady window: the simulator's utilisation times the window it was counted over.
  auto done = sim->completions_s;
  std::sort(done.begin(), done.end());
  const auto w = runtime::steady_window(requests, cost.scenario().workload.in_flight, true);
  ASSERT_GT(w.first, 0) << where;
  const double window_ms = (done[static_cast<size_t>(w.last - 1)] - done[static_cast<size_t>(w.first - 1)]) * 1e3;
  ASSERT_EQ(replayed.busy_ms.size(), sim->report.device_utilization.size()) << where;
  for (size_t d = 0; d < replayed.busy_ms.size(); ++d) {
    const double simulated_ms = sim->report.device_utilization[d].second * window_ms;
    EXPECT_TRUE(agree(replayed.busy_ms[d], simulated_ms))
        << where << ": device " << sim->report.device_utilization[d].first << " busy " << replayed.busy_ms[d]
        << " ms replayed, " << simulated_ms << " ms simulated";
  }
  ++compared;
}

TEST(Validation, ReplayAndSimGridAgreeTo1e9OnEveryClosedLoopScenarioAndPlanner) {
  int compared = 0, poisson = 0;
  for (const auto& file : conformance_scenarios()) {
    auto p = problem(load(file));
    if (p->scenario.workload.arrival != part::Arrival::closed) {
      ++poisson;
      continue;
    }
    for (const auto& name : part::planner_names()) {
      if (name == "exhaustive") continue;
      auto made = part::make_plan(*p->cost, name, part::Objective::throughput);
      if (!made) continue;  // the model does not fit this planner's split (uniform on tight memory)
      const std::string where = file.filename().string() + " / " + name;
      if (made->replicas.empty()) {
        expect_conformant(*p->cost, made->stages, part::replay_requests(p->scenario.workload), where, compared);
        continue;
      }
      const auto shares = part::share_requests(made->replicas, part::replay_requests(p->scenario.workload));
      for (size_t r = 0; r < made->replicas.size(); ++r) {
        const auto& rep = made->replicas[r];
        auto rp = part::replica_problem(*p->cost, rep.devices, rep.in_flight, shares[r]);
        expect_conformant(*rp.cost, rep.stages, shares[r], where + fmt::format(" / replica {}", r), compared);
      }
    }
  }
  std::printf("replay = SimGrid to 1e-9 on %d of %d pipelines, %d that amplify rounding within 1 %% (%d Poisson "
              "scenarios left to the 2 %% check)\n",
              compared - chaotic_, compared, chaotic_, poisson);
  EXPECT_GE(compared, 150);
  EXPECT_LE(chaotic_, compared / 20);  // the exception stays rare
}

// The same with batched stages (planner.max_batch = "auto": every waiting decode step of a stage joins its batch, which
// travels on as one message): both back-ends form batches by runtime::StageQueue::next_batch and time them by
// CostModel::decode_batch_ms. adaptlink's and uniform's plans on every closed-loop scenario. Against the unbatched
// replay of the same plan, batching loses at most 10 % (a batch ends all its members together, so a prefill behind it
// or a link after it can wait longer; and a prefill a decode batch passed over takes its turn before the next batch,
// on the tokens' path where unbatched decode-first would have run it in a gap: measured 9.2 % on home-trio-int8-wifi5
// / adaptlink's unbatched cut) and gains more than 1 % on at least three quarters of the pipelines with several
// requests in flight. The planner plans for the runtime it gets: adaptlink's "auto" plan is never more than 1 % below
// its unbatched plan (make_plan keeps the better of the two at the first admission limit; measured: never below).
TEST(Validation, BatchedReplayAndSimGridAgreeTo1e9AndBatchingNeverLoses) {
  int compared = 0, gained = 0, batched_scenarios = 0;
  const int chaotic_before = chaotic_;
  for (const auto& file : conformance_scenarios()) {
    auto p = problem(load(file));
    if (p->scenario.workload.arrival != part::Arrival::closed) continue;
    for (const std::string name : {"adaptlink", "uniform"}) {
      p->scenario.planner.max_batch = 1;
      auto made = part::make_plan(*p->cost, name, part::Objective::throughput);
      if (!made || !made->replicas.empty()) continue;  // replicas: each is a pipeline of its own, covered above
      const std::string where = file.filename().string() + " / " + name + " / batched";
      auto stages = made->stages;
      const long long requests = part::replay_requests(p->scenario.workload);
      const auto unbatched = part::replay(*p->cost, stages, requests, part::evaluate(*p->cost, stages).bottleneck_ms);
      p->scenario.planner.max_batch = part::kAutoBatch;
      expect_conformant(*p->cost, made->stages, requests, where, compared);
      const auto batched = part::replay(*p->cost, stages, requests, part::evaluate(*p->cost, stages).bottleneck_ms);
      EXPECT_GE(batched.throughput_rps, unbatched.throughput_rps * 0.90) << where;
      if (name == "adaptlink") {
        auto chosen = part::make_plan(*p->cost, name, part::Objective::throughput);
        ASSERT_TRUE(chosen) << where;
        EXPECT_GE(chosen->predicted.throughput_rps, made->predicted.throughput_rps * 0.99) << where;
      }
      if (p->scenario.workload.in_flight > 1) {
        ++batched_scenarios;
        if (batched.throughput_rps > unbatched.throughput_rps * 1.01) ++gained;
      }
    }
  }
  std::printf("batched: replay = SimGrid on %d pipelines (%d amplify rounding); batching gains > 1 %% on %d of %d with "
              "several requests in flight\n",
              compared, chaotic_ - chaotic_before, gained, batched_scenarios);
  EXPECT_GE(compared, 36);
  EXPECT_GE(gained, batched_scenarios * 3 / 4);
}

// Poisson arrivals: the planner's prediction is min(rate, 1 / W) and the simulated throughput is counted over the
// seeded arrivals the simulator drew, so the two agree within 2 % (and the simulation stays below the bound).
TEST(Validation, BundledPoissonScenariosAgreeWithPredictionWithin2Percent) {
  int rows = 0;
  for (const auto& file : bundled_scenarios()) {
    auto p = problem(unbatched(load(file)));
    if (p->scenario.workload.arrival != part::Arrival::poisson) continue;
    for (const std::string name : {"uniform", "proportional", "memory", "adaptlink"}) {
      SCOPED_TRACE(file.filename().string() + " / " + name);
      auto pl = plan(*p, name);
      SimOptions options;
      options.max_requests = 1000;  // the arrival rate is a sample mean: keep its noise small
      auto result = run_simulation(*p->cost, pl, options);
      ASSERT_TRUE(result) << result.error().to_string();
      const double predicted = std::min(result->stats.offered_rps, 1e3 / pl.predicted.bottleneck_ms);
      EXPECT_NEAR(result->report.throughput_rps, predicted, 0.02 * predicted);
      EXPECT_LE(result->report.throughput_rps, predicted * 1.005);
      ++rows;
    }
  }
  EXPECT_GT(rows, 0);
}

// Poisson arrivals below the capacity: throughput = the arrival rate; above it: the capacity.
TEST(Validation, PoissonThroughputIsMinOfRateAndCapacity) {
  auto sc = unbatched(load(source_dir() / "scenarios" / "jetson-quartet.toml"));
  sc.workload.arrival = part::Arrival::poisson;
  for (double load_factor : {0.5, 2.0}) {
    auto p0 = problem(sc);
    auto pl = plan(*p0, "adaptlink");
    const double capacity = 1e3 / bottleneck_ms(*p0->cost, pl);
    auto sc2 = sc;
    sc2.workload.rate_per_s = load_factor * capacity;
    auto p = problem(sc2);
    SimOptions options;
    options.max_requests = 400;
    auto result = run_simulation(*p->cost, pl, options);
    ASSERT_TRUE(result) << result.error().to_string();
    const double expected = std::min(result->stats.offered_rps, capacity);
    EXPECT_NEAR(result->report.throughput_rps, expected, 0.02 * expected) << "load " << load_factor;
  }
}

}  // namespace
}  // namespace adaptlink::sim::testing

// make_plan's pipeline settings (planner.hpp): the admission limit (requests in flight, [planner] max_in_flight)
// and the stage batch limit ([planner] max_batch) it chooses where the scenario says "auto", the saturate
// workload, and the scenario keys.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "adaptlink/partition/problem.hpp"
#include "adaptlink/planner/planner.hpp"

namespace part = adaptlink::partition;
namespace fs = std::filesystem;

namespace {

std::string quartet_text() {
  std::ifstream in(fs::path(ADAPTLINK_SOURCE_DIR) / "scenarios" / "jetson-quartet.toml");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The shipped jetson-quartet with its [workload] and [planner] tables replaced.
std::unique_ptr<part::Problem> quartet(const std::string& workload, const std::string& planner) {
  std::string text = quartet_text();
  text = text.substr(0, text.find("[workload]"));
  text += "[workload]\nimages_per_request = 1\nprompt_tokens = 64\noutput_tokens = 128\n" + workload +
          "\n[planner]\nbackups = false\nreplicas = false\n" + planner + "\n";
  auto sc = part::parse_scenario(text, fs::path(ADAPTLINK_SOURCE_DIR) / "scenarios" / "jetson-quartet.toml");
  EXPECT_TRUE(sc) << sc.error().to_string();
  return part::make_problem(std::move(*sc));
}

// The same problem with its admission limit fixed to `in_flight`.
std::unique_ptr<part::Problem> fixed(const part::Problem& p, int in_flight) {
  auto sc = p.scenario;
  sc.planner.max_in_flight = in_flight;
  return part::make_problem(std::move(sc));
}

// The limits make_plan may try for a population: P, then admission_steps(P).
std::vector<int> halvings(int population) {
  std::vector<int> out{population};
  for (int a : part::admission_steps(population)) out.push_back(a);
  return out;
}

}  // namespace

TEST(Admission, StepsDescendByAboutTheSquareRootOfTwoDownToOne) {
  EXPECT_EQ(part::admission_steps(64), (std::vector<int>{45, 32, 23, 16, 11, 8, 6, 4, 3, 2, 1}));
  EXPECT_EQ(part::admission_steps(4), (std::vector<int>{3, 2, 1}));
  EXPECT_EQ(part::admission_steps(2), (std::vector<int>{1}));
  EXPECT_TRUE(part::admission_steps(1).empty());
}

TEST(Admission, ScenarioKeysParseAndRoundTrip) {
  auto p = quartet("requests = 90\narrival = \"saturate\"", "max_batch = \"auto\"\nmax_in_flight = \"auto\"");
  const auto& sc = p->scenario;
  EXPECT_EQ(sc.workload.arrival, part::Arrival::saturate);
  EXPECT_EQ(sc.planner.max_batch, part::kAutoBatch);
  EXPECT_EQ(sc.planner.max_in_flight, part::kAutoInFlight);
  EXPECT_EQ(sc.workload.in_flight, 30) << "saturate: up to a third of the requests may be admitted";
  auto again = part::parse_scenario(part::to_toml(sc), sc.source);
  ASSERT_TRUE(again) << again.error().to_string() << "\n" << part::to_toml(sc);
  EXPECT_EQ(again->workload.arrival, part::Arrival::saturate);
  EXPECT_EQ(again->workload.in_flight, 30);
  EXPECT_EQ(again->planner.max_in_flight, part::kAutoInFlight);

  auto capped = quartet("requests = 90\narrival = \"saturate\"", "max_in_flight = 7");
  EXPECT_EQ(capped->scenario.workload.in_flight, 7);
  EXPECT_EQ(part::to_toml(capped->scenario).find("in_flight = 7") != std::string::npos, true);

  std::string text = quartet_text();
  text.replace(text.find("arrival = \"closed\""), 18, "arrival = \"saturate\"");
  auto bad = part::parse_scenario(text, "x.toml");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("workload.in_flight: arrival = \"saturate\""), std::string::npos)
      << bad.error().message;
  text = quartet_text() + "max_in_flight = 0\n";
  bad = part::parse_scenario(text, "x.toml");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("max_in_flight"), std::string::npos) << bad.error().message;
  text = quartet_text() + "max_in_flight = \"many\"\n";
  bad = part::parse_scenario(text, "x.toml");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("expected an integer >= 1 or \"auto\""), std::string::npos)
      << bad.error().message;
}

TEST(Admission, AdmittedScenarioAndPlanCostReserveTheKvCacheOfTheAdmittedRequests) {
  auto p = quartet("requests = 100\nin_flight = 12", "max_batch = 1");
  const auto sc = part::admitted(p->scenario, 5, 3);
  EXPECT_EQ(sc.workload.in_flight, 5);
  EXPECT_EQ(sc.planner.max_in_flight, 5);
  EXPECT_EQ(sc.planner.max_batch, 3);
  part::Plan plan;
  plan.in_flight = 5;
  plan.max_batch = 3;
  const part::PlanCost runs(*p->cost, plan);
  const int last = p->cost->num_nodes() - 1;
  // KV bytes are linear in the requests they are reserved for.
  EXPECT_NEAR(runs.get().kv_bytes(0, last) * 12, p->cost->kv_bytes(0, last) * 5, 1e-6 * p->cost->kv_bytes(0, last));
  EXPECT_DOUBLE_EQ(runs.get().weight_bytes(0, last), p->cost->weight_bytes(0, last));
  // A plan at the scenario's own settings runs on the scenario's cost model itself.
  plan.in_flight = 12;
  plan.max_batch = 1;
  EXPECT_EQ(&part::PlanCost(*p->cost, plan).get(), p->cost.get());
}

TEST(Admission, FixedLimitIsKeptAndCappedByThePopulation) {
  auto p = quartet("requests = 100\nin_flight = 8", "max_in_flight = 3\nmax_batch = 2");
  auto plan = part::make_plan(*p->cost, "adaptlink", part::Objective::throughput);
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_EQ(plan->in_flight, 3);
  EXPECT_EQ(plan->max_batch, 2);
  auto q = quartet("requests = 100\nin_flight = 8", "max_in_flight = 20\nmax_batch = 32");
  plan = part::make_plan(*q->cost, "uniform", part::Objective::throughput);
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_EQ(plan->in_flight, 8);
  EXPECT_EQ(plan->max_batch, 8) << "no batch is larger than the requests in flight";
}

// 64 users of jetson-quartet: uniform's even split cannot hold their KV cache on the small boards, so it admits
// fewer. For every planner the choice is the best of every limit make_plan may try, each planned with that limit
// fixed (so the descent's stopping rule cut off nothing better), and it fits where it runs.
TEST(Admission, ChoosesTheBestLimitThatFitsForEveryPlanner) {
  auto p = quartet("requests = 300\nin_flight = 64", "max_batch = \"auto\"");
  for (const char* planner : {"uniform", "memory", "pipeedge", "adaptlink"}) {
    auto plan = part::make_plan(*p->cost, planner, part::Objective::throughput);
    ASSERT_TRUE(plan) << planner << ": " << plan.error().message;
    const part::PlanCost runs(*p->cost, *plan);
    EXPECT_EQ(runs.scenario().workload.in_flight, plan->in_flight);
    EXPECT_EQ(plan->max_batch, plan->in_flight) << planner << ": the roofline never makes a batch slower";
    for (const auto& st : plan->stages) {
      EXPECT_LE(runs.get().memory_bytes(st.first_node, st.last_node),
                runs.scenario().devices[st.device].mem_bytes)
          << planner;
    }
    double best = 0;
    int best_at = 0;
    for (int a : halvings(64)) {
      auto f = fixed(*p, a);
      auto at = part::make_plan(*f->cost, planner, part::Objective::throughput);
      if (!at) continue;
      EXPECT_EQ(at->in_flight, a);
      if (at->predicted.throughput_rps > best) {
        best = at->predicted.throughput_rps;
        best_at = a;
      }
    }
    EXPECT_NEAR(plan->predicted.throughput_rps, best, 1e-9 * best) << planner << ": best at " << best_at;
    if (std::string(planner) == "uniform") {
      EXPECT_LT(plan->in_flight, 64) << "uniform's split cannot hold 64 requests' KV cache on the Orin Nano";
      EXPECT_FALSE(part::make_plan(*fixed(*p, 64)->cost, planner, part::Objective::throughput));
    }
  }
}

TEST(Admission, LatencyObjectiveAdmitsEveryUserThatFits) {
  auto p = quartet("requests = 100\nin_flight = 6", "max_batch = \"auto\"");
  auto plan = part::make_plan(*p->cost, "adaptlink", part::Objective::latency);
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_EQ(plan->in_flight, 6) << "latency counts from admission: admitting fewer would only hide the wait";
}

// A profile that times every decode batch at three times its steps one at a time: "auto" then runs unbatched.
TEST(Admission, BatchLimitFollowsAProfileThatMakesBatchesSlower) {
  // 16 in flight over uniform's 4 stages: batches of about 4 at each stage.
  auto p = quartet("requests = 100\nin_flight = 16", "max_batch = \"auto\"\nmax_in_flight = 16");
  auto roofline = part::make_plan(*p->cost, "uniform", part::Objective::throughput);
  ASSERT_TRUE(roofline);
  EXPECT_EQ(roofline->max_batch, 16);
  const int nodes = p->cost->num_nodes();
  for (int d = 0; d < p->cost->num_devices(); ++d) {
    part::NodeTimes t;
    t.batch_sizes = {2, 4};
    for (int i = 0; i < nodes; ++i) {
      t.prefill_ms.push_back(p->cost->node_prefill_ms(d, i));
      t.decode_ms_at_zero.push_back(p->cost->node_decode_step_ms(d, i, 0));
      t.decode_ms_per_token.push_back(0);
      t.decode_batch_ms_at_zero.push_back({6 * t.decode_ms_at_zero.back(), 12 * t.decode_ms_at_zero.back()});
    }
    p->cost->set_profile(d, t);
  }
  auto slow = part::make_plan(*p->cost, "uniform", part::Objective::throughput);
  ASSERT_TRUE(slow);
  EXPECT_EQ(slow->max_batch, 1);
}

// The cluster's capacity (saturate): jetson-quartet batched at its best admission limit is at least 4x the
// throughput of the shipped scenario's plan (4 users, one step at a time), and admits more than 4.
TEST(Admission, SaturatedBatchedQuartetIsAtLeastFourTimesTheShippedPlan) {
  auto shipped = part::load_problem(fs::path(ADAPTLINK_SOURCE_DIR) / "scenarios" / "jetson-quartet.toml");
  ASSERT_TRUE(shipped);
  auto today = part::make_plan(*(*shipped)->cost, "adaptlink", part::Objective::throughput);
  ASSERT_TRUE(today);
  auto p = quartet("requests = 400\narrival = \"saturate\"", "max_batch = \"auto\"");
  auto plan = part::make_plan(*p->cost, "adaptlink", part::Objective::throughput);
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_GT(plan->in_flight, 4);
  EXPECT_LE(plan->in_flight, 400 / 3);
  const double ratio = plan->predicted.throughput_rps / today->predicted.throughput_rps;
  std::printf("saturated batched / shipped: %.3f (%d in flight, batches of %d)\n", ratio, plan->in_flight,
              plan->max_batch);
  EXPECT_GE(ratio, 4.0);
}

// The replay's time to first token and per output token, in closed form: one request alone on one device takes
// the prefill to its first token, then its decode steps one after another.
TEST(Admission, ReplayTimesFirstTokenAndPerOutputTokenOfOneRequestAlone) {
  auto p = quartet("requests = 12\nin_flight = 1", "max_batch = 1");
  std::vector<part::Stage> stages{{0, 0, p->cost->num_nodes() - 1}};  // the AGX Orin holds the whole model
  const auto pred = part::predict(*p->cost, stages);
  const int last = p->cost->num_nodes() - 1;
  const double prefill = p->cost->prefill_ms(0, 0, last);
  const double per_token = p->cost->decode_total_ms(0, 0, last) / p->cost->shape().output_tokens;
  EXPECT_NEAR(pred.ttft_p50_ms, prefill, 1e-9 * prefill);
  EXPECT_NEAR(pred.ttft_p99_ms, prefill, 1e-9 * prefill);
  EXPECT_NEAR(pred.tpot_p50_ms, per_token, 1e-9 * per_token);
  EXPECT_NEAR(pred.tpot_p99_ms, per_token, 1e-9 * per_token);
  EXPECT_NEAR(pred.latency_ms, prefill + per_token * p->cost->shape().output_tokens, 1e-9 * pred.latency_ms);
}

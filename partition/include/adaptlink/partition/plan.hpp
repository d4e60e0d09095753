// A plan: which device runs which contiguous node range, in pipeline order, plus backups; and the
// one function that predicts a plan's performance (every planner optimises that same number).
//
// Pipeline model (per request):
//   stage s busy time      C_s = prefill_ms + decode_total_ms of its range on its device
//   link l busy time       L_l = sum over transfers crossing l of bytes / bandwidth
//   transfers              after each stage, its last node's output goes to the next stage
//                          (prefill activation once; per decode step only for text cuts); after the
//                          prefill and after each decode step but the last, the sampled token (4
//                          bytes) goes from the last stage to the stage holding text_embed
//   latency alone          R0  = sum of C_s + every transfer's full time (latency + bytes / bw)
//   bottleneck             W   = max over stages and links of busy time
//   throughput (closed)    X   = min(in_flight / R0, 1 / W)        [requests / s, times in s]
//   throughput (poisson)   X   = min(rate_per_s, 1 / W)
//   latency                     R0 when X is not limited by W, else in_flight / X (Little's law)
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "adaptlink/partition/cost_model.hpp"

namespace adaptlink::partition {

// Bytes of a sampled token id on the back edge (last stage -> the stage holding text_embed).
inline constexpr double kTokenBytes = 4.0;

struct Stage {
  int device = -1;
  int first_node = 0;  // inclusive, topological index
  int last_node = 0;   // inclusive
  double prefill_ms = 0;
  double decode_ms = 0;  // all decode steps of one request
  double memory_bytes = 0;
  // Same device and node range (the derived times and memory follow from those).
  bool operator==(const Stage& o) const {
    return device == o.device && first_node == o.first_node && last_node == o.last_node;
  }
};

struct Backup {
  int device = -1;
  std::vector<int> covers;  // stage indices whose nodes the device preloads
  double memory_bytes = 0;
};

struct Prediction {
  double throughput_rps = 0;  // predict(): replayed (closed loop); evaluate(): the closed-form bound
  double bound_rps = 0;       // the closed-form bound min(in_flight / R0, 1 / W) (or min(rate, 1 / W))
  double tokens_per_s = 0;
  double bottleneck_ms = 0;  // W
  double latency_ms = 0;
  double alone_ms = 0;  // R0
  bool feasible = false;  // every stage fits its device's memory
  // predict() on a closed loop: the replay's time to first token and per output token (p50, p99) over the
  // requests of its steady window; 0 when not replayed.
  double ttft_p50_ms = 0, ttft_p99_ms = 0, tpot_p50_ms = 0, tpot_p99_ms = 0;
};

// One pipeline of a replicated plan (adaptlink, closed loop; see replicas.hpp): it runs on its own device
// group and serves its own share of the requests, independently of the other replicas (disjoint devices,
// hence disjoint links: access links in a star, pair links otherwise).
struct Replica {
  std::vector<int> devices;  // its group (scenario indices, scenario order); its stages use some or all
  int in_flight = 1;         // its share of workload.in_flight
  long long requests = 0;    // its share of workload.requests
  std::vector<Stage> stages;
  Prediction predicted;  // on its own problem (replica_problem in replicas.hpp)
};

// From this many devices in the scenario on, plans list their replicas compactly: one table row per replica, and the
// JSON's replica stages without their node names.
inline constexpr int kCompactDevices = 64;

struct Plan {
  std::string planner;
  Objective objective = Objective::throughput;
  std::vector<Stage> stages;  // with replicas: the first replica's (a runnable one-pipeline plan by itself)
  std::vector<Backup> backups;
  std::vector<int> unbacked_stages;  // stages no backup covers
  Prediction predicted;  // with replicas: their sum (combine_predictions in replicas.hpp)
  // Empty: one pipeline (stages). Otherwise two or more replicas, every back-end runs them all.
  std::vector<Replica> replicas;
  double search_bound_rps = 0;  // adaptlink: the best closed-form bound its search found
  double solve_ms = 0;
  // How the plan runs (make_plan's choice where the scenario says "auto", else the scenario's): requests admitted
  // into the pipeline at once (with replicas: their sum) and every stage's batch limit. 0: the scenario's own
  // (a plan made by a Planner directly).
  int in_flight = 0;
  int max_batch = 0;
  // make_plan's certificate: no plan of `bound_kind` on the same devices, costs, admission limit and one decode step
  // at a time per stage reaches more than `upper_bound_rps` (the closed form, which the unbatched replay never
  // exceeds). 0 where none is proven: batched stages (their closed form is an estimate), or a search table capped.
  double upper_bound_rps = 0;
  std::string bound_kind;  // "one pipeline" (exact bottleneck search), or "any" (every node on its fastest device)
};

// The scenario as a plan with admission limit `in_flight` and batch limit `max_batch` runs it: workload.in_flight
// = in_flight (a saturate workload becomes the closed loop of its admitted requests), planner.max_in_flight and
// planner.max_batch fixed to them (a re-plan after a fault keeps them).
Scenario admitted(const Scenario& scenario, int in_flight, int max_batch);

// The cost model a plan runs on: `base` itself when the plan's settings are its scenario's, else one over the
// admitted scenario (same graph, profiles and slowdowns; the KV reservation of the plan's in_flight).
class PlanCost {
 public:
  PlanCost(const CostModel& base, const Plan& plan);
  [[nodiscard]] const CostModel& get() const { return *cost_; }
  [[nodiscard]] const Scenario& scenario() const { return cost_->scenario(); }

 private:
  std::unique_ptr<Scenario> scenario_;
  std::unique_ptr<CostModel> own_;
  const CostModel* cost_;
};

// Index of the stage whose range holds text_embed (where each decode step starts), -1 if none.
int text_entry_stage(const CostModel& cost, const std::vector<Stage>& stages);

// Fills prefill_ms / decode_ms / memory_bytes of each stage and returns the closed-form prediction
// (what the planners' searches optimise: O(stages)).
Prediction evaluate(const CostModel& cost, std::vector<Stage>& stages);

// Time (ms) to load a stage's weights onto `device` over the link it loads over: its access link in a star, the
// default link in a mesh (a redeployment, or a re-placement's weights moving).
double redeploy_ms(const CostModel& cost, const Stage& stage, int device);
// The same for nodes [first, last] only.
double load_ms(const CostModel& cost, int device, int first, int last);

// Scalar to maximise for an objective: throughput (rps), or -latency for the latency objective.
double score(const Prediction& prediction, Objective objective);

// A prediction's JSON (plan JSON's `predicted`).
nlohmann::json prediction_json(const Prediction& prediction);

// Plan JSON of DESIGN.md.
nlohmann::json to_json(const Plan& plan, const CostModel& cost);

}  // namespace adaptlink::partition

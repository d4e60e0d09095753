// Replicated plans: the closed loop served by several independent pipelines (replicas) on disjoint device
// groups, each with its own share of the requests in flight.
//
// Why: with as many requests in flight as stages, each decode step's round trip through every stage leaves
// stages idle, and the vision tower's stage idles through all decode steps. A device that holds the whole
// model alone never waits for another, and a group of two small devices waits far less than a pipeline of
// eight. Replicas trade that idle time for memory (every group holds a whole copy of the model).
//
// Semantics (every back-end): replica r runs replicas[r].stages with replicas[r].in_flight requests in its
// own closed loop and serves replicas[r].requests of the workload's requests; a request stays on its replica.
// Replicas share no device and, as the network model gives every device its own access link (star) or every
// pair its own link (mesh, [[links]]), no link either: each replica is exactly the one-pipeline problem on a
// scenario where the other groups' devices are absent (replica_problem below). The plan's throughput is the
// sum of the replicas'.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "adaptlink/partition/plan.hpp"
#include "adaptlink/planner/replay.hpp"

namespace adaptlink::partition {

// A replica's own problem: the scenario with every device outside `devices` made standby, in_flight and
// requests set to the replica's share, no backups, no faults, no replicas; the cost model keeps the base's
// profiles and slowdowns. The scenario is heap-held: the cost model points to it.
struct ReplicaProblem {
  std::unique_ptr<Scenario> scenario;
  std::unique_ptr<CostModel> cost;
};
ReplicaProblem replica_problem(const CostModel& cost, const std::vector<int>& devices, int in_flight,
                               long long requests);

// The plan's prediction from its replicas': throughput, tokens/s and bound add up; bottleneck_ms is the
// aggregate capacity's 1e3 / sum(1e3 / W_r); latency and alone time are throughput-weighted means.
Prediction combine_predictions(const std::vector<Replica>& replicas);

// `total` requests shared out among the replicas in proportion to their `requests` (largest remainder), each
// at least its in_flight: how predict_replicated (and the simulator, given fewer requests to run) shares a
// shorter run.
std::vector<long long> share_requests(const std::vector<Replica>& replicas, long long total);

// Replays every replica on its own problem (its share of min(workload.requests, max_requests) requests) and
// fills replicas[r].predicted; the plan's throughput is then counted as one closed loop would count it: over
// the steady window (report.hpp) of all replicas' completions merged, with the sum of their in_flight, so the
// replicas' warm-up and drain weigh as a single pipeline's do. Other fields as combine_predictions.
Prediction predict_replicated(const CostModel& cost, std::vector<Replica>& replicas,
                              long long max_requests = kReplayRequests);

// Whether the scenario lets adaptlink consider replicas (see PlannerSettings::replicas).
bool replicas_allowed(const Scenario& scenario, Objective objective);

// A replicated plan replaces the one-pipeline plan only when it is this much faster.
inline constexpr double kReplicaMinGain = 1.01;

// adaptlink's replica search (replicas.cpp): device groups from memory (devices that hold the model alone,
// then groups just large enough to hold it, then coarser merges), in-flight slots handed out by marginal
// gain, each group planned by adaptlink itself. Returns the best replicated plan it finished (its prediction the
// reported, replayed one), or nothing where the scenario allows no replicas or no grouping fits; the caller keeps it
// only when it beats the one-pipeline plan by kReplicaMinGain.
std::optional<Plan> plan_replicas(const CostModel& cost, Objective objective);

}  // namespace adaptlink::partition

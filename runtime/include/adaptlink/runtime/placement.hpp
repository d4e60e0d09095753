// Where the pipeline runs now: the stages (contiguous node ranges in pipeline order, on scenario devices) and the
// backups that devices preload, with the epoch every recovery raises. Back-ends that run devices as worker
// processes keep the device <-> worker maps apart (WorkerMap): the placement speaks of scenario devices only.
#pragma once

#include <vector>

#include "adaptlink/partition/plan.hpp"

namespace adaptlink::runtime {

struct Placement {
  std::vector<partition::Stage> stages;
  std::vector<partition::Backup> backups;
  long long epoch = 0;  // placement generation: raised by every recovery that changes the stages

  static Placement of(const partition::Plan& plan) { return {plan.stages, plan.backups, 0}; }
  // The stage holding text_embed (where every decode step starts), -1 if none.
  [[nodiscard]] int text_stage(const partition::CostModel& cost) const {
    return partition::text_entry_stage(cost, stages);
  }
  // Per DAG node: the device that runs it (-1 for none).
  [[nodiscard]] std::vector<int> node_devices(int nodes) const;
  // Stage indices on `device`.
  [[nodiscard]] std::vector<int> stages_on(int device) const;
  // Whether the two place the same stages on the same devices (backups aside).
  [[nodiscard]] bool same_stages(const Placement& other) const { return stages == other.stages; }
};

// Scenario devices <-> worker processes (exec/): a device without a worker has -1.
struct WorkerMap {
  std::vector<int> worker_of_device;
  std::vector<int> device_of_worker;

  static WorkerMap identity(int n);
  [[nodiscard]] int worker(int device) const { return worker_of_device[static_cast<size_t>(device)]; }
  [[nodiscard]] int device(int worker) const { return device_of_worker[static_cast<size_t>(worker)]; }
};

}  // namespace adaptlink::runtime

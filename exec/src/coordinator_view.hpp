// What the coordinator knows of the cluster, apart from its sockets: the recovery view (the policy and the cluster
// state over scenario devices, which worker is which device) and the translation of a placement into the wire's
// stage entries for each worker. Not installed: only coordinator.cpp includes it.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/exec/coordinator.hpp"
#include "adaptlink/exec/wire.hpp"
#include "adaptlink/partition/problem.hpp"
#include "adaptlink/runtime/placement.hpp"
#include "adaptlink/runtime/recovery.hpp"

namespace adaptlink::exec::detail {

using Range = std::pair<int, int>;  // a stage's node range [first, last]

// The recovery policy's view: the scenario's devices (or, without a RecoverySpec, the workers alone), the
// pipeline's placement in device indices, every device with a worker up.
struct RecoveryView {
  std::unique_ptr<partition::Problem> own_cluster;  // without a RecoverySpec: the workers alone
  const partition::Scenario* scenario = nullptr;
  runtime::WorkerMap map;
  std::optional<runtime::RecoveryPolicy> policy;
  runtime::ClusterState cluster;
};
Expected<RecoveryView> recovery_view(const PipelineSpec& spec, const models::LlavaConfig& config);

// A stage entry that only holds weights (a backup, or a preload before a switch).
wire::StageEntry preloaded(int first, int last);

// Placement -> wire stage entries, given where each worker listens and the emulated link between two workers.
struct WireRoutes {
  const runtime::WorkerMap& map;
  std::function<std::string(int worker)> endpoint;
  std::function<std::string(int worker)> public_key;
  std::function<LinkShape(int from, int to)> link;

  // The entry for stage s: its range, active, where it sends and over which link.
  [[nodiscard]] wire::StageEntry entry(const runtime::Placement& p, size_t s) const;
  // Worker w's entries in `p`: its stages (active) and its backups (preloaded, inactive); every range listed goes
  // into `held`.
  [[nodiscard]] std::vector<wire::StageEntry> holdings(const runtime::Placement& p, int w, std::set<Range>& held) const;
};

// Workers' trace events (wall-clock microseconds) as stage timings relative to the run's start.
void append_timings(std::vector<StageTiming>& out, const std::vector<wire::TraceEvent>& events, int64_t start_wall_us);

}  // namespace adaptlink::exec::detail

#include "adaptlink/planner/backup.hpp"

#include <algorithm>
#include <numeric>

namespace adaptlink::partition {

void place_backups(const CostModel& cost, Plan& plan) {
  plan.backups.clear();
  plan.unbacked_stages.clear();
  const auto& devices = cost.scenario().devices;
  const int n = static_cast<int>(devices.size());
  // Spare memory per device after its own stage.
  std::vector<double> spare(static_cast<size_t>(n));
  std::vector<bool> active(static_cast<size_t>(n), false);
  for (int d = 0; d < n; ++d) spare[d] = devices[d].mem_bytes;
  for (const auto& st : plan.stages) {
    spare[st.device] -= st.memory_bytes;
    active[st.device] = true;
  }
  std::vector<int> backup_of(static_cast<size_t>(n), -1);  // device -> index in plan.backups

  const int k = static_cast<int>(plan.stages.size());
  std::vector<double> value(static_cast<size_t>(k));
  for (int s = 0; s < k; ++s) {
    const auto& st = plan.stages[s];
    // With no rates given every device is equally likely to drop out.
    const double rate = devices[st.device].dropout_rate > 0 ? devices[st.device].dropout_rate : 1e-6;
    value[s] = rate * redeploy_ms(cost, st, st.device);
  }
  std::vector<int> order(static_cast<size_t>(k));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return value[a] > value[b]; });

  for (int s : order) {
    const auto& st = plan.stages[s];
    int best = -1;
    for (int d = 0; d < n; ++d) {
      if (d == st.device || spare[d] < st.memory_bytes) continue;
      if (best < 0) {
        best = d;
        continue;
      }
      // Standby devices first (they are idle), then the most spare memory.
      const bool d_standby = !active[d], best_standby = !active[best];
      if (d_standby != best_standby ? d_standby : spare[d] > spare[best]) best = d;
    }
    if (best < 0) {
      plan.unbacked_stages.push_back(s);
      continue;
    }
    spare[best] -= st.memory_bytes;
    if (backup_of[best] < 0) {
      backup_of[best] = static_cast<int>(plan.backups.size());
      plan.backups.push_back(Backup{best, {}, 0});
    }
    auto& b = plan.backups[backup_of[best]];
    b.covers.push_back(s);
    b.memory_bytes += st.memory_bytes;
  }
  for (auto& b : plan.backups) std::sort(b.covers.begin(), b.covers.end());
  std::sort(plan.unbacked_stages.begin(), plan.unbacked_stages.end());
}

}  // namespace adaptlink::partition

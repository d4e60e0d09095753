// Backup placement: which standby devices (and which active devices with spare memory) preload
// which stages, so that a device that drops out is replaced without reloading weights.
//
// A backup of stage s on holder h needs the stage's full memory (weights + KV cache + buffers) on
// top of what h already holds, since h runs the stage after a failover. The value of backing up s
// is its device's dropout rate times the time a backup saves: reloading the stage's weights over
// the holder's link (the redeployment the paper compares against). Stages go in order of value
// (largest weights first when no rates are given) to the holder with the most spare memory that
// fits, standby devices first.
#pragma once

#include "adaptlink/partition/plan.hpp"

namespace adaptlink::partition {

// Fills plan.backups and plan.unbacked_stages. (redeploy_ms, the time a backup saves, is in plan.hpp.)
void place_backups(const CostModel& cost, Plan& plan);

}  // namespace adaptlink::partition

// Typed runtime faults, as both back-ends report them (runtime/report.hpp's faults[]): how a lost device was
// found, and what the recovery policy did about a dropout or a rejoin (runtime/recovery.hpp).
#pragma once

#include <optional>
#include <string_view>

namespace adaptlink::runtime {

// How a device was found lost.
//   process_exit       its process ended (the testbed watches the workers it started; a broken connection)
//   heartbeat_timeout  silent for the heartbeat timeout (partition::RecoverySettings): hung, powered off, cut off;
//                      the simulator detects every dropout this way
//   send_failure       a message to it could not be sent
enum class LossCause { process_exit, heartbeat_timeout, send_failure };
std::string_view to_string(LossCause cause);
std::optional<LossCause> parse_loss_cause(std::string_view name);

// What a recovery did (RecoveryPolicy's decisions):
//   none         nothing to move (the lost device held no stage; a rejoined device stays a spare, or is lost twice)
//   switch_over  every stage of the lost device moves to a live device that preloaded it (a backup)
//   redeploy     some stage moves to a live device without a copy, which first loads its weights
//   replan       the planner re-plans on the devices that are up; they load what they lack, requests rebuild
//   rebalance    a rejoin: the planner re-plans on the devices up; the new placement serves after a safe point
enum class RecoveryAction { none, switch_over, redeploy, replan, rebalance };
std::string_view to_string(RecoveryAction action);
std::optional<RecoveryAction> parse_recovery_action(std::string_view name);

}  // namespace adaptlink::runtime

// runtime::StageQueue: what a device runs next, as tables of arrivals -> the order next() gives, under both
// schedules; when a running prefill yields; a parked prefill's place.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "adaptlink/runtime/stage_queue.hpp"

namespace adaptlink::runtime {
namespace {

using partition::Schedule;

struct Arrival {
  TaskKind kind;
  std::string name;
};

std::string order(StageQueue<std::string>& q) {
  std::string out;
  while (auto t = q.next()) out += (out.empty() ? "" : " ") + *t;
  return out;
}

StageQueue<std::string> queue_of(Schedule schedule, const std::vector<Arrival>& arrivals) {
  StageQueue<std::string> q(schedule);
  for (const auto& a : arrivals) q.push(a.kind, a.name);
  return q;
}

const std::vector<Arrival> kMixed = {{TaskKind::prefill, "p1"}, {TaskKind::decode, "d1"},  {TaskKind::control, "end"},
                                     {TaskKind::prefill, "p2"}, {TaskKind::rebuild, "r1"}, {TaskKind::decode, "d2"},
                                     {TaskKind::rebuild, "r2"}};

TEST(StageQueue, FifoTakesRebuildsFirstThenArrivalOrder) {
  auto q = queue_of(Schedule::fifo, kMixed);
  EXPECT_EQ(q.size(), 7u);
  EXPECT_FALSE(q.prefill_yields());  // fifo: a prefill holds the device for its whole range
  EXPECT_EQ(order(q), "r1 r2 p1 d1 end p2 d2");
  EXPECT_TRUE(q.empty());
}

TEST(StageQueue, DecodeFirstTakesRebuildsThenDecodeStepsThenTheRestInArrivalOrder) {
  auto q = queue_of(Schedule::decode_first, kMixed);
  EXPECT_EQ(order(q), "r1 r2 d1 d2 p1 end p2");
}

TEST(StageQueue, APrefillYieldsUnderDecodeFirstOnlyWhenARebuildOrDecodeStepWaits) {
  for (const auto& [arrivals, yields] : std::vector<std::pair<std::vector<Arrival>, bool>>{
           {{}, false},
           {{{TaskKind::prefill, "p"}}, false},
           {{{TaskKind::control, "end"}}, false},
           {{{TaskKind::decode, "d"}}, true},
           {{{TaskKind::rebuild, "r"}}, true},
           {{{TaskKind::prefill, "p"}, {TaskKind::decode, "d"}}, true}}) {
    EXPECT_EQ(queue_of(Schedule::decode_first, arrivals).prefill_yields(), yields) << arrivals.size();
    EXPECT_FALSE(queue_of(Schedule::fifo, arrivals).prefill_yields());
  }
}

TEST(StageQueue, AParkedPrefillGoesOnBeforeEveryOtherPrefillButAfterRebuildsAndDecodeSteps) {
  StageQueue<std::string> q(Schedule::decode_first);
  q.push(TaskKind::prefill, "p2");  // waiting while p1 runs
  q.push(TaskKind::decode, "d1");   // arrives: p1 yields after its node
  ASSERT_TRUE(q.prefill_yields());
  q.park("p1-rest");
  q.push(TaskKind::rebuild, "r1");
  q.push(TaskKind::decode, "d2");
  EXPECT_EQ(order(q), "r1 d1 d2 p1-rest p2");
}

TEST(StageQueue, TakeAllEmptiesInNextOrderAndScheduleCanBeSet) {
  auto q = queue_of(Schedule::fifo, kMixed);
  q.set_schedule(Schedule::decode_first);  // the tasks already queued keep their places
  EXPECT_EQ(q.schedule(), Schedule::decode_first);
  const auto all = q.take_all();
  EXPECT_EQ(all.size(), 7u);
  EXPECT_EQ(all.front(), "r1");
  EXPECT_TRUE(q.empty());
  q.push(TaskKind::decode, "d");
  q.clear();
  EXPECT_FALSE(q.next().has_value());
}

}  // namespace
}  // namespace adaptlink::runtime

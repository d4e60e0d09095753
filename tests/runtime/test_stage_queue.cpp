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

// Batches as next_batch() forms them, written "a+b" per batch; decode steps are named <stage><letter> ("1a": stage 1)
// and join when their stages are equal.
std::string batches(StageQueue<std::string>& q) {
  std::string out;
  for (;;) {
    const auto batch = q.next_batch([](const std::string& a, const std::string& b) { return a[0] == b[0]; });
    if (batch.empty()) return out;
    std::string one;
    for (const auto& t : batch) one += (one.empty() ? "" : "+") + t;
    out += (out.empty() ? "" : " ") + one;
  }
}

// One pick of a one-stage queue (every decode step may join), as a string; "" when nothing waits.
std::string take(StageQueue<std::string>& q) {
  std::string one;
  for (const auto& t : q.next_batch([](const std::string&, const std::string&) { return true; })) {
    one += (one.empty() ? "" : "+") + t;
  }
  return one;
}

const std::vector<Arrival> kBatchable = {{TaskKind::decode, "1a"},  {TaskKind::decode, "1b"}, {TaskKind::prefill, "p1"},
                                         {TaskKind::decode, "2a"},  {TaskKind::decode, "1c"}, {TaskKind::rebuild, "r1"},
                                         {TaskKind::decode, "1d"},  {TaskKind::control, "e"}, {TaskKind::decode, "1e"}};

TEST(StageQueue, MaxBatchOneIsNextExactly) {
  for (auto schedule : {Schedule::fifo, Schedule::decode_first}) {
    auto a = queue_of(schedule, kBatchable);
    auto b = queue_of(schedule, kBatchable);
    std::string one_by_one = order(a);
    EXPECT_EQ(batches(b), one_by_one);
  }
}

TEST(StageQueue, DecodeFirstBatchesTheOldestDecodeStepsOfOneStageAfterTheRebuilds) {
  auto q = queue_of(Schedule::decode_first, kBatchable);
  q.set_max_batch(3);
  // The rebuild alone first; then stage 1's three oldest, stage 2's, stage 1's rest, each decode batch followed by
  // the turn of a waiting prefill or control task (alone).
  EXPECT_EQ(batches(q), "r1 1a+1b+1c p1 2a e 1d+1e");
  auto big = queue_of(Schedule::decode_first, kBatchable);
  big.set_max_batch(16);
  EXPECT_EQ(batches(big), "r1 1a+1b+1c+1d+1e p1 2a e");
}

// A stage whose decode steps never stop coming (one stage: each token comes straight back) still lets the prefills
// in: what a decode batch passed over goes next, and a prefill's one node then yields to the decode steps waiting.
TEST(StageQueue, BatchedDecodeFirstTakesTurnsWithThePrefills) {
  StageQueue<std::string> q(Schedule::decode_first, 8);
  q.push(TaskKind::decode, "a1");
  q.push(TaskKind::prefill, "pb");
  q.push(TaskKind::prefill, "pc");
  EXPECT_EQ(take(q), "a1");
  q.push(TaskKind::decode, "a2");  // a's next step is back before the stage picks again
  EXPECT_EQ(take(q), "pb");
  EXPECT_TRUE(q.prefill_yields());  // pb runs one node, then yields to a2
  q.park("pb'");
  EXPECT_EQ(take(q), "a2");
  q.push(TaskKind::decode, "a3");
  EXPECT_EQ(take(q), "pb'");  // the parked rest goes on before pc
  q.park("pb''");
  q.push(TaskKind::decode, "b1");   // pb ended meanwhile (its last node): b decodes with a
  EXPECT_EQ(take(q), "a3+b1");
  EXPECT_EQ(take(q), "pb''");
  // Nothing waiting is no turn: after a decode batch and an empty pick, the decode steps that come next still
  // make way for a prefill first.
  EXPECT_EQ(take(q), "pc");
  q.park("pc'");
  q.push(TaskKind::decode, "a4");
  EXPECT_EQ(take(q), "a4");
  EXPECT_EQ(take(q), "pc'");
  EXPECT_EQ(take(q), "");
  q.push(TaskKind::decode, "a5");
  EXPECT_EQ(take(q), "a5");
  EXPECT_EQ(take(q), "");
  // A prefill that arrives after a decode batch waits for the next one: the turn goes to what a batch passed over.
  q.push(TaskKind::decode, "a6");
  q.push(TaskKind::prefill, "pd");
  EXPECT_EQ(take(q), "a6");
  q.push(TaskKind::decode, "a7");
  EXPECT_EQ(take(q), "pd");
  // Unbatched decode-first keeps its order: every decode step before any prefill.
  StageQueue<std::string> one(Schedule::decode_first, 1);
  one.push(TaskKind::decode, "a1");
  one.push(TaskKind::prefill, "pb");
  one.push(TaskKind::decode, "a2");
  EXPECT_EQ(batches(one), "a1 a2 pb");
}

TEST(StageQueue, FifoBatchesOnlyConsecutiveDecodeStepsOfOneStage) {
  auto q = queue_of(Schedule::fifo, kBatchable);
  q.set_max_batch(8);
  // Nothing overtakes an earlier arrival: a prefill, another stage's step or a control task ends a batch.
  EXPECT_EQ(batches(q), "r1 1a+1b p1 2a 1c+1d e 1e");
}

TEST(StageQueue, ABatchTakesWhatWaitsWithoutWaitingToFill) {
  StageQueue<std::string> q(Schedule::decode_first, 8);
  EXPECT_EQ(q.max_batch(), 8);
  q.push(TaskKind::decode, "1a");
  EXPECT_EQ(batches(q), "1a");
  q.push(TaskKind::decode, "1b");
  q.push(TaskKind::decode, "1c");
  EXPECT_EQ(batches(q), "1b+1c");
  EXPECT_TRUE(q.empty());
  StageQueue<std::string> zero(Schedule::fifo, 0);  // a limit below 1 means 1
  EXPECT_EQ(zero.max_batch(), 1);
}

}  // namespace
}  // namespace adaptlink::runtime

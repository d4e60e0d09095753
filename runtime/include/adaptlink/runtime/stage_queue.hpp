// What a device runs next: the one rule of the pipeline's stage scheduling, which the replay predictor
// (planner/src/replay.cpp), the SimGrid actors (sim/src/engine.cpp) and the workers (exec/src/worker.cpp) all
// ask. No clock and no mechanism here: the back-ends own time, sleeping and sockets, and push what arrives.
//
// Tasks of a device (every stage it runs shares its one queue):
//   rebuild   a recovery's KV-cache rebuild of one request (after a dropout or a re-placement)
//   decode    one decode step of one request
//   prefill   a request's prefill over the stage's nodes (it may run node by node, see below)
//   control   anything else in arrival order with the prefills (a worker's "end": drop a request's cache)
//
// The order, under the scenario's planner.schedule:
//   both        rebuilds go first, oldest first: a recovery is not held up by new work;
//   fifo        then everything else in arrival order; a prefill holds the device for all of its nodes;
//   decode-first
//               then decode steps, oldest first; then a prefill that yielded (it resumes before any other
//               prefill); then prefills and control tasks in arrival order. A running prefill yields after a
//               node (not its stage's last) when a rebuild or a decode step waits: the back-end hands the rest
//               back with park() and runs next() instead. So no request holds a device for a whole prefill
//               while the others' decode steps queue behind it.
//
// Batches (planner.max_batch > 1): next_batch() takes a rebuild alone, or up to max_batch decode steps that can run
// as one forward (the back-end says which may join the first: the same stage), or a prefill or control task alone.
// Which decode steps join: decode-first, the oldest waiting ones of the first's stage, wherever they are in the
// queue; fifo, the decode steps of the first's stage that follow it in arrival order without a prefill, rebuild or
// control task between them (nothing overtakes a task that arrived earlier). A device does not wait for a batch to
// fill: it takes what waits. Batched decode-first takes turns: a prefill or control task that a decode batch passed
// over goes next (a prefill then runs one node and yields to the decode steps waiting), so a stage whose decode
// steps never stop arriving (one stage, or any stage at capacity) still lets new requests in to join its batches
// instead of serving the requests it decodes one cohort at a time. max_batch 1 is next() exactly.
#pragma once

#include <cstddef>
#include <deque>
#include <optional>
#include <utility>
#include <vector>

#include "adaptlink/partition/scenario.hpp"

namespace adaptlink::runtime {

enum class TaskKind { rebuild, decode, prefill, control };

template <class T>
class StageQueue {
 public:
  explicit StageQueue(partition::Schedule schedule = partition::Schedule::decode_first, int max_batch = 1)
      : schedule_(schedule), max_batch_(max_batch < 1 ? 1 : max_batch) {}

  [[nodiscard]] partition::Schedule schedule() const { return schedule_; }
  void set_schedule(partition::Schedule schedule) { schedule_ = schedule; }
  [[nodiscard]] int max_batch() const { return max_batch_; }
  void set_max_batch(int max_batch) { max_batch_ = max_batch < 1 ? 1 : max_batch; }

  // A task that arrived.
  void push(TaskKind kind, T task) {
    if (kind == TaskKind::rebuild) {
      rebuilds_.push_back(std::move(task));
    } else if (kind == TaskKind::decode && schedule_ == partition::Schedule::decode_first) {
      decodes_.push_back(std::move(task));
    } else {
      others_.push_back({kind, std::move(task)});
    }
  }

  // The rest of a prefill that yielded after a node: it goes on before every other prefill.
  void park(T rest) { others_.push_front({TaskKind::prefill, std::move(rest)}); }

  // Whether a running prefill yields after its current node (when that is not its stage's last).
  [[nodiscard]] bool prefill_yields() const {
    return schedule_ == partition::Schedule::decode_first && (!rebuilds_.empty() || !decodes_.empty());
  }

  // Takes the task that runs next; nullopt when none waits.
  std::optional<T> next() {
    for (auto* from : {&rebuilds_, &decodes_}) {
      if (from->empty()) continue;
      T task = std::move(from->front());
      from->pop_front();
      return task;
    }
    if (others_.empty()) return std::nullopt;
    T task = std::move(others_.front().task);
    others_.pop_front();
    return task;
  }

  // Takes what runs next as one batch (see the top): empty when nothing waits. `joins(first, other)` says whether
  // the decode step `other` may run in one forward with the decode step `first` (the same stage).
  template <class Joins>
  std::vector<T> next_batch(Joins joins) {
    std::vector<T> batch;
    if (!rebuilds_.empty() || max_batch_ == 1) {
      if (auto t = next()) batch.push_back(std::move(*t));
      return batch;
    }
    if (empty()) return batch;  // taking nothing is no turn
    const bool turn_of_others = passed_over_ && !others_.empty();
    if (!decodes_.empty() && !turn_of_others) {  // decode-first: the oldest decode steps of the first's stage
      passed_over_ = !others_.empty();
      batch.push_back(std::move(decodes_.front()));
      decodes_.pop_front();
      for (auto it = decodes_.begin(); it != decodes_.end() && static_cast<int>(batch.size()) < max_batch_;) {
        if (joins(batch.front(), *it)) {
          batch.push_back(std::move(*it));
          it = decodes_.erase(it);
        } else {
          ++it;
        }
      }
      return batch;
    }
    if (others_.empty()) return batch;
    passed_over_ = false;
    const bool decode = others_.front().kind == TaskKind::decode;
    batch.push_back(std::move(others_.front().task));
    others_.pop_front();
    while (decode && !others_.empty() && static_cast<int>(batch.size()) < max_batch_ &&
           others_.front().kind == TaskKind::decode && joins(batch.front(), others_.front().task)) {
      batch.push_back(std::move(others_.front().task));
      others_.pop_front();
    }
    return batch;
  }

  [[nodiscard]] bool empty() const { return rebuilds_.empty() && decodes_.empty() && others_.empty(); }
  [[nodiscard]] size_t size() const { return rebuilds_.size() + decodes_.size() + others_.size(); }

  // Every waiting task, in the order next() would take them (a recovery re-queues them elsewhere).
  std::deque<T> take_all() {
    std::deque<T> out;
    while (auto t = next()) out.push_back(std::move(*t));
    return out;
  }
  // Every waiting task with its kind: rebuilds, then decode-first's decode steps, then the rest, each in queue order.
  // A back-end that compares its state (the replay's steady-state skip) reads it with for_each and relabels with
  // for_each_mut.
  template <class F>
  void for_each(F f) const {
    for (const auto& t : rebuilds_) f(TaskKind::rebuild, t);
    for (const auto& t : decodes_) f(TaskKind::decode, t);
    for (const auto& o : others_) f(o.kind, o.task);
  }
  template <class F>
  void for_each_mut(F f) {
    for (auto& t : rebuilds_) f(t);
    for (auto& t : decodes_) f(t);
    for (auto& o : others_) f(o.task);
  }
  // Whether the last batch passed over a waiting prefill or control task (the turn rule above).
  [[nodiscard]] bool passed_over() const { return passed_over_; }

  void clear() {
    rebuilds_.clear();
    decodes_.clear();
    others_.clear();
    passed_over_ = false;
  }

 private:
  struct Other {
    TaskKind kind;
    T task;
  };
  partition::Schedule schedule_;
  int max_batch_ = 1;
  bool passed_over_ = false;  // the last batch was decode steps taken while a prefill or control task waited
  std::deque<T> rebuilds_, decodes_;
  std::deque<Other> others_;  // prefills, control tasks (and fifo's decode steps), with their kinds
};

}  // namespace adaptlink::runtime

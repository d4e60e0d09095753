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
#pragma once

#include <cstddef>
#include <deque>
#include <optional>
#include <utility>

#include "adaptlink/partition/scenario.hpp"

namespace adaptlink::runtime {

enum class TaskKind { rebuild, decode, prefill, control };

template <class T>
class StageQueue {
 public:
  explicit StageQueue(partition::Schedule schedule = partition::Schedule::decode_first) : schedule_(schedule) {}

  [[nodiscard]] partition::Schedule schedule() const { return schedule_; }
  void set_schedule(partition::Schedule schedule) { schedule_ = schedule; }

  // A task that arrived.
  void push(TaskKind kind, T task) {
    if (kind == TaskKind::rebuild) {
      rebuilds_.push_back(std::move(task));
    } else if (kind == TaskKind::decode && schedule_ == partition::Schedule::decode_first) {
      decodes_.push_back(std::move(task));
    } else {
      others_.push_back(std::move(task));
    }
  }

  // The rest of a prefill that yielded after a node: it goes on before every other prefill.
  void park(T rest) { others_.push_front(std::move(rest)); }

  // Whether a running prefill yields after its current node (when that is not its stage's last).
  [[nodiscard]] bool prefill_yields() const {
    return schedule_ == partition::Schedule::decode_first && (!rebuilds_.empty() || !decodes_.empty());
  }

  // Takes the task that runs next; nullopt when none waits.
  std::optional<T> next() {
    for (auto* from : {&rebuilds_, &decodes_, &others_}) {
      if (from->empty()) continue;
      T task = std::move(from->front());
      from->pop_front();
      return task;
    }
    return std::nullopt;
  }

  [[nodiscard]] bool empty() const { return rebuilds_.empty() && decodes_.empty() && others_.empty(); }
  [[nodiscard]] size_t size() const { return rebuilds_.size() + decodes_.size() + others_.size(); }

  // Every waiting task, in the order next() would take them (a recovery re-queues them elsewhere).
  std::deque<T> take_all() {
    std::deque<T> out;
    while (auto t = next()) out.push_back(std::move(*t));
    return out;
  }
  void clear() {
    rebuilds_.clear();
    decodes_.clear();
    others_.clear();
  }

 private:
  partition::Schedule schedule_;
  std::deque<T> rebuilds_, decodes_, others_;
};

}  // namespace adaptlink::runtime

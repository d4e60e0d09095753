// Replay predictor: a deterministic event-driven pass of a closed-loop workload through a plan.
//
// The closed-form bound min(in_flight / R0, 1 / W) of evaluate() is what the DP optimises; it
// assumes every request looks alike. Real requests do not: a prefill holds a stage ten to a
// hundred times longer than a decode step, and in a pipeline with few requests in flight the
// others pile up behind it. The replay measures that, with the same semantics as the simulator:
//   * each stage is a server of one task at a time (exact compute time from the cost model) that takes its
//     next task from a runtime::StageQueue under the scenario's planner.schedule (fifo: arrival order, a
//     prefill holds the stage for its whole node range; decode-first: waiting decode steps go first, a
//     prefill runs node by node and yields to a decode step that waits when a node ends, then resumes
//     before any other prefill); with planner.max_batch > 1 the waiting decode steps the queue hands out
//     together run as one batch (CostModel::decode_batch_ms) and travel on as one message of their summed
//     bytes;
//   * a transfer crosses its route hop by hop (store and forward); each hop waits its latency,
//     then shares the link's bandwidth equally with the other flows on it;
//   * a request: prefill through every stage, then output_tokens decode steps from the stage with
//     text_embed to the last stage, the sampled token going back after the prefill and after every
//     decode step but the last; a finished request is replaced at once (closed loop);
//   * throughput is counted over the steady window of report.hpp (completions first..last).
// No SimGrid here: this is the core's cost model of a whole pipeline, fast enough (a few ms for
// 40 requests) to rank a planner's best candidates.
//
// The steady-state skip (ReplayOptions::skip_steady). A pipeline of alike requests often settles into a cycle:
// after some completion n its whole state is that of an earlier completion m, dt = t_n - t_m later, with every
// request dp = n - m admissions younger. The state is everything the future depends on: the pending events (their
// times relative to now, in pop order, which also fixes the ties), each stage's queue, its busy time and running
// prefill, each link's flows (their remaining bytes, in departure order), and the admission and first-token times
// of the requests in flight. The replay is deterministic, invariant under a shift of its clock (it only adds
// durations to times and compares times), and requests are alike (an id only names one), so from n on it plays
// the stretch m..n again, dt later, for as long as admissions go on: the completions of each repeat are those of
// m..n, k * dt later, with the same time to first token and per output token. The skip plays k whole repeats at
// once (as many as end before the steady window's last completion and the last admission), moves the state dt * k
// later and dp * k admissions on, and goes on event by event: the window's end and the drain are replayed.
// The error bound: in exact arithmetic the skip is exact. In floating point the two states are matched with the
// discrete part (kinds, stages, steps, queue orders, request ages) equal and every time and byte count equal to a
// relative 1e-9 (kSkipTolerance; rounding of times of 1e5 ms is ~1e-11); the shift adds k * dt, one rounding per
// value. Tests/planner/test_replay.cpp holds every completion, time to first token and per output token, the
// throughput and the mean latency to 1e-9 of the event-by-event replay on the suite (as it is, batched, fifo, one
// in flight). A pipeline that never repeats (many stages and requests in flight whose steps keep interleaving
// differently) is replayed event by event, as before.
#include <algorithm>
#include <cstdint>
#include <cmath>
#include <deque>
#include <limits>
#include <queue>
#include <tuple>
#include <unordered_map>

#include "adaptlink/planner/replay.hpp"
#include "adaptlink/runtime/report.hpp"
#include "adaptlink/runtime/run_recorder.hpp"
#include "adaptlink/runtime/stage_queue.hpp"

namespace adaptlink::partition {

namespace {

// The steady-state skip's match: continuous state values equal to this relative precision (see the top).
constexpr double kSkipTolerance = 1e-9;

enum class Kind { task, join, check, wake };

struct Event {
  double t;
  long long seq;
  Kind kind;
  int request = 0;
  int stage = 0;  // task, wake: the stage that runs it; join: the stage the transfer goes to
  int step = 0;   // -1 prefill, k >= 0 decode step k
  int hop = 0;    // join: which hop of the route
  int from = 0;   // join: the sending stage
  int batch = -1;  // join of a batch's message: its members (Replay::batches_); task: -1
  double bytes = 0;
  int link = 0;  // check: which link
  long long version = 0;
};

// The event queue keeps small keys and stores the events in a pool (heap moves stay cheap).
class EventQueue {
 public:
  void push(const Event& e) {
    int slot;
    if (free_.empty()) {
      slot = static_cast<int>(pool_.size());
      pool_.push_back(e);
    } else {
      slot = free_.back();
      free_.pop_back();
      pool_[static_cast<size_t>(slot)] = e;
    }
    // (rank, seq, slot) in one word, compared as one: seq below 2^40, slots (pending events) below 2^23.
    const auto tie = (static_cast<uint64_t>(e.kind == Kind::wake) << 63) | (static_cast<uint64_t>(e.seq) << 23) |
                     static_cast<uint64_t>(slot);
    // An arrival at the current instant goes after every pending event of this instant (its seq is the largest), so
    // a queue in push order holds it in pop order without the heap.
    if (e.t == now_ && e.kind != Kind::wake) {
      now_queue_.push_back(Key{e.t, tie});
      return;
    }
    heap_.push_back(Key{e.t, tie});
    std::push_heap(heap_.begin(), heap_.end(), std::greater<>());
  }
  [[nodiscard]] bool empty() const { return heap_.empty() && now_head_ == now_queue_.size(); }
  Event pop() {
    Key k;
    if (now_head_ < now_queue_.size() && (heap_.empty() || heap_.front() > now_queue_[now_head_])) {
      k = now_queue_[now_head_++];
      if (now_head_ == now_queue_.size()) {
        now_queue_.clear();
        now_head_ = 0;
      }
    } else {
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<>());
      k = heap_.back();
      heap_.pop_back();
    }
    now_ = k.t;
    const auto slot = static_cast<size_t>(k.tie & kSlotMask);
    free_.push_back(static_cast<int>(slot));
    return pool_[slot];
  }
  // The pending events in the order pop() takes them.
  [[nodiscard]] std::vector<Event> in_order() const {
    auto keys = heap_;
    keys.insert(keys.end(), now_queue_.begin() + static_cast<std::ptrdiff_t>(now_head_), now_queue_.end());
    std::sort(keys.begin(), keys.end(), [](const Key& a, const Key& b) { return b > a; });
    std::vector<Event> out;
    out.reserve(keys.size());
    for (const auto& k : keys) out.push_back(pool_[static_cast<size_t>(k.tie & kSlotMask)]);
    return out;
  }
  // Replaces the pending events (their order by (t, seq) as push() keeps it).
  void assign(const std::vector<Event>& events) {
    heap_.clear();
    now_queue_.clear();
    now_head_ = 0;
    pool_.clear();
    free_.clear();
    now_ = -std::numeric_limits<double>::infinity();  // every event goes to the heap, which orders them
    for (const auto& e : events) push(e);
  }

 private:
  // At one instant, arrivals (tasks, link events) go before a stage's wake: a step that lands when a stage frees up
  // is seen by its pick, as the simulator's devices see it (they yield before picking).
  static constexpr uint64_t kSlotMask = (uint64_t{1} << 23) - 1;
  struct Key {
    double t;
    uint64_t tie;  // rank (0: task, join, check; 1: wake), then seq, then the pool slot
    bool operator>(const Key& o) const { return t != o.t ? t > o.t : tie > o.tie; }
  };
  std::vector<Key> heap_;  // a min-heap by (t, rank, seq)
  std::vector<Key> now_queue_;  // arrivals pushed at the instant of the last pop, in push order, from now_head_
  size_t now_head_ = 0;
  double now_ = -std::numeric_limits<double>::infinity();
  std::vector<Event> pool_;
  std::vector<int> free_;
};

// A link shared by its flows in equal parts (processor sharing), as SimGrid's max-min sharing does
// for flows that cross one link each. Virtual time V counts the bytes each active flow has been
// served; a flow of b bytes joining at V finishes when V reaches V + b.
struct SharedLink {
  double bytes_per_ms = 1;
  double v = 0;
  double last_t = 0;
  long long version = 0;
  std::priority_queue<std::pair<double, int>, std::vector<std::pair<double, int>>, std::greater<>> finish;  // (V, flow)
  void advance(double t) {
    if (!finish.empty()) v += (t - last_t) * bytes_per_ms / static_cast<double>(finish.size());
    last_t = t;
  }
  [[nodiscard]] double next_departure() const {
    return last_t + (finish.top().first - v) * static_cast<double>(finish.size()) / bytes_per_ms;
  }
};

// A step waiting at a stage: a prefill from `node` on (step -1), or decode step `step`.
struct Waiting {
  int request, step, node;
};

// One stage: its queue (runtime::StageQueue: the pipeline's scheduling rule) and what runs on it. A decode step's
// result is passed on when it starts (its end is known then); the stage needs an event (a wake) only to pick its
// next task when tasks wait, and to end a running prefill: at the end of its range (fifo), or node by node
// (decode-first) at its last node or at the first node end after a decode step arrived.
struct StageState {
  runtime::StageQueue<Waiting> queue;
  double busy_until = 0;
  bool wake = false;  // a wake event at busy_until is queued (its version is wake_version)
  long long wake_version = 0;
  bool prefill_running = false;  // the running prefill: request, from node `from` at `from_t` to node `to`
  bool yielding = false;         // `to` was moved up for a decode step that arrived
  int request = 0, from = 0, to = 0;
  double from_t = 0;
};

class Replay {
 public:
  Replay(const CostModel& cost, const std::vector<Stage>& stages, long long requests, const ReplayOptions& options)
      : cost_(cost),
        max_batch_(effective_max_batch(cost.scenario().planner, cost.scenario().workload.in_flight)),
        stages_(stages),
        k_(static_cast<int>(stages.size())),
        requests_(requests),
        options_(options),
        steps_(cost.shape().output_tokens),
        in_flight_(std::max(1, cost.scenario().workload.in_flight)),
        entry_(std::max(0, text_entry_stage(cost, stages))),
        decode_first_(cost.scenario().planner.schedule == Schedule::decode_first),
        window_(runtime::steady_window(requests, in_flight_, true)),
        links_(static_cast<size_t>(cost.num_links())),
        recorder_({}, 0, 1, true) {
    const auto& graph = cost.graph();
    const auto& shape = cost.shape();
    const int prefill_tokens = graph.prefill_tokens(shape);
    prefill_tokens_ = prefill_tokens;
    // Compute times per stage: prefill, and each decode step (context grows by one per step).
    prefill_ms_.resize(static_cast<size_t>(k_));
    decode_ms_.resize(static_cast<size_t>(k_));
    prefill_node_ms_.resize(static_cast<size_t>(k_));
    for (int s = 0; s < k_; ++s) {
      const auto& st = stages[s];
      prefill_ms_[s] = cost.prefill_ms(st.device, st.first_node, st.last_node);
      if (decode_first_) {
        for (int n = st.first_node; n <= st.last_node; ++n) prefill_node_ms_[s].push_back(cost.prefill_ms(st.device, n, n));
      }
      if (s < entry_) continue;
      decode_ms_[s].resize(static_cast<size_t>(steps_));
      for (int j = 0; j < steps_; ++j) {
        decode_ms_[s][j] = cost.decode_step_ms(st.device, st.first_node, st.last_node, prefill_tokens + j);
      }
    }
    // Per stage: the routes to the next stage and (last stage) back to the entry, and the bytes of its outgoing
    // cut (looked up once, not per event).
    next_route_.assign(static_cast<size_t>(k_), nullptr);
    out_prefill_bytes_.assign(static_cast<size_t>(k_), 0.0);
    out_decode_bytes_.assign(static_cast<size_t>(k_), 0.0);
    for (int s = 0; s + 1 < k_; ++s) {
      next_route_[s] = &cost.route(stages[s].device, stages[s + 1].device);
      out_prefill_bytes_[s] = graph.prefill_out_bytes(stages[s].last_node, shape);
      out_decode_bytes_[s] = graph.decode_out_bytes(stages[s].last_node);
    }
    back_route_ = &cost.route(stages[k_ - 1].device, stages[entry_].device);
    queues_.reserve(static_cast<size_t>(k_));
    for (int s = 0; s < k_; ++s) {
      StageState q;
      q.queue.set_schedule(cost.scenario().planner.schedule);
      q.queue.set_max_batch(max_batch_);
      queues_.push_back(std::move(q));
    }
    if (options.busy) recorder_ = runtime::RunRecorder(std::vector<std::string>(cost.scenario().devices.size()), 0, 1, true);
    // Ranking: the window needs `last - first` completions after window_start; a plan that has not had them
    // `cut_span_ms` after it cannot beat options.beat_rps (exact, not an estimate).
    cut_span_ms_ = options.beat_rps > 0 ? (window_.last - window_.first) * 1e3 / options.beat_rps
                                        : std::numeric_limits<double>::infinity();
    window_open_ = window_.first == 0;
    skip_ = options.skip_steady && !options.busy;
  }

  ReplayResult run(double stagger_ms) {
    // The first requests enter one stagger apart (as the simulator admits them): started together, identical
    // requests would stay in lockstep.
    for (long long r = 0; r < std::min(in_flight_, requests_); ++r) {
      admit(options_.time_origin_ms + static_cast<double>(r) * stagger_ms);
    }
    while (!events_.empty()) {
      const Event e = events_.pop();
      if (window_open_ && e.t - window_start_ > cut_span_ms_) {
        result_.cut = true;
        return std::move(result_);
      }
      bool window_ended = false;
      switch (e.kind) {
        case Kind::join:
          on_join(e);
          break;
        case Kind::check:
          on_check(e);
          break;
        case Kind::task:
          window_ended = on_task(e);
          break;
        case Kind::wake:
          window_ended = on_wake(e);
          break;
      }
      if (window_ended && options_.stop_at_window_end) break;
      if (completed_) {
        completed_ = false;
        if (skip_) skip_periods(e.t);
      }
    }
    const double span_ms = window_end_ - window_start_;
    result_.throughput_rps = span_ms > 0 ? (window_.last - window_.first) * 1e3 / span_ms : 0;
    result_.mean_latency_ms = latency_sum_ / static_cast<double>(std::max<long long>(1, done_));
    if (options_.busy) {
      for (size_t d = 0; d < cost_.scenario().devices.size(); ++d) {
        result_.busy_ms.push_back(recorder_.busy_in(static_cast<int>(d), window_start_, window_end_));
      }
    }
    return std::move(result_);
  }

 private:
  [[nodiscard]] const std::vector<Hop>& route_of(int a, int b) const { return b == a + 1 ? *next_route_[a] : *back_route_; }

  void admit(double t) {
    if (admitted_count_ >= requests_) return;
    admitted_.push_back(t);
    first_token_.push_back(t);
    events_.push({t, seq_++, Kind::task, static_cast<int>(admitted_count_++), 0, -1});
  }

  // Sends `bytes` from stage a to stage b at time t: each hop waits its latency, then shares its link's bandwidth
  // with the flows already on it (store and forward between hops).
  // A batch's message (batch >= 0) carries its members' steps; they arrive together.
  void start_hop(int request, int a, int b, int step, int hop, double bytes, double t, int batch = -1) {
    const auto& route = route_of(a, b);
    if (hop >= static_cast<int>(route.size())) {
      if (batch < 0) {
        events_.push({t, seq_++, Kind::task, request, b, step});
        return;
      }
      for (const auto& m : batches_[static_cast<size_t>(batch)]) events_.push({t, seq_++, Kind::task, m.request, b, m.step});
      free_batches_.push_back(batch);
      return;
    }
    const auto& h = route[static_cast<size_t>(hop)];
    Event join{t + h.spec.latency_ms, seq_++, Kind::join, request, b, step, hop, a, batch, bytes};
    events_.push(join);
  }

  void schedule_check(int l) {
    auto& link = links_[static_cast<size_t>(l)];
    if (link.finish.empty()) return;
    Event c{link.next_departure(), seq_++, Kind::check};
    c.link = l;
    c.version = link.version;
    events_.push(c);
  }

  void on_join(const Event& e) {
    const auto& h = route_of(e.from, e.stage)[static_cast<size_t>(e.hop)];
    auto& link = links_[static_cast<size_t>(h.link)];
    link.bytes_per_ms = h.spec.bandwidth_mbps * 1e3 / 8.0;
    link.advance(e.t);
    int id;
    if (free_flows_.empty()) {
      id = static_cast<int>(flows_.size());
      flows_.push_back(e);
    } else {
      id = free_flows_.back();
      free_flows_.pop_back();
      flows_[static_cast<size_t>(id)] = e;
    }
    link.finish.push({link.v + e.bytes, id});
    ++link.version;
    schedule_check(h.link);
  }

  void on_check(const Event& e) {
    auto& link = links_[static_cast<size_t>(e.link)];
    if (e.version != link.version) return;  // the link's flows changed since
    link.advance(e.t);
    // The check was scheduled for the first flow's departure: it leaves now, with any flow that finishes at the
    // same virtual time (rounding must not leave it behind).
    link.v = std::max(link.v, link.finish.top().first);
    while (!link.finish.empty() && link.finish.top().first <= link.v * (1 + 1e-12) + 1e-9) {
      const int id = link.finish.top().second;
      const Event f = flows_[static_cast<size_t>(id)];
      link.finish.pop();
      free_flows_.push_back(id);
      start_hop(f.request, f.from, f.stage, f.step, f.hop + 1, f.bytes, e.t, f.batch);
    }
    ++link.version;
    schedule_check(e.link);
  }

  void wake_at(int s, double t) {
    auto& q = queues_[s];
    q.wake = true;
    Event w{t, seq_++, Kind::wake, -1, s, 0};
    w.version = ++q.wake_version;  // any earlier wake is void
    events_.push(w);
  }

  // The end of the first node of the running prefill that ends at or after t (node by node, as the simulator
  // sleeps), and that node.
  [[nodiscard]] std::pair<double, int> node_end_after(int s, double t) const {
    const auto& q = queues_[s];
    const auto& node_ms = prefill_node_ms_[s];
    const int first = stages_[s].first_node;
    int node = q.from;
    double end = q.from_t + node_ms[node - first];
    while (end < t && node < stages_[s].last_node) end += node_ms[++node - first];
    return {end, node};
  }

  // A step arrives at its stage: it waits in the queue; a running prefill that must yield to it stops at its next
  // node end; an idle stage starts it at once.
  bool on_task(const Event& e) {
    const int s = e.stage;
    auto& q = queues_[s];
    const bool decode = e.step >= 0;
    q.queue.push(decode ? runtime::TaskKind::decode : runtime::TaskKind::prefill, {e.request, e.step, stages_[s].first_node});
    if (q.wake) {
      if (decode && q.prefill_running && !q.yielding && q.queue.prefill_yields()) {
        const auto [end, node] = node_end_after(s, e.t);
        if (node < q.to) {
          q.yielding = true;
          q.to = node;
          q.busy_until = end;
          wake_at(s, end);
        }
      }
      return false;  // the stage picks at its wake
    }
    if (e.t < q.busy_until) {
      wake_at(s, q.busy_until);
      return false;
    }
    // Batching: steps that land at this instant join the pick (a wake goes after this instant's arrivals).
    if (max_batch_ > 1 && decode) {
      wake_at(s, e.t);
      return false;
    }
    return start_next(s, e.t);
  }

  // A wake: a prefill ends or stops (its rest goes back to the queue); the stage picks its next task.
  bool on_wake(const Event& e) {
    const int s = e.stage;
    auto& q = queues_[s];
    if (e.version != q.wake_version) return false;  // moved up since
    q.wake = false;
    bool window_ended = false;
    if (q.prefill_running) {
      q.prefill_running = false;
      if (options_.busy) recorder_.busy(stages_[s].device, q.from_t, e.t);
      if (q.to == stages_[s].last_node) {
        window_ended = pass_on(q.request, s, -1, e.t);
      } else {
        q.queue.park({q.request, -1, q.to + 1});
      }
    }
    return start_next(s, e.t) || window_ended;
  }

  // Starts the stage's next waiting task at t. Returns true when it completed the steady window.
  bool start_next(int s, double t) {
    auto& q = queues_[s];
    Waiting w{};
    if (max_batch_ == 1) {  // next_batch() is next() then, without a vector per pick
      auto one = q.queue.next();
      if (!one) return false;
      w = *one;
    } else {
      auto next = q.queue.next_batch([](const Waiting&, const Waiting&) { return true; });  // a stage's own queue
      if (next.empty()) return false;
      w = next.front();
      if (next.size() > 1) return start_batch(s, t, std::move(next));
    }
    if (w.step >= 0 || !decode_first_) {  // a decode step, or a fifo prefill over the whole range: its end is known
      q.busy_until = t + (w.step >= 0 ? decode_ms_[s][w.step] : prefill_ms_[s]);
      if (options_.busy) recorder_.busy(stages_[s].device, t, q.busy_until);
      if (!q.queue.empty()) wake_at(s, q.busy_until);
      return pass_on(w.request, s, w.step, q.busy_until);
    }
    q.prefill_running = true;
    q.request = w.request;
    q.from = w.node;
    q.from_t = t;
    // Batched decode-first takes turns (runtime::StageQueue): a prefill may start while decode steps wait, and then
    // runs one node before it yields to them.
    q.yielding = q.queue.prefill_yields();
    const auto [end, node] = node_end_after(s, q.yielding ? t : std::numeric_limits<double>::infinity());
    q.to = node;
    q.busy_until = end;
    wake_at(s, end);
    return false;
  }

  // A batch of decode steps as one forward; it goes on as one message (to the next stage, or the tokens back).
  bool start_batch(int s, double t, std::vector<Waiting> batch) {
    auto& q = queues_[s];
    const auto& st = stages_[s];
    pasts_.clear();
    for (const auto& m : batch) pasts_.push_back(prefill_tokens_ + m.step);
    q.busy_until = t + cost_.decode_batch_ms(st.device, st.first_node, st.last_node, pasts_);
    if (options_.busy) recorder_.busy(st.device, t, q.busy_until);
    if (!q.queue.empty()) wake_at(s, q.busy_until);
    const double end = q.busy_until;
    const double b = static_cast<double>(batch.size());
    if (s + 1 < k_) {
      start_hop(-1, s, s + 1, -1, 0, b * out_decode_bytes_[s], end, new_batch(std::move(batch)));
      return false;
    }
    // The last stage: the members that go on send their tokens back together; the others complete.
    std::vector<Waiting> back;
    bool window_ended = false;
    for (const auto& m : batch) {
      if (m.step + 1 < steps_) {
        back.push_back({m.request, m.step + 1, 0});
      } else {
        window_ended = pass_on(m.request, s, m.step, end) || window_ended;
      }
    }
    if (back.size() == 1) {
      start_hop(back[0].request, s, entry_, back[0].step, 0, kTokenBytes, end);
    } else if (!back.empty()) {
      const double bytes = static_cast<double>(back.size()) * kTokenBytes;
      start_hop(-1, s, entry_, -1, 0, bytes, end, new_batch(std::move(back)));
    }
    return window_ended;
  }

  int new_batch(std::vector<Waiting> members) {
    if (free_batches_.empty()) {
      batches_.push_back(std::move(members));
      return static_cast<int>(batches_.size()) - 1;
    }
    const int id = free_batches_.back();
    free_batches_.pop_back();
    batches_[static_cast<size_t>(id)] = std::move(members);
    return id;
  }

  // Sends a finished step on (next stage, the token back, or the request's completion); true when it completed
  // the steady window's last request.
  bool pass_on(int request, int s, int step, double end) {
    if (s + 1 == k_ && step < 0) first_token_[static_cast<size_t>(request)] = end;
    if (s + 1 < k_) {
      start_hop(request, s, s + 1, step, 0, step < 0 ? out_prefill_bytes_[s] : out_decode_bytes_[s], end);
      return false;
    }
    if (step + 1 < steps_) {
      start_hop(request, s, entry_, step + 1, 0, kTokenBytes, end);
      return false;
    }
    ++done_;
    latency_sum_ += end - admitted_[request];
    result_.completions_ms.push_back(end - options_.time_origin_ms);
    const double first = first_token_[static_cast<size_t>(request)];
    result_.ttft_ms.push_back(first - admitted_[request]);
    result_.tpot_ms.push_back(steps_ > 0 ? (end - first) / steps_ : 0.0);
    if (done_ == window_.first) {
      window_start_ = end;
      window_open_ = true;
    }
    admit(end);
    completed_ = true;
    if (done_ != window_.last) return false;
    window_end_ = end;
    return true;
  }

  // A pending link check or stage wake that a later change of its link or stage made void (on_check, on_wake skip it).
  [[nodiscard]] bool voided(const Event& e) const {
    return (e.kind == Kind::check && e.version != links_[static_cast<size_t>(e.link)].version) ||
           (e.kind == Kind::wake && e.version != queues_[static_cast<size_t>(e.stage)].wake_version);
  }

  struct Snapshot {
    long long done = 0;
    double t = 0, latency_sum = 0;
    std::vector<long long> discrete;
    std::vector<double> times;
  };

  // The steady-state skip (see the top). The state at `now`, after a completion, as a discrete part that must match
  // exactly and a continuous part matched to within kSkipTolerance: requests by age (admissions since), times
  // relative to now, a link's flows by their remaining bytes. `ids` gets the requests in flight.
  void state_of(double now, std::vector<long long>& d, std::vector<double>& c, std::vector<int>& ids) const {
    d.clear();
    c.clear();
    ids.clear();
    const auto age = [&](int r) -> long long { return r < 0 ? -1 : admitted_count_ - r; };
    const auto put_request = [&](int r) {
      d.push_back(age(r));
      if (r >= 0) ids.push_back(r);
    };
    const auto put_batch = [&](int batch) {
      if (batch < 0) {
        d.push_back(-1);
        return;
      }
      const auto& members = batches_[static_cast<size_t>(batch)];
      d.push_back(static_cast<long long>(members.size()));
      for (const auto& m : members) {
        put_request(m.request);
        d.push_back(m.step);
        d.push_back(m.node);
      }
    };
    d.push_back(admitted_count_ - done_);
    for (const auto& e : events_.in_order()) {
      if (voided(e)) continue;
      const bool own = e.kind == Kind::task || e.kind == Kind::join;
      d.insert(d.end(), {static_cast<long long>(e.kind), e.stage, e.step, e.hop, e.from, e.link});
      put_request(own ? e.request : -1);
      put_batch(own ? e.batch : -1);
      c.push_back(e.t - now);
      c.push_back(e.bytes);
    }
    for (const auto& q : queues_) {
      d.insert(d.end(), {static_cast<long long>(q.queue.size()), q.queue.passed_over(), q.wake, q.prefill_running});
      q.queue.for_each([&](runtime::TaskKind kind, const Waiting& w) {
        d.insert(d.end(), {static_cast<long long>(kind), w.step, w.node});
        put_request(w.request);
      });
      c.push_back(std::max(0.0, q.busy_until - now));
      if (q.prefill_running) {
        d.insert(d.end(), {q.yielding, q.from, q.to});
        put_request(q.request);
        c.push_back(q.from_t - now);
      }
    }
    for (size_t l = 0; l < links_.size(); ++l) {
      const auto& link = links_[l];
      if (link.finish.empty()) continue;
      d.insert(d.end(), {static_cast<long long>(l), static_cast<long long>(link.finish.size())});
      c.push_back(link.bytes_per_ms);
      const double v = link.v + (now - link.last_t) * link.bytes_per_ms / static_cast<double>(link.finish.size());
      auto flows = link.finish;
      while (!flows.empty()) {
        const auto [finish, id] = flows.top();
        flows.pop();
        const Event& f = flows_[static_cast<size_t>(id)];
        d.insert(d.end(), {f.stage, f.step, f.hop, f.from});
        put_request(f.request);
        put_batch(f.batch);
        c.push_back(finish - v);
        c.push_back(f.bytes);
      }
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    for (const int r : ids) {
      c.push_back(admitted_[static_cast<size_t>(r)] - now);
      c.push_back(first_token_[static_cast<size_t>(r)] - now);
    }
  }

  // After a completion in the steady window: when the state equals an earlier completion's, shifted by dt and by
  // dp admissions, the replay from here is that stretch repeated, so whole periods are played at once (their
  // completions copied dt later each) and the replay goes on event by event for the rest.
  void skip_periods(double now) {
    if (!window_open_ || done_ < window_.first || admitted_count_ >= requests_) return;
    Snapshot snap;
    snap.done = done_;
    snap.t = now;
    snap.latency_sum = latency_sum_;
    state_of(now, snap.discrete, snap.times, ids_);
    size_t h = 1469598103934665603ULL;
    for (const long long x : snap.discrete) h = (h ^ static_cast<size_t>(x)) * 1099511628211ULL;
    auto& same = by_hash_[h];
    for (auto it = same.rbegin(); it != same.rend(); ++it) {
      const Snapshot& m = snapshots_[static_cast<size_t>(*it)];
      if (m.discrete != snap.discrete || !close(m.times, snap.times)) continue;
      const long long dp = done_ - m.done;
      const double dt = now - m.t;
      const long long k = std::min((window_.last - 1 - done_) / dp, (requests_ - 1 - admitted_count_) / dp);
      if (k < 1 || dt <= 0) return;
      shift(m, k, dp, dt);
      skip_ = false;
      return;
    }
    same.push_back(static_cast<int>(snapshots_.size()));
    snapshots_.push_back(std::move(snap));
  }

  [[nodiscard]] static bool close(const std::vector<double>& a, const std::vector<double>& b) {
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::abs(a[i] - b[i]) > kSkipTolerance * std::max({1.0, std::abs(a[i]), std::abs(b[i])})) return false;
    }
    return true;
  }

  // Plays k periods of (dp completions, dt ms) after the matched snapshot m: the state moves dt * k later and its
  // requests dp * k admissions on; the period's completions repeat.
  void shift(const Snapshot& m, long long k, long long dp, double dt) {
    const long long n = k * dp;
    const double span = static_cast<double>(k) * dt;
    const int ni = static_cast<int>(n);
    std::vector<Event> live;
    for (auto e : events_.in_order()) {
      if (voided(e)) continue;
      e.t += span;
      if ((e.kind == Kind::task || e.kind == Kind::join) && e.request >= 0) e.request += ni;
      live.push_back(e);
    }
    events_.assign(live);
    for (auto& b : batches_) {
      for (auto& w : b) w.request += ni;
    }
    for (auto& f : flows_) {
      if (f.request >= 0) f.request += ni;
    }
    for (auto& q : queues_) {
      q.busy_until += span;
      q.from_t += span;
      q.request += ni;
      q.queue.for_each_mut([&](Waiting& w) { w.request += ni; });
    }
    for (auto& link : links_) link.last_t += span;
    admitted_.resize(static_cast<size_t>(admitted_count_ + n), 0.0);
    first_token_.resize(static_cast<size_t>(admitted_count_ + n), 0.0);
    for (const int r : ids_) {
      admitted_[static_cast<size_t>(r + ni)] = admitted_[static_cast<size_t>(r)] + span;
      first_token_[static_cast<size_t>(r + ni)] = first_token_[static_cast<size_t>(r)] + span;
    }
    for (long long j = 1; j <= k; ++j) {
      for (long long i = m.done; i < m.done + dp; ++i) {
        const auto at = static_cast<size_t>(i);
        result_.completions_ms.push_back(result_.completions_ms[at] + static_cast<double>(j) * dt);
        result_.ttft_ms.push_back(result_.ttft_ms[at]);
        result_.tpot_ms.push_back(result_.tpot_ms[at]);
      }
    }
    latency_sum_ += static_cast<double>(k) * (latency_sum_ - m.latency_sum);
    admitted_count_ += n;
    done_ += n;
    result_.skipped = n;
  }

  const CostModel& cost_;
  const int max_batch_;
  const std::vector<Stage>& stages_;
  const int k_;
  const long long requests_;
  const ReplayOptions& options_;
  const int steps_;
  const long long in_flight_;
  const int entry_;
  const bool decode_first_;
  const runtime::SteadyWindow window_;
  std::vector<double> prefill_ms_;
  std::vector<std::vector<double>> decode_ms_, prefill_node_ms_;
  std::vector<const std::vector<Hop>*> next_route_;
  const std::vector<Hop>* back_route_ = nullptr;
  std::vector<double> out_prefill_bytes_, out_decode_bytes_;
  std::vector<SharedLink> links_;
  std::vector<std::vector<Waiting>> batches_;  // members of the batch messages in transit, by id (slots are reused)
  std::vector<int> free_batches_;
  std::vector<int> pasts_;  // scratch: a batch's cached tokens per member
  int prefill_tokens_ = 0;
  std::vector<Event> flows_;  // the join event of each flow in transit, by flow id (slots are reused)
  std::vector<int> free_flows_;
  EventQueue events_;
  long long seq_ = 0;
  std::vector<StageState> queues_;
  std::vector<double> admitted_;
  std::vector<double> first_token_;  // per request: when its prefill left the last stage
  long long admitted_count_ = 0, done_ = 0;
  double window_start_ = 0, window_end_ = 0, latency_sum_ = 0, cut_span_ms_ = 0;
  bool window_open_ = false;
  runtime::RunRecorder recorder_;  // busy intervals (ReplayOptions::busy)
  bool skip_ = false, completed_ = false;  // the steady-state skip may still run; a request just completed
  std::vector<Snapshot> snapshots_;       // the state after each completion in the window, until the skip
  std::unordered_map<size_t, std::vector<int>> by_hash_;  // snapshots by their discrete part's hash
  std::vector<int> ids_;                                  // the requests in flight at the last snapshot
  ReplayResult result_;
};

}  // namespace

ReplayResult replay(const CostModel& cost, const std::vector<Stage>& stages, long long requests, double stagger_ms,
                    const ReplayOptions& options) {
  if (stages.empty() || requests <= 0) return {};
  return Replay(cost, stages, requests, options).run(stagger_ms);
}

long long replay_requests(const Workload& workload) {
  // Ranking uses the reported prediction's replay: a shorter one's steady window is noisy enough (several
  // percent with few requests in flight) to rank plans wrongly.
  // At least 4 x in_flight, so that many in flight still leave a steady window (runtime/report.hpp).
  return std::min<long long>(std::max<long long>(kReplayRequests, 4LL * workload.in_flight), workload.requests);
}

Prediction predict(const CostModel& cost, std::vector<Stage>& stages, long long max_requests) {
  return predict(cost, stages, max_requests, nullptr);
}

Prediction predict(const CostModel& cost, std::vector<Stage>& stages, long long max_requests, ReplayResult* replayed) {
  Prediction p = evaluate(cost, stages);
  p.bound_rps = p.throughput_rps;
  const auto& workload = cost.scenario().workload;
  if (!closed_loop(workload) || !p.feasible) return p;
  // Enough requests for a steady window well past the warm-up, few enough to stay cheap.
  const long long requests =
      std::min<long long>(workload.requests, std::max<long long>(max_requests, 4LL * workload.in_flight));
  auto r = replay(cost, stages, requests, p.bottleneck_ms);
  if (r.throughput_rps > 0) {
    // Unbatched, the closed form bounds the replay (rounding aside); batched it is an estimate (plan.cpp), and the
    // replay decides.
    p.throughput_rps = batches_decode(cost.scenario()) ? r.throughput_rps : std::min(r.throughput_rps, p.bound_rps);
    p.tokens_per_s = p.throughput_rps * cost.shape().output_tokens;
    p.latency_ms = r.mean_latency_ms;
    // Time to first token and per output token of the requests that completed in the steady window.
    const auto w = runtime::steady_window(static_cast<long long>(r.ttft_ms.size()), workload.in_flight, true);
    std::vector<double> ttft(r.ttft_ms.begin() + w.first, r.ttft_ms.begin() + w.last);
    std::vector<double> tpot(r.tpot_ms.begin() + w.first, r.tpot_ms.begin() + w.last);
    if (!ttft.empty()) {
      p.ttft_p50_ms = runtime::percentile(ttft, 0.5);
      p.ttft_p99_ms = runtime::percentile(ttft, 0.99);
      p.tpot_p50_ms = runtime::percentile(tpot, 0.5);
      p.tpot_p99_ms = runtime::percentile(tpot, 0.99);
    }
  }
  if (replayed != nullptr) *replayed = std::move(r);
  return p;
}

}  // namespace adaptlink::partition

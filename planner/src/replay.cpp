// Replay predictor: a deterministic event-driven pass of a closed-loop workload through a plan.
//
// The closed-form bound min(in_flight / R0, 1 / W) of evaluate() is what the DP optimises; it
// assumes every request looks alike. Real requests do not: a prefill holds a stage ten to a
// hundred times longer than a decode step, and in a pipeline with few requests in flight the
// others pile up behind it. The replay measures that, with the same semantics as the simulator:
//   * each stage is a server of one task at a time (exact compute time from the cost model) in the
//     scenario's planner.schedule: fifo (arrival order, a prefill holds the stage for its whole node
//     range) or decode-first (waiting decode steps go first; a prefill runs one node at a time and
//     yields to a decode step that is waiting when a node ends, then resumes before any other prefill);
//   * a transfer crosses its route hop by hop (store and forward); each hop waits its latency,
//     then shares the link's bandwidth equally with the other flows on it;
//   * a request: prefill through every stage, then output_tokens decode steps from the stage with
//     text_embed to the last stage, the sampled token going back after the prefill and after every
//     decode step but the last; a finished request is replaced at once (closed loop);
//   * throughput is counted over the steady window of report.hpp (completions first..last).
// No SimGrid here: this is the core's cost model of a whole pipeline, fast enough (a few ms for
// 40 requests) to rank a planner's best candidates.
#include <algorithm>
#include <deque>
#include <limits>
#include <queue>
#include <tuple>

#include "adaptlink/planner/replay.hpp"
#include "adaptlink/runtime/report.hpp"

namespace adaptlink::partition {

namespace {


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
    heap_.push(Key{e.t, e.seq, slot});
  }
  [[nodiscard]] bool empty() const { return heap_.empty(); }
  Event pop() {
    const Key k = heap_.top();
    heap_.pop();
    free_.push_back(k.slot);
    return pool_[static_cast<size_t>(k.slot)];
  }

 private:
  struct Key {
    double t;
    long long seq;
    int slot;
    bool operator>(const Key& o) const { return t != o.t ? t > o.t : seq > o.seq; }
  };
  std::priority_queue<Key, std::vector<Key>, std::greater<>> heap_;
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

}  // namespace

ReplayResult replay(const CostModel& cost, const std::vector<Stage>& stages, long long requests, double stagger_ms,
                    const ReplayOptions& options) {
  ReplayResult result;
  const int k = static_cast<int>(stages.size());
  if (k == 0 || requests <= 0) return result;
  const auto& graph = cost.graph();
  const auto& shape = cost.shape();
  const int steps = shape.output_tokens;
  const int prefill_tokens = graph.prefill_tokens(shape);
  const long long in_flight = std::max(1, cost.scenario().workload.in_flight);

  const int entry = std::max(0, text_entry_stage(cost, stages));
  // Compute times per stage: prefill, and each decode step (context grows by one per step).
  std::vector<double> prefill_ms(static_cast<size_t>(k));
  std::vector<std::vector<double>> decode_ms(static_cast<size_t>(k));
  for (int s = 0; s < k; ++s) {
    const auto& st = stages[s];
    prefill_ms[s] = cost.prefill_ms(st.device, st.first_node, st.last_node);
    if (s < entry) continue;
    decode_ms[s].resize(static_cast<size_t>(steps));
    for (int j = 0; j < steps; ++j) {
      decode_ms[s][j] = cost.decode_step_ms(st.device, st.first_node, st.last_node, prefill_tokens + j);
    }
  }

  // Per stage: the routes to the next stage and (last stage) back to the entry, and the bytes of its
  // outgoing cut (looked up once, not per event).
  std::vector<const std::vector<Hop>*> next_route(static_cast<size_t>(k), nullptr);
  std::vector<double> out_prefill_bytes(static_cast<size_t>(k), 0.0), out_decode_bytes(static_cast<size_t>(k), 0.0);
  for (int s = 0; s + 1 < k; ++s) {
    next_route[s] = &cost.route(stages[s].device, stages[s + 1].device);
    out_prefill_bytes[s] = graph.prefill_out_bytes(stages[s].last_node, shape);
    out_decode_bytes[s] = graph.decode_out_bytes(stages[s].last_node);
  }
  const std::vector<Hop>* back_route = &cost.route(stages[k - 1].device, stages[entry].device);
  auto route_of = [&](int a, int b) -> const std::vector<Hop>& {
    return b == a + 1 ? *next_route[a] : *back_route;
  };

  std::vector<SharedLink> links(static_cast<size_t>(cost.num_links()));
  std::vector<Event> flows;  // the join event of each flow in transit, by flow id (slots are reused)
  std::vector<int> free_flows;
  EventQueue events;
  long long seq = 0;
  std::vector<double> stage_free(static_cast<size_t>(k), 0.0);
  std::vector<double> admitted;
  long long admitted_count = 0, done = 0;
  const auto window = runtime::steady_window(requests, in_flight, true);
  double window_start = 0, window_end = 0, latency_sum = 0;

  auto admit = [&](double t) {
    if (admitted_count >= requests) return;
    admitted.push_back(t);
    events.push({t, seq++, Kind::task, static_cast<int>(admitted_count++), 0, -1});
  };
  // The first requests enter one stagger apart (as the simulator admits them): started together,
  // identical requests would stay in lockstep.
  for (long long r = 0; r < std::min(in_flight, requests); ++r) admit(static_cast<double>(r) * stagger_ms);

  // Sends `bytes` from stage a to stage b at time t: each hop waits its latency, then shares its
  // link's bandwidth with the flows already on it (store and forward between hops).
  auto start_hop = [&](int request, int a, int b, int step, int hop, double bytes, double t) {
    const auto& route = route_of(a, b);
    if (hop >= static_cast<int>(route.size())) {
      events.push({t, seq++, Kind::task, request, b, step});
      return;
    }
    const auto& h = route[static_cast<size_t>(hop)];
    events.push({t + h.spec.latency_ms, seq++, Kind::join, request, b, step, hop, a, bytes});
  };
  auto schedule_check = [&](int l) {
    auto& link = links[static_cast<size_t>(l)];
    if (link.finish.empty()) return;
    Event c{link.next_departure(), seq++, Kind::check};
    c.link = l;
    c.version = link.version;
    events.push(c);
  };
  // Events pop in time order, so a stage's next free time is all the FIFO state it needs: a task
  // starts at max(arrival, free).
  // Ranking: the window needs `last - first` completions after window_start; a plan that has not
  // had them `cut_span_ms` after it cannot beat options.beat_rps (exact, not an estimate).
  const double cut_span_ms =
      options.beat_rps > 0 ? (window.last - window.first) * 1e3 / options.beat_rps : std::numeric_limits<double>::infinity();
  bool window_open = window.first == 0;
  // decode-first: each stage's waiting steps and when it is free. A decode step's result is passed on when it
  // starts (its end is known then); a stage needs an event (a wake) only to pick its next step when steps wait
  // for it, and to end a prefill: at its last node, or at the first node end after a decode step arrived.
  const bool decode_first = cost.scenario().planner.schedule == Schedule::decode_first;
  struct Waiting {
    int request, step, node;  // node: a prefill's next node
  };
  struct StageQueue {
    std::deque<Waiting> decodes, prefills;
    double busy_until = 0;
    bool wake = false;  // a wake event at busy_until is queued (its version is wake_version)
    long long wake_version = 0;
    bool prefill_running = false;  // the running prefill: request, from node `from` at `from_t` to node `to`
    bool yielding = false;         // `to` was moved up for a decode step that arrived
    int request = 0, from = 0, to = 0;
    double from_t = 0;
  };
  std::vector<StageQueue> queues(static_cast<size_t>(k));
  std::vector<std::vector<double>> prefill_node_ms(static_cast<size_t>(k));
  for (int s = 0; decode_first && s < k; ++s) {
    for (int n = stages[s].first_node; n <= stages[s].last_node; ++n) {
      prefill_node_ms[s].push_back(cost.prefill_ms(stages[s].device, n, n));
    }
  }
  auto wake_at = [&](int s, double t) {
    auto& q = queues[s];
    q.wake = true;
    Event w{t, seq++, Kind::wake, -1, s, 0};
    w.version = ++q.wake_version;  // any earlier wake is void
    events.push(w);
  };
  // The end of the first node of the running prefill that ends at or after t (node by node, as the simulator
  // sleeps), and that node.
  auto node_end_after = [&](int s, double t) {
    const auto& q = queues[s];
    const auto& node_ms = prefill_node_ms[s];
    const int first = stages[s].first_node;
    int node = q.from;
    double end = q.from_t + node_ms[node - first];
    while (end < t && node < stages[s].last_node) end += node_ms[++node - first];
    return std::make_pair(end, node);
  };
  // Sends a finished step on (next stage, the token back, or the request's completion); true when it
  // completed the steady window's last request.
  auto pass_on = [&](int request, int s, int step, double end) {
    if (s + 1 < k) {
      start_hop(request, s, s + 1, step, 0, step < 0 ? out_prefill_bytes[s] : out_decode_bytes[s], end);
      return false;
    }
    if (step + 1 < steps) {
      start_hop(request, s, entry, step + 1, 0, kTokenBytes, end);
      return false;
    }
    ++done;
    latency_sum += end - admitted[request];
    result.completions_ms.push_back(end);
    if (done == window.first) {
      window_start = end;
      window_open = true;
    }
    admit(end);
    if (done != window.last) return false;
    window_end = end;
    return true;
  };
  // Starts the stage's next waiting step at t (decode steps first). Returns true when it completed the steady
  // window.
  auto start_next = [&](int s, double t) {
    auto& q = queues[s];
    auto& from = !q.decodes.empty() ? q.decodes : q.prefills;
    if (from.empty()) return false;
    const Waiting w = from.front();
    from.pop_front();
    if (w.step >= 0) {
      q.busy_until = t + decode_ms[s][w.step];
      if (!q.decodes.empty() || !q.prefills.empty()) wake_at(s, q.busy_until);
      return pass_on(w.request, s, w.step, q.busy_until);
    }
    q.prefill_running = true;
    q.yielding = false;
    q.request = w.request;
    q.from = w.node;
    q.from_t = t;
    const auto [end, node] = node_end_after(s, std::numeric_limits<double>::infinity());
    q.to = node;
    q.busy_until = end;
    wake_at(s, end);
    return false;
  };
  while (!events.empty()) {
    const Event e = events.pop();
    if (window_open && e.t - window_start > cut_span_ms) {
      result.cut = true;
      return result;
    }
    if (e.kind == Kind::join) {
      const auto& h = route_of(e.from, e.stage)[static_cast<size_t>(e.hop)];
      auto& link = links[static_cast<size_t>(h.link)];
      link.bytes_per_ms = h.spec.bandwidth_mbps * 1e3 / 8.0;
      link.advance(e.t);
      int id;
      if (free_flows.empty()) {
        id = static_cast<int>(flows.size());
        flows.push_back(e);
      } else {
        id = free_flows.back();
        free_flows.pop_back();
        flows[static_cast<size_t>(id)] = e;
      }
      link.finish.push({link.v + e.bytes, id});
      ++link.version;
      schedule_check(h.link);
      continue;
    }
    if (e.kind == Kind::check) {
      auto& link = links[static_cast<size_t>(e.link)];
      if (e.version != link.version) continue;  // the link's flows changed since
      link.advance(e.t);
      // The check was scheduled for the first flow's departure: it leaves now, with any flow that
      // finishes at the same virtual time (rounding must not leave it behind).
      link.v = std::max(link.v, link.finish.top().first);
      while (!link.finish.empty() && link.finish.top().first <= link.v * (1 + 1e-12) + 1e-9) {
        const int id = link.finish.top().second;
        const Event f = flows[static_cast<size_t>(id)];
        link.finish.pop();
        free_flows.push_back(id);
        start_hop(f.request, f.from, f.stage, f.step, f.hop + 1, f.bytes, e.t);
      }
      ++link.version;
      schedule_check(e.link);
      continue;
    }
    const int s = e.stage;
    bool window_ended = false;
    if (!decode_first) {  // fifo: a stage's next free time is all its state (events pop in time order)
      const double end = std::max(e.t, stage_free[s]) + (e.step < 0 ? prefill_ms[s] : decode_ms[s][e.step]);
      stage_free[s] = end;
      window_ended = pass_on(e.request, s, e.step, end);
    } else if (e.kind == Kind::task) {
      auto& q = queues[s];
      (e.step < 0 ? q.prefills : q.decodes).push_back({e.request, e.step, stages[s].first_node});
      if (q.wake) {
        // A running prefill yields at the first node end from now on (unless that is its last node).
        if (e.step >= 0 && q.prefill_running && !q.yielding) {
          const auto [end, node] = node_end_after(s, e.t);
          if (node < q.to) {
            q.yielding = true;
            q.to = node;
            q.busy_until = end;
            wake_at(s, end);
          }
        }
        continue;  // the stage picks at its wake
      }
      if (e.t < q.busy_until) {
        wake_at(s, q.busy_until);
        continue;
      }
      window_ended = start_next(s, e.t);
    } else {  // a wake: a prefill ends or stops; the stage picks its next step
      auto& q = queues[s];
      if (e.version != q.wake_version) continue;  // moved up since
      q.wake = false;
      if (q.prefill_running) {
        q.prefill_running = false;
        if (q.to == stages[s].last_node) {
          window_ended = pass_on(q.request, s, -1, e.t);
        } else {
          q.prefills.push_front({q.request, -1, q.to + 1});
        }
      }
      window_ended = start_next(s, e.t) || window_ended;
    }
    if (window_ended && options.stop_at_window_end) break;
  }
  const double span_ms = window_end - window_start;
  result.throughput_rps = span_ms > 0 ? (window.last - window.first) * 1e3 / span_ms : 0;
  result.mean_latency_ms = latency_sum / static_cast<double>(std::max<long long>(1, done));
  return result;
}

long long replay_requests(const Workload& workload) {
  // Ranking uses the reported prediction's replay: a shorter one's steady window is noisy enough (several
  // percent with few requests in flight) to rank plans wrongly.
  return std::min<long long>(kReplayRequests, workload.requests);
}

Prediction predict(const CostModel& cost, std::vector<Stage>& stages, long long max_requests) {
  return predict(cost, stages, max_requests, nullptr);
}

Prediction predict(const CostModel& cost, std::vector<Stage>& stages, long long max_requests, ReplayResult* replayed) {
  Prediction p = evaluate(cost, stages);
  p.bound_rps = p.throughput_rps;
  const auto& workload = cost.scenario().workload;
  if (workload.arrival != Arrival::closed || !p.feasible) return p;
  // Enough requests for a steady window well past the warm-up, few enough to stay cheap.
  const long long requests = std::min<long long>(workload.requests, max_requests);
  auto r = replay(cost, stages, requests, p.bottleneck_ms);
  if (r.throughput_rps > 0) {
    p.throughput_rps = std::min(r.throughput_rps, p.bound_rps);
    p.tokens_per_s = p.throughput_rps * cost.shape().output_tokens;
    p.latency_ms = r.mean_latency_ms;
  }
  if (replayed != nullptr) *replayed = std::move(r);
  return p;
}

}  // namespace adaptlink::partition

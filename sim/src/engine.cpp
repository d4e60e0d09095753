// The SimGrid part of the simulator: platform, actors, run. The only file that includes SimGrid.
//
// Actors:
//   device  (one per device, daemon)  serves its task queue in the plan's schedule (fifo: arrival order;
//                                     decode-first: decode steps first, and a prefill yields to a waiting
//                                     decode step after each of its nodes; a recovery's KV rebuilds go
//                                     before everything in both): occupies the device for the
//                                     task's exact compute time (sleep_for on the device's host: one task at
//                                     a time, so no CPU sharing to model, and 20 % faster than an Exec), then
//                                     hands the request to its next step
//   courier (pool, daemon)            carries one transfer along its route, hop by hop (store and forward),
//                                     then queues the task at the receiving device; the pool grows so that a
//                                     transfer never waits for a courier
//   driver  (one)                     admits requests (closed loop: in_flight at once; Poisson: seeded
//                                     exponential gaps) and ends the simulation once all have completed
#include <simgrid/s4u.hpp>
#include <xbt/log.h>

#include <chrono>
#include <cmath>
#include <algorithm>
#include <deque>
#include <map>
#include <exception>
#include <random>

#include "adaptlink/runtime/report.hpp"
#include "pipeline.hpp"
#include "trace.hpp"

namespace sg4 = simgrid::s4u;

namespace adaptlink::sim::detail {

namespace {

struct Task {
  int slot = -1;   // request slot
  int stage = 0;
  int step = -1;  // -1: prefill, k >= 0: decode step k, kReplay: replay of `tokens` tokens (after a dropout)
  int tokens = 0;
  int fault = -1;        // kReplay: the fault (index into spec.faults) whose recovery this replay is part of
  double replay_s = 0;   // kReplay: its compute time on the device it was queued at
  int node = -1;         // prefill (decode-first): the node it goes on at after yielding (-1: the stage's first)
};
constexpr int kReplay = -2;

struct Job {
  const std::vector<HopSpec>* route = nullptr;
  std::uint64_t bytes = 0;
  int from_stage = 0;
  Task next;
};

struct RequestSlot {
  long long id = -1;
  double admitted_s = 0;
  bool active = false;
  int prefill_nodes_done = 0;  // the prefill has passed nodes [0, this) (node indices: plans change)
  int last_node = -1;          // last completed decode task: the last node of its stage, and its step (-1: none)
  int last_step = -1;
};

struct DeviceState {
  sg4::Host* host = nullptr;
  sg4::SemaphorePtr ready;  // one token per queued task
  std::deque<Task> queue;
  double speed = 1;
  double busy_total_s = 0;
  double busy_since_s = 0;
  bool busy = false;
  double window_start_busy_s = 0;
  sg4::ActorPtr actor;
  bool dead = false;
  double slowdown = 1;
  Task current;
  bool running = false;

  [[nodiscard]] double busy_at(double t) const { return busy_total_s + (busy ? t - busy_since_s : 0.0); }
};

// Exponential gap by inversion on 53 random bits: the same numbers on every platform and library.
double exponential_gap(std::mt19937_64& rng, double rate) {
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1)
  return -std::log1p(-u) / rate;
}

class Simulation {
 public:
  Simulation(const PipelineSpec& spec, const EngineOptions& options)
      : spec_(spec), options_(options), stages_(spec.stages), back_edge_(spec.back_edge), text_stage_(spec.text_stage) {
    window_ = runtime::steady_window(spec.requests, spec.in_flight, spec.arrival == ArrivalKind::closed);
    progress_step_ = std::max<long long>(1, spec.requests / 100);
    out_.latencies_ms.reserve(static_cast<size_t>(spec.requests));
    out_.completions_s.reserve(static_cast<size_t>(spec.requests));
  }

  Expected<Ok> build_platform() {
    auto* zone = sg4::create_full_zone("adaptlink");
    const int n = static_cast<int>(spec_.device_names.size());
    devices_.resize(static_cast<size_t>(n));
    for (int d = 0; d < n; ++d) {
      auto& dev = devices_[static_cast<size_t>(d)];
      dev.speed = spec_.device_speed_flops[static_cast<size_t>(d)];
      dev.host = zone->create_host(fmt::format("device{}", d), dev.speed);
      hosts_.push_back(dev.host);
    }
    if (spec_.has_access_point) hosts_.push_back(zone->create_host("ap", 1e12));
    auto& links = links_;
    links.assign(spec_.links.size(), nullptr);
    std::vector<std::pair<int, int>> link_ends(spec_.links.size(), {-1, -1});
    for (const auto& route : spec_.routes) {
      for (const auto& hop : route) {
        if (hop.from < n) link_devices_[hop.link].push_back(hop.from);
        if (hop.to < n) link_devices_[hop.link].push_back(hop.to);
        const auto& spec = spec_.links[static_cast<size_t>(hop.link)];
        auto& link = links[static_cast<size_t>(hop.link)];
        if (link == nullptr) {
          link = zone->create_link(fmt::format("link{}", hop.link), spec.bandwidth_bps)
                     ->set_latency(spec.latency_s)
                     ->seal();
          link_ends[static_cast<size_t>(hop.link)] = {std::min(hop.from, hop.to), std::max(hop.from, hop.to)};
          zone->add_route(hosts_[static_cast<size_t>(hop.from)]->get_netpoint(),
                          hosts_[static_cast<size_t>(hop.to)]->get_netpoint(), nullptr, nullptr,
                          {sg4::LinkInRoute(link)}, true);
        } else if (link_ends[static_cast<size_t>(hop.link)] !=
                   std::make_pair(std::min(hop.from, hop.to), std::max(hop.from, hop.to))) {
          return make_error("link '{}' joins different endpoints in two routes", spec.name);
        }
      }
    }
    zone->seal();
    for (auto& dev : devices_) dev.ready = sg4::Semaphore::create(0);
    jobs_ready_ = sg4::Semaphore::create(0);
    hold_ = sg4::Semaphore::create(0);
    all_done_ = sg4::Semaphore::create(0);
    lanes_.resize(spec_.links.size());
    return Ok{};
  }

  void start_actors() {
    // Only devices that hold a stage get an actor; others stay idle (until a stage moves to them).
    for (const auto& st : stages_) ensure_device_actor(st.device);
    sg4::Actor::create("driver", devices_[static_cast<size_t>(spec_.stages.front().device)].host,
                       [this] { driver(); });
    for (const auto& f : spec_.faults) {
      runtime::FaultRecord rec;
      rec.at_s = f.at_s;
      rec.device = spec_.device_names[static_cast<size_t>(f.device)];
      rec.kind = *partition::parse_fault_kind(f.kind_name);
      out_.faults.push_back(rec);
    }
    if (!spec_.faults.empty()) {
      sg4::Actor::create("faults", hosts_.back(), [this] {
        sg4::Actor::self()->daemonize();
        fault_loop();
      });
    }
  }

  void ensure_device_actor(int d) {
    auto& dev = devices_[static_cast<size_t>(d)];
    if (dev.actor) return;
    dev.actor = sg4::Actor::create(fmt::format("device{}", d), dev.host, [this, d] {
      sg4::Actor::self()->daemonize();
      device_loop(d);
    });
  }

  bool open_trace() {
    if (options_.trace_path.empty()) return true;
    return trace_.open(options_.trace_path, options_.trace_from_s, options_.trace_until_s, options_.trace_max_events);
  }

  Expected<EngineOutcome> finish() {
    const double now = sg4::Engine::get_clock();
    out_.makespan_s = now;
    out_.trace_events = trace_.events();
    if (trace_.enabled()) {
      trace_.name_process(TraceWriter::kDevicePid, "devices", 0);
      trace_.name_process(TraceWriter::kLinkPid, "links", 1);
      for (size_t d = 0; d < devices_.size(); ++d) {
        trace_.name_thread(TraceWriter::kDevicePid, static_cast<int>(d), spec_.device_names[d], static_cast<int>(d));
      }
      for (const auto& [link, lane, tid] : lane_tids_) {
        std::string name = spec_.links[static_cast<size_t>(link)].name;
        if (lane > 0) name += fmt::format(" #{}", lane + 1);
        trace_.name_thread(TraceWriter::kLinkPid, tid, name, link * 1000 + lane);
      }
      const std::string other = fmt::format(
          R"("scenario":{},"planner":{},"backend":"sim","network_model":{},"truncated":{},"trace_from_s":{},"events":{})",
          json_string(spec_.scenario), json_string(spec_.planner), json_string(options_.network_model),
          trace_.truncated() ? "true" : "false", options_.trace_from_s, trace_.events());
      if (!trace_.close(other)) return make_error("cannot write the trace to '{}'", options_.trace_path);
    }
    return std::move(out_);
  }

 private:
  // --- actors ---------------------------------------------------------------------------------------------
  void device_loop(int d) {
    auto& dev = devices_[static_cast<size_t>(d)];
    for (;;) {
      dev.ready->acquire();
      // A rebalance is draining the pipeline: start nothing; the switch kills this actor and starts a new one.
      if (holding_) hold_->acquire();
      const Task task = take_next(dev);
      const auto& stage = stages_[static_cast<size_t>(task.stage)];
      const double start = sg4::Engine::get_clock();
      dev.busy = true;
      dev.busy_since_s = start;
      dev.current = task;
      dev.running = true;
      const bool finished = task.step == -1 && spec_.decode_first ? run_prefill_nodes(dev, task, stage)
                                                                   : (sleep_task(dev, task, stage), true);
      const double end = sg4::Engine::get_clock();
      dev.running = false;
      dev.busy = false;
      dev.busy_total_s += end - start;
      ++out_.stage_executions;  // one trace slice each: a prefill that yields counts each run of nodes
      if (trace_.wants(start)) trace_compute(d, task, start, end);
      if (!finished) continue;  // yielded to a decode step: the rest of the prefill is queued first
      if (task.step == kReplay) {
        replay_done(task.fault);
      } else {
        after_compute(task);
      }
    }
  }

  // fifo: the queue's front (a recovery's KV rebuilds are queued there). decode-first: the first rebuild, else
  // the first decode step, else the front.
  Task take_next(DeviceState& dev) {
    auto it = dev.queue.begin();
    if (spec_.decode_first) {
      if (auto rebuild = std::find_if(dev.queue.begin(), dev.queue.end(), is_rebuild); rebuild != dev.queue.end()) {
        it = rebuild;
      } else if (auto decode = std::find_if(dev.queue.begin(), dev.queue.end(), is_decode); decode != dev.queue.end()) {
        it = decode;
      }
    }
    const Task task = *it;
    dev.queue.erase(it);
    return task;
  }

  static bool is_rebuild(const Task& t) { return t.step == kReplay; }
  static bool is_decode(const Task& t) { return t.step >= 0; }
  // What a prefill yields to under decode-first.
  [[nodiscard]] static bool urgent_waiting(const DeviceState& dev) {
    return std::any_of(dev.queue.begin(), dev.queue.end(), [](const Task& t) { return is_rebuild(t) || is_decode(t); });
  }

  void sleep_task(const DeviceState& dev, const Task& task, const StageSpec& stage) {
    const double duration = (task.step == kReplay ? task.replay_s
                             : task.step < 0     ? stage.prefill_s
                                                 : stage.decode_s[static_cast<size_t>(task.step)]) *
                            dev.slowdown;
    if (duration > 0) sg4::this_actor::sleep_for(duration);
  }

  // A prefill under decode-first: its nodes one at a time; when a decode step (or a recovery's rebuild) is waiting
  // after a node that is not the stage's last, the rest goes back to the queue's front and that runs first. True
  // once all have run.
  bool run_prefill_nodes(DeviceState& dev, const Task& task, const StageSpec& stage) {
    for (int n = task.node < 0 ? stage.first_node : task.node; n <= stage.last_node; ++n) {
      const double duration = stage.prefill_node_s[static_cast<size_t>(n - stage.first_node)] * dev.slowdown;
      if (duration > 0) sg4::this_actor::sleep_for(duration);
      if (n < stage.last_node && urgent_waiting(dev)) {
        Task rest = task;
        rest.node = n + 1;
        dev.queue.push_front(rest);
        dev.ready->release();
        return false;
      }
    }
    return true;
  }

  void courier_loop() {
    for (;;) {
      jobs_ready_->acquire();
      const Job job = jobs_.front();
      jobs_.pop_front();
      for (const auto& hop : *job.route) {
        const double start = sg4::Engine::get_clock();
        const int lane = trace_.enabled() ? take_lane(hop.link) : 0;
        sg4::Comm::sendto(hosts_[static_cast<size_t>(hop.from)], hosts_[static_cast<size_t>(hop.to)], job.bytes);
        const double end = sg4::Engine::get_clock();
        ++out_.transfers;
        if (trace_.enabled()) {
          if (trace_.wants(start)) trace_transfer(hop.link, lane, job, start, end);
          lanes_[static_cast<size_t>(hop.link)][static_cast<size_t>(lane)] = false;
        }
      }
      --jobs_in_flight_;
      enqueue(job.next);
      ++idle_couriers_;
    }
  }

  void driver() {
    if (spec_.arrival == ArrivalKind::closed) {
      const long long first = std::min<long long>(spec_.in_flight, spec_.requests);
      for (long long i = 0; i < first; ++i) {
        if (i > 0 && spec_.ramp_gap_s > 0) sg4::this_actor::sleep_for(spec_.ramp_gap_s);
        admit();
      }
    } else {
      std::mt19937_64 rng(spec_.seed);
      for (long long i = 0; i < spec_.requests; ++i) {
        sg4::this_actor::sleep_for(exponential_gap(rng, spec_.rate_per_s));
        admit();
      }
    }
    all_done_->acquire();
  }

  // --- request flow ---------------------------------------------------------------------------------------
  void admit() {
    int slot;
    if (!free_slots_.empty()) {
      slot = free_slots_.back();
      free_slots_.pop_back();
    } else {
      slot = static_cast<int>(slots_.size());
      slots_.emplace_back();
    }
    const double now = sg4::Engine::get_clock();
    if (admitted_ == 0) {
      out_.first_arrival_s = now;
      if (window_.first == 0) out_.window_start_s = now;  // nothing has run yet: busy times are 0
    }
    out_.last_arrival_s = now;
    slots_[static_cast<size_t>(slot)] = {admitted_++, now, true, 0, -1, -1};
    enqueue(Task{slot, 0, -1});
  }

  void enqueue(const Task& task) {
    auto& dev = devices_[static_cast<size_t>(stages_[static_cast<size_t>(task.stage)].device)];
    if (dev.dead) {  // lost with the device: re-queued at the stage's new device once recovered
      orphans_.push_back(task);
      return;
    }
    dev.queue.push_back(task);
    dev.ready->release();
  }

  void send(const TransferSpec& transfer, const Task& next, int from_stage) {
    if (transfer.route < 0) {
      enqueue(next);
      return;
    }
    ++jobs_in_flight_;
    jobs_.push_back(Job{&spec_.routes[static_cast<size_t>(transfer.route)],
                        static_cast<std::uint64_t>(std::llround(transfer.bytes)), from_stage, next});
    if (idle_couriers_ > 0) {
      --idle_couriers_;  // reserved: that courier takes this job (a job never waits for a courier)
    } else {
      sg4::Actor::create("courier", hosts_[0], [this] {
        sg4::Actor::self()->daemonize();
        courier_loop();
      });
    }
    jobs_ready_->release();
  }

  void after_compute(const Task& task) {
    const int last = static_cast<int>(stages_.size()) - 1;
    const auto& stage = stages_[static_cast<size_t>(task.stage)];
    auto& slot = slots_[static_cast<size_t>(task.slot)];
    if (task.step < 0) {
      slot.prefill_nodes_done = stage.last_node + 1;
    } else {
      slot.last_node = stage.last_node;
      slot.last_step = task.step;
    }
    if (task.stage < last) {
      const auto& transfer = task.step < 0 ? stage.prefill_out : stage.decode_out;
      send(transfer, Task{task.slot, task.stage + 1, task.step}, task.stage);
    } else if (task.step + 1 >= spec_.output_tokens) {
      complete(task.slot);
    } else {
      send(back_edge_, Task{task.slot, text_stage_, task.step + 1}, task.stage);
    }
  }

  void complete(int slot) {
    const double now = sg4::Engine::get_clock();
    out_.latencies_ms.push_back((now - slots_[static_cast<size_t>(slot)].admitted_s) * 1e3);
    out_.completions_s.push_back(now);
    slots_[static_cast<size_t>(slot)].active = false;
    free_slots_.push_back(slot);
    const long long done = ++out_.completed;
    if (done == window_.first) {
      out_.window_start_s = now;
      for (auto& dev : devices_) dev.window_start_busy_s = dev.busy_at(now);
    }
    if (done == window_.last) {
      out_.window_end_s = now;
      out_.window_completions = window_.last - window_.first;
      out_.window_busy_s.clear();
      for (auto& dev : devices_) out_.window_busy_s.push_back(dev.busy_at(now) - dev.window_start_busy_s);
    }
    if (options_.progress && (done % progress_step_ == 0 || done == spec_.requests)) {
      options_.progress(done, spec_.requests, now);
    }
    if (spec_.arrival == ArrivalKind::closed && admitted_ < spec_.requests) admit();
    if (done == spec_.requests) all_done_->release();
  }

  // --- faults ---------------------------------------------------------------------------------------------
  void fault_loop() {
    for (const auto& event : spec_.events) {
      const size_t i = static_cast<size_t>(event.fault);
      const auto& f = spec_.faults[i];
      const double now = sg4::Engine::get_clock();
      if (event.at_s > now) sg4::this_actor::sleep_for(event.at_s - now);
      if (event.switch_plan) {
        switch_plan(i, f);
        continue;
      }
      auto& dev = devices_[static_cast<size_t>(f.device)];
      switch (f.kind) {
        case FaultKindSpec::slowdown:
          dev.slowdown = f.factor;  // from the next task on
          break;
        case FaultKindSpec::link:
          for (size_t l = 0; l < links_.size(); ++l) {
            if (links_[l] == nullptr) continue;
            const auto& ends = link_devices_[static_cast<int>(l)];
            if (std::find(ends.begin(), ends.end(), f.device) != ends.end()) links_[l]->set_bandwidth(f.bandwidth_bps);
          }
          break;
        case FaultKindSpec::rejoin:
          // Back (empty) at its first heartbeat; its rebalance (if any) is a later event.
          if (dev.dead && f.detect_s > 0) {
            dev.dead = false;
            out_.faults[i].detected_s = f.at_s + f.detect_s;
          }
          break;
        case FaultKindSpec::dropout:
          dropout(i, f);
          break;
      }
    }
  }

  void dropout(size_t index, const FaultSpec& f) {
    auto& dev = devices_[static_cast<size_t>(f.device)];
    if (dev.dead) return;
    const double now = sg4::Engine::get_clock();
    dev.dead = true;
    if (dev.actor) {
      dev.actor->kill();
      dev.actor = nullptr;
    }
    if (dev.busy) {
      dev.busy_total_s += now - dev.busy_since_s;
      dev.busy = false;
    }
    // Its work is lost, a prefill's nodes done so far too: the tasks run again from their stage's start.
    if (dev.running) orphans_.push_back(restarted(dev.current));
    dev.running = false;
    for (const auto& t : dev.queue) orphans_.push_back(restarted(t));
    dev.queue.clear();
    dev.ready = sg4::Semaphore::create(0);
    auto& rec = out_.faults[index];
    rec.detected_s = f.at_s + f.detect_s;
    if (f.replanned) return;  // re-planned: the switch event (detection + weights' load) recovers it
    if (f.moved.empty()) {  // held no stage: nothing to recover
      rec.recovered_s = rec.detected_s;
      rec.recovery_ms = (*rec.recovered_s - f.at_s) * 1e3;
      return;
    }
    // Detection (heartbeat timeout), then the weights' load when redeploying; the stage then moves.
    sg4::this_actor::sleep_for(f.detect_s + f.load_s);
    stages_ = f.stages_after;
    back_edge_ = f.back_edge_after;
    text_stage_ = f.text_stage_after;
    for (const auto& st : stages_) ensure_device_actor(st.device);
    // Every request in flight that had passed a moved stage lost its KV cache there: replay its tokens so far
    // (prompt + image + generated) through that stage's layers on the new device, before anything else.
    // Each fault counts its own replays: a second dropout may come while the first one's replays still run.
    if (pending_replays_.size() < spec_.faults.size()) pending_replays_.resize(spec_.faults.size(), 0);
    std::vector<int> slots;  // admission order
    for (int s = 0; s < static_cast<int>(slots_.size()); ++s) {
      if (slots_[static_cast<size_t>(s)].active) slots.push_back(s);
    }
    std::sort(slots.begin(), slots.end(), [this](int a, int b) { return slots_[a].id < slots_[b].id; });
    // Queue every replay first and release the devices afterwards: a release is a simcall, and the device
    // actor would start popping the queue in the middle of the insertions.
    std::vector<std::vector<Task>> replays(devices_.size());
    for (size_t m = 0; m < f.moved.size(); ++m) {
      const int stage = f.moved[m];
      const double per_token_s = f.replay_s_per_token[m];
      if (per_token_s <= 0) continue;
      for (int s : slots) {
        const auto& slot = slots_[static_cast<size_t>(s)];
        const auto& moved = stages_[static_cast<size_t>(stage)];
        if (slot.prefill_nodes_done <= moved.last_node) continue;
        const int steps = slot.last_step < 0 ? 0 : slot.last_step + (slot.last_node >= moved.last_node ? 1 : 0);
        const int tokens = spec_.prefill_tokens + steps;
        rec.recomputed_tokens += tokens;
        replays[static_cast<size_t>(stages_[static_cast<size_t>(stage)].device)].push_back(
            Task{s, stage, kReplay, tokens, static_cast<int>(index), tokens * per_token_s});
        ++pending_replays_[index];
      }
    }
    for (size_t d = 0; d < devices_.size(); ++d) {
      auto& q = devices_[d].queue;
      q.insert(q.begin(), replays[d].begin(), replays[d].end());
    }
    for (size_t d = 0; d < devices_.size(); ++d) {
      for (size_t i = 0; i < replays[d].size(); ++i) devices_[d].ready->release();
    }
    auto orphans = std::move(orphans_);
    orphans_.clear();
    for (const auto& t : orphans) enqueue(t);
    if (pending_replays_[index] == 0) replay_done_at(index, sg4::Engine::get_clock());
  }

  // A rejoin's rebalance: the weights are loaded (the old placement kept serving meanwhile); drain to a safe point
  // (no task running, no transfer under way), move every queued task to the new stage that holds the node it was
  // to start at, rebuild the KV caches of the text layers that changed device, and go on with the new plan.
  void switch_plan(size_t index, const FaultSpec& f) {
    if (!f.stages_changed) {  // only backups were preloaded again: nothing to drain
      replay_done_at(index, sg4::Engine::get_clock());
      return;
    }
    holding_ = true;
    auto busy = [this] {
      if (jobs_in_flight_ > 0) return true;
      for (const auto& dev : devices_) {
        if (dev.running) return true;
      }
      return false;
    };
    while (busy()) sg4::this_actor::sleep_for(1e-3);
    const double now = sg4::Engine::get_clock();
    const int old_text_stage = text_stage_;
    const auto old_stages = stages_;
    std::vector<Task> pending;
    for (auto& dev : devices_) {
      if (dev.actor) {
        dev.actor->kill();
        dev.actor = nullptr;
      }
      for (const auto& t : dev.queue) pending.push_back(restarted(t));
      dev.queue.clear();
    }
    for (const auto& t : orphans_) pending.push_back(t);
    orphans_.clear();
    stages_ = f.stages_after;
    back_edge_ = f.back_edge_after;
    text_stage_ = f.text_stage_after;
    auto stage_of = [this](int node) {
      for (size_t s = 0; s < stages_.size(); ++s) {
        if (stages_[s].first_node <= node && node <= stages_[s].last_node) return static_cast<int>(s);
      }
      return static_cast<int>(stages_.size()) - 1;
    };
    auto& rec = out_.faults[index];
    if (pending_replays_.size() < spec_.faults.size()) pending_replays_.resize(spec_.faults.size(), 0);
    std::vector<std::vector<Task>> queues(devices_.size());
    // KV rebuilds first, in admission order, ahead of any other work on their device.
    std::vector<int> slots;
    for (int s = 0; s < static_cast<int>(slots_.size()); ++s) {
      if (slots_[static_cast<size_t>(s)].active) slots.push_back(s);
    }
    std::sort(slots.begin(), slots.end(), [this](int a, int b) { return slots_[a].id < slots_[b].id; });
    for (size_t st = 0; st < stages_.size(); ++st) {
      const int from = f.replay_from_node[st];
      const double per_token_s = f.replay_s_per_token_after[st];
      if (from < 0 || per_token_s <= 0) continue;
      for (int s : slots) {
        const auto& slot = slots_[static_cast<size_t>(s)];
        if (slot.prefill_nodes_done <= from) continue;
        const int steps = slot.last_step < 0 ? 0 : slot.last_step + (slot.last_node >= from ? 1 : 0);
        const int tokens = spec_.prefill_tokens + steps;
        rec.recomputed_tokens += tokens;
        queues[static_cast<size_t>(stages_[st].device)].push_back(
            Task{s, static_cast<int>(st), kReplay, tokens, static_cast<int>(index), tokens * per_token_s});
        ++pending_replays_[index];
      }
    }
    for (const auto& t : pending) {
      if (t.step == kReplay) {  // an earlier recovery's rebuild: superseded by this one's
        replay_done(t.fault);
        continue;
      }
      // The node the task was to start at (a decode step starts at the text stage) and the new stage holding it.
      Task moved = t;
      moved.stage = t.step >= 0 && t.stage == old_text_stage ? text_stage_
                                                              : stage_of(old_stages[static_cast<size_t>(t.stage)].first_node);
      if (t.step >= 0 && moved.stage < text_stage_) moved.stage = text_stage_;
      queues[static_cast<size_t>(stages_[static_cast<size_t>(moved.stage)].device)].push_back(moved);
    }
    for (size_t d = 0; d < devices_.size(); ++d) {
      auto& dev = devices_[d];
      dev.queue.assign(queues[d].begin(), queues[d].end());
      dev.ready = sg4::Semaphore::create(static_cast<unsigned>(dev.queue.size()));
    }
    holding_ = false;
    for (const auto& st : stages_) ensure_device_actor(st.device);
    for (size_t d = 0; d < devices_.size(); ++d) {
      if (!devices_[d].queue.empty() && !devices_[d].dead) ensure_device_actor(static_cast<int>(d));
    }
    if (pending_replays_[index] == 0) replay_done_at(index, now);
  }

  static Task restarted(Task t) {
    t.node = -1;
    return t;
  }

  void replay_done(int fault) {
    if (fault < 0) return;
    if (--pending_replays_[static_cast<size_t>(fault)] == 0) replay_done_at(static_cast<size_t>(fault), sg4::Engine::get_clock());
  }

  void replay_done_at(size_t fault, double now) {
    auto& rec = out_.faults[fault];
    rec.recovered_s = now;
    rec.recovery_ms = (now - rec.at_s) * 1e3;
  }

  // --- trace ----------------------------------------------------------------------------------------------
  int take_lane(int link) {
    auto& lanes = lanes_[static_cast<size_t>(link)];
    for (size_t i = 0; i < lanes.size(); ++i) {
      if (!lanes[i]) {
        lanes[i] = true;
        return static_cast<int>(i);
      }
    }
    lanes.push_back(true);
    const int lane = static_cast<int>(lanes.size()) - 1;
    lane_tids_.push_back({link, lane, static_cast<int>(lane_tids_.size())});
    return lane;
  }

  int lane_tid(int link, int lane) const {
    for (const auto& l : lane_tids_) {
      if (l.link == link && l.lane == lane) return l.tid;
    }
    return 0;
  }

  void trace_compute(int device, const Task& task, double start, double end) {
    const long long id = slots_[static_cast<size_t>(task.slot)].id;
    std::string name = task.step == kReplay ? fmt::format("replay r{} ({} tokens)", id, task.tokens)
                       : task.step < 0      ? fmt::format("prefill r{}", id)
                                            : fmt::format("decode r{} t{}", id, task.step);
    trace_.slice(TraceWriter::kDevicePid, device, name,
                 task.step == kReplay ? "replay" : task.step < 0 ? "prefill" : "decode", start, end,
                 fmt::format(R"("request":{},"stage":{},"step":{})", id, task.stage, task.step));
  }

  void trace_transfer(int link, int lane, const Job& job, double start, double end) {
    const long long id = slots_[static_cast<size_t>(job.next.slot)].id;
    const bool back = job.next.stage <= job.from_stage;
    std::string name = back ? fmt::format("token r{} t{}", id, job.next.step)
                            : fmt::format("act r{} s{}>s{}", id, job.from_stage, job.next.stage);
    trace_.slice(TraceWriter::kLinkPid, lane_tid(link, lane), name, back ? "token" : "activation", start, end,
                 fmt::format(R"("request":{},"bytes":{},"from_stage":{},"to_stage":{},"step":{})", id, job.bytes,
                             job.from_stage, job.next.stage, job.next.step));
  }

  struct LaneTid {
    int link;
    int lane;
    int tid;
  };

  const PipelineSpec& spec_;
  const EngineOptions& options_;
  std::vector<StageSpec> stages_;  // the current placement (changes when a dropout moves a stage)
  TransferSpec back_edge_;
  int text_stage_ = 0;
  bool holding_ = false;            // a rebalance is draining the pipeline
  sg4::SemaphorePtr hold_;          // never released: devices wait on it while holding_
  long long jobs_in_flight_ = 0;    // transfers queued or under way
  std::vector<Task> orphans_;  // tasks of a lost device, waiting for the recovery
  std::vector<int> pending_replays_;  // per fault: replays not yet done
  std::vector<sg4::Link*> links_;
  std::map<int, std::vector<int>> link_devices_;  // link -> devices at its ends
  runtime::SteadyWindow window_;
  long long progress_step_ = 1;
  std::vector<DeviceState> devices_;
  std::vector<sg4::Host*> hosts_;  // devices, then the access point
  std::deque<Job> jobs_;
  sg4::SemaphorePtr jobs_ready_;
  sg4::SemaphorePtr all_done_;
  int idle_couriers_ = 0;
  std::vector<RequestSlot> slots_;
  std::vector<int> free_slots_;
  long long admitted_ = 0;
  std::vector<std::vector<bool>> lanes_;  // [link][lane] busy
  std::vector<LaneTid> lane_tids_;
  TraceWriter trace_;
  EngineOutcome out_;
};

}  // namespace

Expected<EngineOutcome> run_engine(const PipelineSpec& spec, const EngineOptions& options) {
  try {
    std::string arg0 = "adaptlink-sim";
    std::string arg1 = "--log=root.thres:critical";
    std::string arg2 = "--log=no_loc";
    std::vector<char*> argv = {arg0.data(), arg1.data(), arg2.data(), nullptr};
    int argc = 3;
    sg4::Engine engine(&argc, argv.data());
    sg4::Engine::set_config("network/model:" + options.network_model);
    if (options.network_model == "CM02") {
      // Exact mode: no reverse-path acknowledgement traffic, no TCP window bound (TCP-gamma 0 disables it).
      sg4::Engine::set_config("network/crosstraffic:0");
      sg4::Engine::set_config("network/TCP-gamma:0");
    }
    Simulation sim(spec, options);
    auto platform = sim.build_platform();
    if (!platform) return platform.error();
    if (!sim.open_trace()) return make_error("cannot create the trace file '{}'", options.trace_path);
    sim.start_actors();
    engine.run();
    return sim.finish();
  } catch (const std::exception& e) {
    return make_error("SimGrid: {}", e.what());
  }
}

}  // namespace adaptlink::sim::detail

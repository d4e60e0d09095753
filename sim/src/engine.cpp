// The SimGrid part of the simulator: platform, actors, run. The only file that includes SimGrid.
//
// Actors:
//   device  (one per device, daemon)  takes its next task from its runtime::StageQueue (the pipeline's one
//                                     scheduling rule: a recovery's KV rebuilds first; then, under fifo, arrival
//                                     order; under decode-first, decode steps, and a prefill yields to a waiting
//                                     decode step after each of its nodes; with planner.max_batch > 1, the
//                                     decode steps of one stage it hands out together run as one batch):
//                                     occupies the device for the task's exact compute time (sleep_for on the
//                                     device's host: one task at a time, so no CPU sharing to model, and 20 %
//                                     faster than an Exec), then hands the requests to their next steps (a
//                                     batch's as one transfer of their summed bytes)
//   courier (pool, daemon)            carries one transfer along its route, hop by hop (store and forward),
//                                     then queues the task at the receiving device; the pool grows so that a
//                                     transfer never waits for a courier
//   driver  (one)                     admits requests (closed loop: in_flight at once; Poisson: seeded
//                                     exponential gaps) and ends the simulation once all have completed
//   faults  (one, daemon, with faults) walks the FaultTimeline (fault_timeline.hpp): stops and revives devices,
//                                     and carries out runtime::RecoveryPolicy's decisions, taken at detection
//                                     time on the live cluster state: stages move or the placement switches,
//                                     requests in flight rebuild their KV caches
// Accounting is runtime::RunRecorder's (admissions, completions, busy intervals, fault records).
#include <simgrid/s4u.hpp>
#include <xbt/log.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <exception>
#include <map>
#include <random>

#include "adaptlink/runtime/report.hpp"
#include "adaptlink/runtime/run_recorder.hpp"
#include "adaptlink/runtime/stage_queue.hpp"
#include "fault_timeline.hpp"
#include "pipeline.hpp"
#include "random.hpp"
#include "trace.hpp"

namespace sg4 = simgrid::s4u;

namespace adaptlink::sim::detail {

namespace {

using runtime::TaskKind;

struct Task {
  int slot = -1;  // request slot
  int stage = 0;
  TaskKind kind = TaskKind::prefill;  // prefill | decode | rebuild
  int step = -1;                      // decode: step k (prefill: -1)
  int tokens = 0;                     // rebuild: the request's tokens so far, replayed through the stage's text layers
  int fault = -1;                     // rebuild: the fault (index into the faults) whose recovery it is part of
  double rebuild_s = 0;               // rebuild: its compute time on the device it was queued at
  int node = -1;                      // prefill (decode-first): the node it goes on at after yielding (-1: the first)
};

Task restarted(Task t) {  // its work is lost: it runs again from its stage's start
  t.node = -1;
  return t;
}

struct Job {
  const std::vector<HopSpec>* route = nullptr;
  std::uint64_t bytes = 0;
  int from_stage = 0;
  std::vector<Task> next;  // one task, or a batch's members (one message)
};

struct RequestSlot {
  long long id = -1;
  double admitted_s = 0;
  bool active = false;
  int prefill_nodes_done = 0;  // the prefill has passed nodes [0, this) (node indices: plans change)
  int last_node = -1;          // last completed decode task: the last node of its stage, and its step (-1: none)
  int last_step = -1;
  double first_token_s = -1;   // its prefill left the last stage (the first token): time to first token
};

struct DeviceState {
  sg4::Host* host = nullptr;
  // A token per task pushed; a dropout or a switch re-queues tasks, so a token can outlive its task.
  sg4::SemaphorePtr ready;
  runtime::StageQueue<Task> queue;
  double speed = 1;
  double busy_since_s = 0;
  bool busy = false;
  sg4::ActorPtr actor;
  bool dead = false;
  double slowdown = 1;
  std::vector<Task> current;  // the task (or batch) running
  bool running = false;
};

// The SimGrid platform of a pipeline: a host per device (then the access point), a link per link of the spec that a
// route uses, a route per hop.
struct Platform {
  std::vector<sg4::Host*> hosts;                 // devices, then the access point
  std::vector<sg4::Link*> links;                 // per link of the spec (nullptr: on no route)
  std::map<int, std::vector<int>> link_devices;  // link -> devices at its ends
};

Expected<Platform> build_platform(const PipelineSpec& spec) {
  Platform p;
  auto* zone = sg4::create_full_zone("adaptlink");
  const int n = static_cast<int>(spec.device_names.size());
  for (int d = 0; d < n; ++d) {
    p.hosts.push_back(zone->create_host(fmt::format("device{}", d), spec.device_speed_flops[static_cast<size_t>(d)]));
  }
  if (spec.has_access_point) p.hosts.push_back(zone->create_host("ap", 1e12));
  p.links.assign(spec.links.size(), nullptr);
  std::vector<std::pair<int, int>> link_ends(spec.links.size(), {-1, -1});
  for (const auto& route : spec.routes) {
    for (const auto& hop : route) {
      if (hop.from < n) p.link_devices[hop.link].push_back(hop.from);
      if (hop.to < n) p.link_devices[hop.link].push_back(hop.to);
      const auto& link_spec = spec.links[static_cast<size_t>(hop.link)];
      auto& link = p.links[static_cast<size_t>(hop.link)];
      const std::pair<int, int> ends{std::min(hop.from, hop.to), std::max(hop.from, hop.to)};
      if (link == nullptr) {
        link = zone->create_link(fmt::format("link{}", hop.link), link_spec.bandwidth_bps)
                   ->set_latency(link_spec.latency_s)
                   ->seal();
        link_ends[static_cast<size_t>(hop.link)] = ends;
        zone->add_route(p.hosts[static_cast<size_t>(hop.from)]->get_netpoint(),
                        p.hosts[static_cast<size_t>(hop.to)]->get_netpoint(), nullptr, nullptr,
                        {sg4::LinkInRoute(link)}, true);
      } else if (link_ends[static_cast<size_t>(hop.link)] != ends) {
        return make_error("link '{}' joins different endpoints in two routes", link_spec.name);
      }
    }
  }
  zone->seal();
  return p;
}

class Simulation {
 public:
  Simulation(const PipelineSpec& spec, const EngineOptions& options)
      : spec_(spec),
        options_(options),
        flat_(spec.flat),
        recorder_(spec.device_names, spec.requests, spec.in_flight, spec.arrival == ArrivalKind::closed) {
    progress_step_ = std::max<long long>(1, spec.requests / 100);
    if (spec.faults) {
      timeline_.emplace(*spec.faults, spec.placement, static_cast<int>(spec.device_names.size()));
    }
  }

  // Takes the platform; devices get their hosts, speeds, queues and semaphores.
  void set_platform(Platform platform) {
    platform_ = std::move(platform);
    devices_.resize(spec_.device_names.size());
    for (size_t d = 0; d < devices_.size(); ++d) {
      auto& dev = devices_[d];
      dev.speed = spec_.device_speed_flops[d];
      dev.host = platform_.hosts[d];
      dev.queue.set_schedule(spec_.schedule);
      dev.queue.set_max_batch(spec_.max_batch);
      dev.ready = sg4::Semaphore::create(0);
    }
    jobs_ready_ = sg4::Semaphore::create(0);
    hold_ = sg4::Semaphore::create(0);
    all_done_ = sg4::Semaphore::create(0);
  }

  void start_actors() {
    // Only devices that hold a stage get an actor; others stay idle (until a stage moves to them).
    for (const auto& st : flat_.stages) ensure_device_actor(st.device);
    sg4::Actor::create("driver", devices_[static_cast<size_t>(flat_.stages.front().device)].host, [this] { driver(); });
    if (!timeline_) return;
    for (const auto& f : spec_.faults->faults) {
      runtime::FaultRecord rec;
      rec.at_s = f.at_s;
      rec.device = f.device;
      rec.kind = f.kind;
      records_.push_back(rec);
    }
    pending_rebuilds_.assign(records_.size(), 0);
    sg4::Actor::create("faults", platform_.hosts.back(), [this] {
      sg4::Actor::self()->daemonize();
      fault_loop();
    });
  }

  void ensure_device_actor(int d) {
    auto& dev = devices_[static_cast<size_t>(d)];
    recorder_.holds_stage(d);
    if (dev.actor) return;
    dev.actor = sg4::Actor::create(fmt::format("device{}", d), dev.host, [this, d] {
      sg4::Actor::self()->daemonize();
      device_loop(d);
    });
  }

  bool open_trace() {
    return trace_.open(options_.trace_path, options_.trace_from_s, options_.trace_until_s, options_.trace_max_events);
  }

  Expected<EngineOutcome> finish() {
    if (failure_) return *failure_;
    const double now = sg4::Engine::get_clock();
    for (auto& rec : records_) recorder_.fault(std::move(rec));
    out_.report = recorder_.report(spec_.scenario, "sim", spec_.planner);
    out_.latencies_ms = recorder_.latencies_ms();
    out_.ttft_ms = recorder_.ttfts_ms();
    out_.tpot_ms = recorder_.tpots_ms();
    out_.completions_s = recorder_.completions_s();
    out_.makespan_s = now;
    out_.trace_events = trace_.events();
    if (trace_.enabled()) {
      std::vector<std::string> link_names;
      for (const auto& l : spec_.links) link_names.push_back(l.name);
      const std::string other = fmt::format(
          R"("scenario":{},"planner":{},"backend":"sim","network_model":{},"truncated":{},"trace_from_s":{},"events":{})",
          json_string(spec_.scenario), json_string(spec_.planner), json_string(options_.network_model),
          trace_.truncated() ? "true" : "false", options_.trace_from_s, trace_.events());
      if (!trace_.close(spec_.device_names, link_names, other)) {
        return make_error("cannot write the trace to '{}'", options_.trace_path);
      }
    }
    return std::move(out_);
  }

 private:
  // --- actors ---------------------------------------------------------------------------------------------
  void device_loop(int d) {
    auto& dev = devices_[static_cast<size_t>(d)];
    for (;;) {
      dev.ready->acquire();
      // A rebalance is draining the pipeline: start nothing until the switch has re-queued the work.
      if (holding_) {
        ++held_;  // the switch releases every device held
        hold_->acquire();
      }
      // Steps that land at this very instant are seen by the pick (the replay's rule for simultaneous events).
      sg4::this_actor::yield();
      auto batch = dev.queue.next_batch([](const Task& a, const Task& b) { return a.stage == b.stage; });
      // Empty: a token whose task was re-queued elsewhere (a dropout, a switch) or ran in a batch.
      if (batch.empty()) continue;
      const Task task = batch.front();
      const auto& stage = flat_.stages[static_cast<size_t>(task.stage)];
      const double start = sg4::Engine::get_clock();
      dev.busy = true;
      dev.busy_since_s = start;
      dev.current = batch;
      dev.running = true;
      const bool finished = task.kind == TaskKind::prefill && spec_.schedule == partition::Schedule::decode_first
                                ? run_prefill_nodes(dev, task, stage)
                            : batch.size() > 1 ? (sleep_batch(dev, batch, stage), true)
                                               : (sleep_task(dev, task, stage), true);
      const double end = sg4::Engine::get_clock();
      dev.running = false;
      dev.busy = false;
      recorder_.busy(d, start, end);
      ++out_.stage_executions;  // one trace slice each: a prefill that yields counts each run of nodes
      if (trace_.wants(start)) {
        trace_.compute(d,
                       task.kind == TaskKind::rebuild   ? "replay"
                       : task.kind == TaskKind::prefill ? "prefill"
                                                        : "decode",
                       slots_[static_cast<size_t>(task.slot)].id, task.stage, task.step, task.tokens, start, end);
      }
      if (!finished) continue;  // yielded to a decode step: the rest of the prefill is queued first
      if (task.kind == TaskKind::rebuild) {
        rebuild_done(task.fault);
      } else {
        after_compute(batch);
      }
    }
  }

  void sleep_batch(const DeviceState& dev, const std::vector<Task>& batch, const StageSpec& stage) {
    pasts_.clear();
    for (const auto& t : batch) pasts_.push_back(spec_.prefill_tokens + t.step);
    const double duration =
        spec_.cost->decode_batch_ms(stage.device, stage.first_node, stage.last_node, pasts_) * 1e-3 * dev.slowdown;
    if (duration > 0) sg4::this_actor::sleep_for(duration);
  }

  void sleep_task(const DeviceState& dev, const Task& task, const StageSpec& stage) {
    const double duration = (task.kind == TaskKind::rebuild   ? task.rebuild_s
                             : task.kind == TaskKind::prefill ? stage.prefill_s
                                                              : stage.decode_s[static_cast<size_t>(task.step)]) *
                            dev.slowdown;
    if (duration > 0) sg4::this_actor::sleep_for(duration);
  }

  // A prefill under decode-first: its nodes one at a time; when the queue says a prefill yields (a decode step or a
  // recovery's rebuild waits) after a node that is not the stage's last, the rest is parked and that runs first.
  // True once all have run.
  bool run_prefill_nodes(DeviceState& dev, const Task& task, const StageSpec& stage) {
    for (int n = task.node < 0 ? stage.first_node : task.node; n <= stage.last_node; ++n) {
      const double duration = stage.prefill_node_s[static_cast<size_t>(n - stage.first_node)] * dev.slowdown;
      if (duration > 0) sg4::this_actor::sleep_for(duration);
      if (n == stage.last_node) break;
      sg4::this_actor::yield();  // a step that lands as this node ends counts
      if (dev.queue.prefill_yields()) {
        Task rest = task;
        rest.node = n + 1;
        dev.queue.park(rest);
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
        const int lane = trace_.enabled() ? trace_.take_lane(hop.link) : 0;
        sg4::Comm::sendto(platform_.hosts[static_cast<size_t>(hop.from)], platform_.hosts[static_cast<size_t>(hop.to)],
                          job.bytes);
        const double end = sg4::Engine::get_clock();
        ++out_.transfers;
        if (trace_.enabled()) {
          if (trace_.wants(start)) {
            const Task& first = job.next.front();
            trace_.transfer(hop.link, lane, slots_[static_cast<size_t>(first.slot)].id, job.bytes, job.from_stage,
                            first.stage, first.step, start, end);
          }
          trace_.free_lane(hop.link, lane);
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
        sg4::this_actor::sleep_for(exponential_by_rate(rng, spec_.rate_per_s));
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
    if (admitted_ == 0) out_.first_arrival_s = now;
    out_.last_arrival_s = now;
    recorder_.admit(now);
    slots_[static_cast<size_t>(slot)] = {admitted_++, now, true, 0, -1, -1, -1};
    enqueue(Task{slot, 0, TaskKind::prefill});
  }

  void enqueue(const Task& task) { enqueue(std::vector<Task>{task}); }

  // Tasks that arrive together (a batch's message) are all queued before the device is told: a release is a
  // simcall, and the device would pick in the middle of the insertions.
  void enqueue(const std::vector<Task>& tasks) {
    std::vector<DeviceState*> told;
    for (const auto& task : tasks) {
      auto& dev = devices_[static_cast<size_t>(flat_.stages[static_cast<size_t>(task.stage)].device)];
      if (dev.dead) {  // lost with the device: re-queued at the stage's new device once recovered
        orphans_.push_back(task);
        continue;
      }
      dev.queue.push(task.kind, task);
      told.push_back(&dev);
    }
    for (auto* dev : told) dev->ready->release();
  }

  // Sends `next` (one task, or a batch's members as one message of `count` times the transfer's bytes).
  void send(const TransferSpec& transfer, std::vector<Task> next, int from_stage) {
    if (transfer.route < 0) {
      enqueue(next);
      return;
    }
    ++jobs_in_flight_;
    const double bytes = transfer.bytes * static_cast<double>(next.size());
    jobs_.push_back(Job{&spec_.routes[static_cast<size_t>(transfer.route)],
                        static_cast<std::uint64_t>(std::llround(bytes)), from_stage, std::move(next)});
    if (idle_couriers_ > 0) {
      --idle_couriers_;  // reserved: that courier takes this job (a job never waits for a courier)
    } else {
      sg4::Actor::create("courier", platform_.hosts[0], [this] {
        sg4::Actor::self()->daemonize();
        courier_loop();
      });
    }
    jobs_ready_->release();
  }

  // A task or a batch (decode steps of one stage) ran: its requests go on, a batch's as one message.
  void after_compute(const std::vector<Task>& done) {
    const int last = static_cast<int>(flat_.stages.size()) - 1;
    const Task& first = done.front();
    const auto& stage = flat_.stages[static_cast<size_t>(first.stage)];
    std::vector<Task> on;
    for (const auto& task : done) {
      auto& slot = slots_[static_cast<size_t>(task.slot)];
      if (task.kind == TaskKind::prefill) {
        slot.prefill_nodes_done = stage.last_node + 1;
      } else {
        slot.last_node = stage.last_node;
        slot.last_step = task.step;
      }
      if (task.stage == last && task.kind == TaskKind::prefill) slot.first_token_s = sg4::Engine::get_clock();
      if (task.stage < last) {
        on.push_back(Task{task.slot, task.stage + 1, task.kind, task.step});
      } else if (task.step + 1 >= spec_.output_tokens) {
        complete(task.slot);
      } else {
        on.push_back(Task{task.slot, flat_.text_stage, TaskKind::decode, task.step + 1});
      }
    }
    if (on.empty()) return;
    if (first.stage < last) {
      send(first.kind == TaskKind::prefill ? stage.prefill_out : stage.decode_out, std::move(on), first.stage);
    } else {
      send(flat_.back_edge, std::move(on), first.stage);
    }
  }

  void complete(int slot) {
    const double now = sg4::Engine::get_clock();
    auto& s = slots_[static_cast<size_t>(slot)];
    recorder_.complete(s.admitted_s, now, spec_.output_tokens, s.first_token_s < 0 ? now : s.first_token_s,
                       spec_.output_tokens);
    s.active = false;
    free_slots_.push_back(slot);
    const long long done = recorder_.completed();
    if (options_.progress && (done % progress_step_ == 0 || done == spec_.requests)) {
      options_.progress(done, spec_.requests, now);
    }
    if (spec_.arrival == ArrivalKind::closed && admitted_ < spec_.requests) admit();
    if (done == spec_.requests) all_done_->release();
  }

  // --- faults ---------------------------------------------------------------------------------------------
  void fault_loop() {
    auto& timeline = *timeline_;
    while (!timeline.done()) {
      const double now = sg4::Engine::get_clock();
      if (timeline.next_time() > now) sg4::this_actor::sleep_for(timeline.next_time() - now);
      auto action = timeline.next();
      if (!action) {  // a dropout that leaves a stage nowhere to run: the run fails with that error
        failure_ = action.error();
        all_done_->release();
        return;
      }
      carry_out(*action);
    }
  }

  void carry_out(const FaultTimeline::Action& a) {
    const auto& fault = spec_.faults->faults[a.fault];
    const int d = spec_.faults->cost->scenario().device_index(fault.device);
    auto& dev = devices_[static_cast<size_t>(d)];
    auto& rec = records_[a.fault];
    const double now = sg4::Engine::get_clock();
    switch (a.what) {
      case FaultTimeline::What::inject:
        if (fault.kind == partition::FaultKind::dropout) stop_device(d);
        if (fault.kind == partition::FaultKind::rejoin) dev.dead = false;               // back, empty
        if (fault.kind == partition::FaultKind::slowdown) dev.slowdown = fault.factor;  // from the next task on
        if (fault.kind == partition::FaultKind::link) {
          for (size_t l = 0; l < platform_.links.size(); ++l) {
            if (platform_.links[l] == nullptr) continue;
            const auto& ends = platform_.link_devices[static_cast<int>(l)];
            if (std::find(ends.begin(), ends.end(), d) != ends.end()) {
              platform_.links[l]->set_bandwidth(fault.bandwidth_mbps * 1e6 / 8.0);
            }
          }
        }
        return;
      case FaultTimeline::What::detect:
        if (a.plan.ignored) return;  // already lost (or up): nothing to detect
        rec.detected_s = now;
        if (fault.kind == partition::FaultKind::dropout) rec.cause = runtime::LossCause::heartbeat_timeout;
        runtime::describe(a.plan, spec_.faults->cost->scenario(), rec);
        if (a.plan.action == runtime::RecoveryAction::none) recovered_at(a.fault, now);
        return;
      case FaultTimeline::What::recover:
        if (a.plan.action == runtime::RecoveryAction::replan) {
          switch_to(a.fault, a.plan);
        } else {
          move_stages(a.fault, a.plan);
        }
        timeline_->recovered(a, sg4::Engine::get_clock());
        return;
      case FaultTimeline::What::switch_placement:
        if (!timeline_->still_pending(a)) return;  // cancelled by a dropout since
        for (size_t f : a.completes) {
          if (f != a.fault) completes_[a.fault].push_back(f);
        }
        if (a.plan.stages_changed) {
          switch_to(a.fault, a.plan);
        } else {
          recovered_at(a.fault, now);  // only backups were preloaded again: nothing to drain
        }
        timeline_->switched();
        return;
    }
  }

  // A dropout happens: the device stops; its work is lost, a prefill's nodes done so far too (the tasks run again
  // from their stage's start once the recovery has placed the stage).
  void stop_device(int d) {
    auto& dev = devices_[static_cast<size_t>(d)];
    if (dev.dead) return;
    const double now = sg4::Engine::get_clock();
    dev.dead = true;
    // Only an actor in the middle of a task is killed (its sleep must end now). One that waits for work keeps
    // waiting: its queue is emptied below, and it serves the device again if it comes back. (An actor created at
    // this instant that SimGrid has not started yet must not be killed: SimGrid 3.32 runs it up to its first
    // blocking call all the same, so it would take a task and never finish it.)
    if (dev.running && dev.actor) {
      dev.actor->kill();
      dev.actor = nullptr;
    }
    if (dev.busy) {
      recorder_.busy(d, dev.busy_since_s, now);
      dev.busy = false;
    }
    if (dev.running) {
      for (const auto& t : dev.current) orphans_.push_back(restarted(t));
    }
    dev.running = false;
    for (const auto& t : dev.queue.take_all()) orphans_.push_back(restarted(t));
  }

  // Active request slots in admission order.
  [[nodiscard]] std::vector<int> active_slots() const {
    std::vector<int> out;
    for (int s = 0; s < static_cast<int>(slots_.size()); ++s) {
      if (slots_[static_cast<size_t>(s)].active) out.push_back(s);
    }
    std::sort(out.begin(), out.end(), [this](int a, int b) { return slots_[a].id < slots_[b].id; });
    return out;
  }

  // Every request in flight whose prefill passed a stage's rebuilt text nodes lost their KV caches there: it
  // replays its tokens so far (prompt + image + generated) through them on the stage's device, before anything
  // else. Counted per fault: a second recovery may come while the first's rebuilds still run.
  std::vector<std::vector<Task>> rebuild_tasks(size_t fault, const std::vector<std::vector<runtime::NodeRange>>& runs) {
    const auto& cost = *spec_.faults->cost;
    std::vector<std::vector<Task>> per_device(devices_.size());
    const auto slots = active_slots();
    for (size_t st = 0; st < flat_.stages.size() && st < runs.size(); ++st) {
      if (runs[st].empty()) continue;
      const int device = flat_.stages[st].device;
      const int from = runs[st].front().first;
      double per_token_s = 0;
      for (const auto& r : runs[st])
        per_token_s += cost.prefill_ms(device, r.first, r.last) * 1e-3 / spec_.prefill_tokens;
      if (!(per_token_s > 0)) continue;
      for (int s : slots) {
        const auto& slot = slots_[static_cast<size_t>(s)];
        if (slot.prefill_nodes_done <= from) continue;
        const int steps = slot.last_step < 0 ? 0 : slot.last_step + (slot.last_node >= from ? 1 : 0);
        const int tokens = spec_.prefill_tokens + steps;
        records_[fault].recomputed_tokens += tokens;
        per_device[static_cast<size_t>(device)].push_back(Task{s, static_cast<int>(st), TaskKind::rebuild, -1, tokens,
                                                               static_cast<int>(fault), tokens * per_token_s});
        ++pending_rebuilds_[fault];
      }
    }
    return per_device;
  }

  // A dropout's recovery by moving its stages (switch-over to backups, or redeploy): the stages run on their new
  // devices, the requests in flight rebuild there, and what was lost with the device is queued again.
  void move_stages(size_t fault, const runtime::RecoveryPlan& plan) {
    auto flat = flatten(*spec_.faults->cost, spec_, plan.placement);
    if (!flat) {
      failure_ = flat.error();
      all_done_->release();
      return;
    }
    flat_ = std::move(*flat);
    for (const auto& st : flat_.stages) ensure_device_actor(st.device);
    // Queue every rebuild first and release the devices afterwards: a release is a simcall, and the device actor
    // would start popping the queue in the middle of the insertions.
    const auto rebuilds = rebuild_tasks(fault, plan.rebuild);
    for (size_t d = 0; d < devices_.size(); ++d) {
      for (const auto& t : rebuilds[d]) devices_[d].queue.push(TaskKind::rebuild, t);
    }
    for (size_t d = 0; d < devices_.size(); ++d) {
      for (size_t i = 0; i < rebuilds[d].size(); ++i) devices_[d].ready->release();
    }
    for (const auto& t : std::exchange(orphans_, {})) enqueue(t);
    if (pending_rebuilds_[fault] == 0) recovered_at(fault, sg4::Engine::get_clock());
  }

  // A new placement (a re-plan after a dropout, or a rebalance): drain to a safe point (no task running, no transfer
  // under way), move every queued task to the new stage that holds the node it was to start at, rebuild the KV
  // caches of the text layers that changed device, and go on with the new placement.
  void switch_to(size_t fault, const runtime::RecoveryPlan& plan) {
    auto flat = flatten(*spec_.faults->cost, spec_, plan.placement);
    if (!flat) {
      failure_ = flat.error();
      all_done_->release();
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
    const Flat old = flat_;
    std::vector<Task> pending;
    for (auto& dev : devices_) {
      for (const auto& t : dev.queue.take_all()) pending.push_back(restarted(t));
    }
    for (const auto& t : std::exchange(orphans_, {})) pending.push_back(t);
    flat_ = std::move(*flat);
    auto stage_of = [this](int node) {
      for (size_t s = 0; s < flat_.stages.size(); ++s) {
        if (flat_.stages[s].first_node <= node && node <= flat_.stages[s].last_node) return static_cast<int>(s);
      }
      return static_cast<int>(flat_.stages.size()) - 1;
    };
    // KV rebuilds first, in admission order, ahead of any other work on their device.
    auto queues = rebuild_tasks(fault, plan.rebuild);
    for (const auto& t : pending) {
      if (t.kind == TaskKind::rebuild) {  // an earlier recovery's rebuild: superseded by this one's
        rebuild_done(t.fault);
        continue;
      }
      // The node the task was to start at (a decode step starts at the text stage) and the new stage holding it.
      Task moved = t;
      moved.stage = t.kind == TaskKind::decode && t.stage == old.text_stage
                        ? flat_.text_stage
                        : stage_of(old.stages[static_cast<size_t>(t.stage)].first_node);
      if (t.kind == TaskKind::decode && moved.stage < flat_.text_stage) moved.stage = flat_.text_stage;
      queues[static_cast<size_t>(flat_.stages[static_cast<size_t>(moved.stage)].device)].push_back(moved);
    }
    for (size_t d = 0; d < devices_.size(); ++d) {
      auto& dev = devices_[d];
      for (const auto& t : queues[d]) {
        dev.queue.push(t.kind, t);
        dev.ready->release();
      }
    }
    holding_ = false;
    for (; held_ > 0; --held_) hold_->release();
    for (const auto& st : flat_.stages) ensure_device_actor(st.device);
    for (size_t d = 0; d < devices_.size(); ++d) {
      if (!devices_[d].queue.empty() && !devices_[d].dead) ensure_device_actor(static_cast<int>(d));
    }
    if (pending_rebuilds_[fault] == 0) recovered_at(fault, now);
  }

  void rebuild_done(int fault) {
    if (fault < 0) return;
    if (--pending_rebuilds_[static_cast<size_t>(fault)] == 0) {
      recovered_at(static_cast<size_t>(fault), sg4::Engine::get_clock());
    }
  }

  void recovered_at(size_t fault, double now) {
    for (size_t f : completes_[fault]) {
      records_[f].recovered_s = now;
      records_[f].recovery_ms = (now - records_[f].at_s) * 1e3;
    }
    completes_.erase(fault);
    auto& rec = records_[fault];
    rec.recovered_s = now;
    rec.recovery_ms = (now - rec.at_s) * 1e3;
  }

  const PipelineSpec& spec_;
  const EngineOptions& options_;
  Flat flat_;                     // the current placement, flattened (a recovery changes it)
  bool holding_ = false;          // a rebalance is draining the pipeline
  sg4::SemaphorePtr hold_;        // devices wait on it while holding_
  int held_ = 0;                  // devices waiting on hold_
  long long jobs_in_flight_ = 0;  // transfers queued or under way
  std::vector<Task> orphans_;     // tasks of a lost device, waiting for the recovery
  std::optional<FaultTimeline> timeline_;
  std::vector<runtime::FaultRecord> records_;        // per fault of the setup
  std::vector<int> pending_rebuilds_;                // per fault: rebuilds not yet done
  std::map<size_t, std::vector<size_t>> completes_;  // a rebalance's fault -> the earlier rejoins it completes too
  std::optional<Error> failure_;                     // a recovery that could not be carried out ends the run with this
  long long progress_step_ = 1;
  std::vector<DeviceState> devices_;
  Platform platform_;
  std::deque<Job> jobs_;
  sg4::SemaphorePtr jobs_ready_;
  sg4::SemaphorePtr all_done_;
  int idle_couriers_ = 0;
  std::vector<RequestSlot> slots_;
  std::vector<int> free_slots_;
  std::vector<int> pasts_;  // scratch: a batch's cached tokens per member
  long long admitted_ = 0;
  RunTrace trace_;
  runtime::RunRecorder recorder_;
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
    auto platform = build_platform(spec);
    if (!platform) return platform.error();
    Simulation sim(spec, options);
    sim.set_platform(std::move(*platform));
    if (!sim.open_trace()) return make_error("cannot create the trace file '{}'", options.trace_path);
    sim.start_actors();
    engine.run();
    return sim.finish();
  } catch (const std::exception& e) {
    return make_error("SimGrid: {}", e.what());
  }
}

}  // namespace adaptlink::sim::detail

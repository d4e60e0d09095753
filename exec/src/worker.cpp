#include "adaptlink/exec/worker.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <set>
#include <thread>
#include <zmq.hpp>

#include "adaptlink/exec/model.hpp"
#include "adaptlink/runtime/stage_queue.hpp"
#include "auth.hpp"
#include "runtime.hpp"

namespace adaptlink::exec {

namespace {

using Clock = std::chrono::steady_clock;
using partition::Schedule;
using runtime::TaskKind;
using wire::Message;
using wire::MsgType;

// FNV-1a, 64 bit.
struct Fnv {
  uint64_t h = 1469598103934665603ULL;
  void add(std::string_view s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ULL;
    }
    h ^= 0xff;  // separator
    h *= 1099511628211ULL;
  }
};

using LinkEmulation = wire::LinkMeta;
bool active(const LinkEmulation& l) { return l.latency_ms > 0 || l.ms_per_byte > 0; }

struct Slot {
  std::unique_ptr<Stage> stage;
  bool active = false;
  std::string next;  // endpoint of the next stage's worker; "" when this stage ends with the head
  std::string next_key;  // its CURVE public key
  LinkEmulation link;
};

// What one stage produced for one request, step by step.
struct Logged {
  Activation out;       // none for steps the stage passes over (decode steps of vision nodes)
  int64_t token = -1;   // the stage with the head: the sampled token
};

// A step as the worker handles it: its header fields, its typed meta and its tensor (the activation).
struct StepMessage {
  int64_t request = 0;
  int32_t seq = 0;
  wire::Step step;
  std::vector<wire::TensorBlob> tensors;
};

struct RequestLog {
  int last_seq = -1;
  std::map<int, Logged> steps;
  std::map<int, StepMessage> parked;  // steps that arrived before their predecessor
};

// A step on its way through a stage's nodes: what ran so far produced `act`, `next` runs next.
struct Running {
  StepMessage m;
  StepInput input;
  Activation act;
  int next = 0;
};

// A prefill that let decode steps (or rebuilds) go first between two of its nodes (decode-first); it goes on in
// the same Stage object (its KV cache holds the prefill's first layers).
struct ParkedPrefill {
  const Stage* stage = nullptr;
  Running run;
};

// What waits for the compute thread (in runtime::StageQueue order): a step, a request's end, or a parked prefill.
struct Work {
  std::optional<StepMessage> step;
  int64_t end = 0;  // > 0: drop this request's KV caches
  std::optional<ParkedPrefill> parked;
};

struct Outgoing {
  Clock::time_point deliver;
  uint64_t order = 0;  // FIFO among equal delivery times
  std::string endpoint;
  std::string key;  // the receiver's CURVE public key
  std::vector<std::string> frames;
  bool operator>(const Outgoing& o) const { return deliver != o.deliver ? deliver > o.deliver : order > o.order; }
};

class Worker {
 public:
  explicit Worker(WorkerOptions options)
      : options_(std::move(options)),
        auth_(options_.transport.insecure ? nullptr : std::make_unique<detail::Authenticator>(ctx_, refusals_)),
        in_(ctx_, zmq::socket_type::router) {
    detail::configure_socket(in_, options_.limits);
    // A coordinator that reconnects (a fresh socket after it lost this worker) keeps its routing id, the lease:
    // the new connection takes over from the old one.
    in_.set(zmq::sockopt::router_handover, true);
    detail::secure_server(in_, options_.transport);
    if (auth_) {
      auth_->allow("coordinator", {options_.coordinator_keys.begin(), options_.coordinator_keys.end()});
    }
  }

  Status bind(std::string* bound) {
    try {
      in_.bind(options_.listen);
    } catch (const zmq::error_t& e) {
      return make_error("cannot listen on {}: {}", options_.listen, e.what());
    }
    *bound = in_.get(zmq::sockopt::last_endpoint);
    return Ok{};
  }

  [[nodiscard]] bool stop_requested() const { return stopping_ || (stop_ != nullptr && stop_->load()); }

  void serve(const std::atomic<bool>* stop) {
    stop_ = stop;
    std::thread compute([this] { compute_loop(); });
    std::thread sender([this] { send_loop(); });
    while (!stopping_) {
      if (stop != nullptr && stop->load()) break;
      zmq::pollitem_t item{in_.handle(), 0, ZMQ_POLLIN, 0};
      detail::poll_items(&item, 1, 100);
      if ((item.revents & ZMQ_POLLIN) == 0) continue;
      std::string user;
      auto frames = detail::recv_frames(in_, false, &user);
      if (!frames || frames->empty()) continue;
      const std::string identity = frames->front();
      frames->erase(frames->begin());
      receive({identity, user}, *frames);
    }
    stopping_ = true;
    work_cv_.notify_all();
    out_cv_.notify_all();
    compute.join();
    sender.join();
  }

 private:
  // Who sent a message: its ROUTER routing id (a coordinator's is its lease) and its authenticated CURVE key ("":
  // plain TCP).
  struct Sender {
    std::string identity;
    std::string key;
  };

  void reply(const Sender& to, const Message& m) { detail::send_frames(in_, wire::encode(m), &to.identity); }
  void reply_error(const Sender& to, const Error& e, int64_t request = 0, int32_t seq = 0) {
    refusals_.log(fmt::format("a message from {}: {}", describe(to), e.message));
    reply(to, wire::error_message(fmt::format("rejected message: {}", e.message), request, seq));
  }
  static std::string describe(const Sender& s) {
    return s.key.empty() ? std::string("a peer") : fmt::format("key {}", s.key);
  }

  // --- the lease (receiver thread) ---

  [[nodiscard]] bool owned() const {
    return !lease_.empty() && std::chrono::duration<double>(Clock::now() - owner_heard_).count() <
                                  options_.lease_timeout_s;
  }
  [[nodiscard]] bool from_owner(const Sender& s) const {
    return !lease_.empty() && s.identity == lease_ && s.key == owner_key_;
  }
  // Steps: from the owner or, with CURVE, from a worker of its run (plain TCP cannot tell peers apart).
  [[nodiscard]] bool may_send_steps(const Sender& s) {
    if (from_owner(s)) return true;
    if (options_.transport.insecure) return !lease_.empty();
    return !s.key.empty() && peer_keys_.count(s.key) > 0;
  }
  void refuse_not_owner(const Sender& s, MsgType type) {
    reply_error(s, make_error("{} refused: only the coordinator that holds this worker's lease may send it",
                              wire::to_string(type)));
  }

  // The boundary: every message decoded and its meta typed before anything uses it; a bad one is answered with an
  // error and changes nothing. Only the lease's owner is obeyed (worker.hpp).
  void receive(const Sender& from, const std::vector<std::string>& frames) {
    if (wire::is_batch(frames)) return receive_batch(from, frames);
    auto m = wire::decode(frames, options_.limits);
    if (!m) return reply_error(from, m.error());
    const bool owner = from_owner(from);
    if (owner) owner_heard_ = Clock::now();
    switch (m->type) {
      case MsgType::ping: {
        if (auto st = wire::parse_empty(*m); !st) return reply_error(from, st.error());
        Message pong;
        pong.type = MsgType::pong;
        pong.seq = m->seq;
        reply(from, pong);
        return;
      }
      case MsgType::hello: {
        auto h = wire::parse_hello(*m);
        if (!h) return reply_error(from, h.error());
        if (auto st = check_lease(from, *h); !st) return reply_error(from, st.error());
        const Message answer = hello(*h, from);
        if (answer.type == MsgType::ready) {  // a hello that failed leaves the lease as it was
          lease_ = h->lease;
          owner_key_ = from.key;
          owner_heard_ = Clock::now();
        }
        reply(from, answer);
        return;
      }
      case MsgType::route: {
        if (!owner) return refuse_not_owner(from, m->type);
        auto r = wire::parse_route(*m);
        if (!r) return reply_error(from, r.error());
        reply(from, route(*r));
        return;
      }
      case MsgType::release: {
        if (!owner) return refuse_not_owner(from, m->type);
        if (auto st = wire::parse_empty(*m); !st) return reply_error(from, st.error());
        release();
        return;
      }
      case MsgType::step: {
        if (!may_send_steps(from)) return refuse_not_owner(from, m->type);
        auto step = wire::parse_step(*m);
        if (!step) return reply_error(from, step.error(), m->request, m->seq);
        const auto kind = step->rebuild ? TaskKind::rebuild : step->prefill ? TaskKind::prefill : TaskKind::decode;
        std::lock_guard lock(work_mu_);
        queue_.push(kind, Work{StepMessage{m->request, m->seq, std::move(*step), std::move(m->tensors)}, 0, {}});
        work_cv_.notify_one();
        return;
      }
      case MsgType::end: {
        if (!owner) return refuse_not_owner(from, m->type);
        if (auto st = wire::parse_empty(*m); !st) return reply_error(from, st.error(), m->request);
        if (m->request <= 0) return reply_error(from, make_error("end: the header names no request"));
        std::lock_guard lock(work_mu_);
        queue_.push(TaskKind::control, Work{std::nullopt, m->request, {}});
        work_cv_.notify_one();
        return;
      }
      case MsgType::shutdown:
        if (!owner) return refuse_not_owner(from, m->type);
        if (auto st = wire::parse_empty(*m); !st) return reply_error(from, st.error());
        stopping_ = true;
        return;
      default:
        reply_error(from, make_error("unexpected {} message", wire::to_string(m->type)));
        return;
    }
  }

  // A batch of decode steps another worker ran as one forward: its members are queued together (so this stage's
  // next pick sees them all), each checked as a step message is; a bad member is answered alone.
  void receive_batch(const Sender& from, const std::vector<std::string>& frames) {
    auto members = wire::decode_batch(frames, options_.limits);
    if (!members) return reply_error(from, members.error());
    if (!may_send_steps(from)) return refuse_not_owner(from, MsgType::batch);
    std::vector<StepMessage> steps;
    for (auto& m : *members) {
      if (m.type != MsgType::step) {
        reply_error(from, make_error("batch: a {} message among its members (only steps)", wire::to_string(m.type)));
        continue;
      }
      auto step = wire::parse_step(m);
      if (!step) {
        reply_error(from, step.error(), m.request, m.seq);
        continue;
      }
      steps.push_back(StepMessage{m.request, m.seq, std::move(*step), std::move(m.tensors)});
    }
    std::lock_guard lock(work_mu_);
    for (auto& step : steps) {
      const auto kind = step.step.rebuild ? TaskKind::rebuild : step.step.prefill ? TaskKind::prefill : TaskKind::decode;
      queue_.push(kind, Work{std::move(step), 0, {}});
    }
    work_cv_.notify_one();
  }

  // A hello may take the lease when the worker is free (never leased, released, or its owner silent for the lease
  // timeout) or renew it (the owner again: a re-hello after a failover); it takes it once it succeeded. The
  // coordinator's routing id is its lease. (A new owner's hello drops the old session, as every hello does.)
  Status check_lease(const Sender& from, const wire::Hello& h) {
    if (from.identity != h.lease) return make_error("hello: the connection's routing id is not its lease");
    if (owned() && !from_owner(from)) {
      return make_error("busy: owned by {} (placement epoch {}); it is free when that run ends or after {:g} s of "
                        "silence",
                        owner_key_.empty() ? std::string("another coordinator") : "coordinator key " + owner_key_,
                        epoch_, options_.lease_timeout_s);
    }
    return Ok{};
  }

  // The lease ends (the owner's release, or a new owner after its silence): stages, logs, queued steps and unsent
  // results go.
  void release() {
    {
      std::scoped_lock lock(state_mu_, work_mu_);
      slots_.clear();
      logs_.clear();
      queue_.clear();
      coordinator_.clear();
    }
    drop_unsent_results();
    set_peer_keys({});
    lease_.clear();
    owner_key_.clear();
  }

  // The run's other workers, whose steps this worker takes (and, with CURVE, lets connect).
  // The run's other workers, and this one: a worker that holds consecutive stages (after a recovery moved one to
  // it) sends the activation on to itself, over its own port.
  void set_peer_keys(std::set<std::string> keys) {
    if (!options_.transport.insecure) keys.insert(options_.transport.key.public_key);
    peer_keys_ = std::move(keys);
    if (auth_) auth_->allow("peer", peer_keys_);
  }
  void drop_unsent_results() {
    std::lock_guard lock(out_mu_);
    out_ = {};
    link_free_.clear();
  }

  // --- handshake and routing (receiver thread, under state_mu_) ---

  // The worker's own --model, or the hello's model_dir when it lies under --model-root. The errors name no path of
  // this machine.
  Expected<const Checkpoint*> checkpoint_for(const std::string& model_dir) {
    std::filesystem::path dir = options_.model;
    if (dir.empty()) {
      if (options_.model_root.empty()) {
        return make_error("this worker was started without --model or --model-root: it opens no model a hello names");
      }
      std::error_code ec;
      const auto root = std::filesystem::weakly_canonical(options_.model_root, ec);
      dir = std::filesystem::weakly_canonical(model_dir, ec);
      const auto rel = dir.lexically_relative(root);
      if (ec || model_dir.empty() || rel.empty() || *rel.begin() == "..") {
        return make_error("the hello's model_dir is not under this worker's --model-root");
      }
    }
    if (!checkpoint_ || checkpoint_->dir() != dir) {
      auto c = Checkpoint::open(dir);
      if (!c) return make_error("this worker cannot open the model it was given");
      checkpoint_ = std::make_unique<Checkpoint>(std::move(c).value());
      fingerprint_ = model_fingerprint(*checkpoint_);
    }
    return checkpoint_.get();
  }

  // Loads or re-targets `stages`; `reset` drops everything else first.
  Expected<wire::Ready> apply_stages(const std::vector<wire::StageEntry>& stages, double load_delay_ms, bool reset) {
    if (!checkpoint_) return make_error("route before hello");
    const auto start = Clock::now();
    std::lock_guard lock(state_mu_);
    if (reset) {
      slots_.clear();
      logs_.clear();
    }
    double weight_bytes = 0;
    for (const auto& s : stages) {
      if (s.drop) {
        slots_.erase({s.first, s.last});
        for (auto it = logs_.begin(); it != logs_.end();) it = it->first.first == s.first ? logs_.erase(it) : std::next(it);
        continue;
      }
      if (s.last >= graph_->size()) {
        return make_error("stage [{}, {}] is outside the model's nodes 0..{}", s.first, s.last, graph_->size() - 1);
      }
      auto& slot = slots_[{s.first, s.last}];
      if (!slot.stage) {
        auto stage = Stage::load(*checkpoint_, *graph_, s.first, s.last, exec_options_);
        if (!stage) {
          slots_.erase({s.first, s.last});
          return stage.error();
        }
        slot.stage = std::move(stage).value();
      }
      slot.active = s.active;
      slot.next = s.next;
      slot.next_key = s.next_key;
      slot.link = s.link.value_or(LinkEmulation{});
      weight_bytes += static_cast<double>(slot.stage->weight_bytes());
    }
    const double load_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    // Emulated weight transfer (redeploy over the link in the testbed): the load takes at least this long.
    // The wait ends early when the worker is told to stop (SIGTERM, SIGINT).
    const auto until = start + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double, std::milli>(load_delay_ms));
    while (load_delay_ms > load_ms && Clock::now() < until && !stop_requested()) {
      std::this_thread::sleep_for(std::min<Clock::duration>(until - Clock::now(), std::chrono::milliseconds(50)));
    }
    wire::Ready ready;
    ready.weight_bytes = weight_bytes;
    ready.load_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    return ready;
  }

  Message hello(const wire::Hello& h, const Sender& from) {
    if (h.protocol != wire::kProtocolVersion) {
      return wire::error_message(fmt::format("protocol version {} is not supported (this worker speaks {})", h.protocol,
                                             wire::kProtocolVersion));
    }
    auto ck = checkpoint_for(h.model_dir);
    if (!ck) return wire::error_message(ck.error().to_string());
    if (h.fingerprint != fingerprint_) {
      return wire::error_message(fmt::format(
          "model fingerprint mismatch: this worker's model is not the coordinator's (fingerprint {})",
          h.fingerprint.empty() ? "none" : h.fingerprint));
    }
    for (const auto& key : h.peer_keys) {
      if (auto st = check_public_key(key, "hello: peer_keys"); !st) return wire::error_message(st.error().message);
    }
    auto opts = parse_exec_options(h.dtype, h.exec_device);
    if (!opts) return wire::error_message(opts.error().to_string());
    auto schedule = detail::parse_schedule(h.schedule);
    if (!schedule) return wire::error_message(schedule.error().to_string());
    {
      std::lock_guard lock(state_mu_);
      exec_options_ = *opts;
      graph_ = std::make_unique<models::LayerGraph>(models::LayerGraph::build(
          (*ck)->config(), opts->dtype == at::kFloat ? models::Dtype::fp32 : models::Dtype::bf16));
      device_ = h.device;
      coordinator_ = h.coordinator;
      coordinator_key_ = from.key;
      slowdown_ = h.slowdown;
      epoch_ = h.epoch;
      return_link_ = h.return_link;
    }
    {
      std::scoped_lock lock(state_mu_, work_mu_);
      queue_.clear();
      queue_.set_schedule(*schedule);
      queue_.set_max_batch(h.max_batch);
    }
    set_peer_keys({h.peer_keys.begin(), h.peer_keys.end()});
    // A new session (also a worker taken back after it hung, e.g. SIGSTOP then SIGCONT): nothing it produced before
    // is sent any more.
    drop_unsent_results();
    auto loaded = apply_stages(h.stages, 0, /*reset=*/true);
    if (!loaded) return wire::error_message(loaded.error().to_string());
    loaded->fingerprint = fingerprint_;
    return wire::make_message(MsgType::ready, *loaded);
  }

  // New routes or preloads (stages; a stage's link also changes its emulated link: a testbed link fault), a new
  // emulated slowdown (a testbed slowdown fault) and/or a new emulated return link.
  Message route(const wire::Route& r) {
    if (!graph_) return wire::error_message("route before hello");
    {
      std::lock_guard lock(state_mu_);
      if (r.epoch) epoch_ = std::max(epoch_, *r.epoch);
      if (r.slowdown) slowdown_ = *r.slowdown;
      if (r.return_link) return_link_ = *r.return_link;
    }
    if (!r.stages) return wire::make_message(MsgType::ready, wire::Ready{});
    auto loaded = apply_stages(*r.stages, r.load_delay_ms, /*reset=*/false);
    if (!loaded) return wire::error_message(loaded.error().to_string());
    return wire::make_message(MsgType::ready, *loaded);
  }

  // --- compute thread ---

  void compute_loop() {
    c10::AutoGradMode no_grad(false);
    if (options_.threads > 0) at::set_num_threads(options_.threads);
    while (true) {
      std::optional<Work> work;
      {
        std::unique_lock lock(work_mu_);
        work_cv_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stopping_ || !queue_.empty(); });
        if (stopping_) return;
        // Decode steps for the same stage run as one batch (runtime::StageQueue::next_batch).
        auto batch = queue_.next_batch([](const Work& a, const Work& b) {
          return a.step && b.step && a.step->step.first == b.step->step.first;
        });
        if (batch.empty()) continue;
        if (batch.size() > 1) {
          lock.unlock();
          std::lock_guard state(state_mu_);
          handle_batch(std::move(batch));
          continue;
        }
        work = std::move(batch.front());
      }
      std::lock_guard lock(state_mu_);
      // A step that throws (an allocation the machine cannot give, a libtorch error) fails alone: its request gets
      // the error and loses its state here, the worker serves on.
      const StepMessage* m = work->parked ? &work->parked->run.m : work->step ? &*work->step : nullptr;
      const int64_t request = m != nullptr ? m->request : 0;
      const int32_t seq = m != nullptr ? m->seq : 0;
      try {
        if (work->parked) {
          resume_prefill(std::move(*work->parked));
        } else if (work->end > 0) {
          end_request(work->end);
        } else {
          handle_step(std::move(*work->step));
        }
      } catch (const c10::Error& e) {
        step_threw(request, seq, e.what_without_backtrace());
      } catch (const std::exception& e) {
        step_threw(request, seq, e.what());
      }
    }
  }

  // Runs one step as compute_loop does: a step that throws fails alone.
  void guarded(StepMessage m) {
    const int64_t request = m.request;
    const int32_t seq = m.seq;
    try {
      handle_step(std::move(m));
    } catch (const c10::Error& e) {
      step_threw(request, seq, e.what_without_backtrace());
    } catch (const std::exception& e) {
      step_threw(request, seq, e.what());
    }
  }

  // Decode steps of one stage, as one forward. A member that is not the next step of its request here (stale, seen
  // before, ahead of its predecessor) or whose stage is missing takes the single-step path; so does every member
  // when the batch cannot run (an input that does not stack, a libtorch error): each then fails or succeeds alone.
  // The outputs are logged per request and passed on as one batch message (the next stage's members arrive together).
  void handle_batch(std::vector<Work> works) {
    std::vector<StepMessage> members;
    for (auto& w : works) {
      StepMessage& m = *w.step;
      Slot* slot = m.step.epoch < epoch_ ? nullptr : active_slot(m.step.first);
      const bool in_order = slot != nullptr && !m.step.prefill && !m.step.rebuild &&
                            m.seq == logs_[{m.step.first, m.request}].last_seq + 1;
      if (in_order) {
        members.push_back(std::move(m));
      } else {
        guarded(std::move(m));
      }
    }
    if (members.size() < 2) {
      for (auto& m : members) guarded(std::move(m));
      return;
    }
    const int first = members.front().step.first;
    Slot& slot = *active_slot(first);
    std::vector<StepInput> inputs;
    std::vector<at::Tensor> rows;
    bool stackable = true;
    for (const auto& m : members) {
      auto parsed = model_input(m);
      if (!parsed) {
        stackable = false;
        break;
      }
      inputs.push_back(parsed->step);
      if (parsed->input.kind == ActivationKind::text_hidden) {
        rows.push_back(parsed->input.tensor);
      } else if (parsed->input.kind != ActivationKind::none) {
        stackable = false;
      }
    }
    stackable = stackable && (rows.empty() || rows.size() == members.size());
    Expected<Activation> out = make_error("not stackable");
    const int64_t started_us = detail::wall_us();
    const auto start = Clock::now();
    if (stackable) {
      try {
        Activation in;
        if (!rows.empty()) in = {ActivationKind::text_hidden, at::cat(rows, 0)};
        out = slot.stage->forward_batch(inputs, in);
      } catch (const std::exception&) {
        out = make_error("the batch threw");
      }
    }
    if (!out) {  // each alone: its own error, or its own result
      for (auto& m : members) guarded(std::move(m));
      return;
    }
    emulate_compute(start);
    const int64_t ended_us = detail::wall_us();
    std::vector<Message> onward;
    for (size_t b = 0; b < members.size(); ++b) {
      StepMessage& m = members[b];
      add_event(m.step, "decode", slot.stage->first(), slot.stage->last(), started_us, ended_us, m.request);
      const Activation row{out->kind, out->tensor.defined() ? out->tensor.narrow(0, static_cast<int64_t>(b), 1)
                                                            : at::Tensor()};
      if (auto next = log_result(slot, logs_[{first, m.request}], m, row)) onward.push_back(std::move(*next));
    }
    if (onward.size() == 1) {
      enqueue(slot.next, slot.next_key, wire::encode(onward.front()), slot.link);
    } else if (!onward.empty()) {
      enqueue(slot.next, slot.next_key, wire::encode_batch(onward), slot.link);
    }
    for (const auto& m : members) run_parked_steps(slot, logs_[{first, m.request}]);
  }

  void step_threw(int64_t request, int32_t seq, const std::string& what) {
    if (request <= 0) return;
    end_request(request);
    const auto line = what.substr(0, what.find('\n'));
    refusals_.note(fmt::format("request {} step {} failed: {}", request, seq, line));
    to_coordinator(wire::error_message(fmt::format("{}: the step failed: {}", device_, line), request, seq));
  }

  // Under decode-first, whether a running prefill yields now (a decode step or a rebuild waits).
  bool prefill_must_yield() {
    std::lock_guard lock(work_mu_);
    return queue_.prefill_yields();
  }

  void end_request(int64_t request) {
    for (auto& [range, slot] : slots_) slot.stage->drop_request(request);
    for (auto it = logs_.begin(); it != logs_.end();) {
      it = it->first.second == request ? logs_.erase(it) : std::next(it);
    }
  }

  void to_coordinator(Message m, const LinkEmulation& link = {}) {
    enqueue(coordinator_, coordinator_key_, wire::encode(m), link);
  }

  void fail_step(const StepMessage& m, const std::string& text) {
    refusals_.note(fmt::format("refused request {} step {}: {}", m.request, m.seq, text));
    to_coordinator(wire::error_message(fmt::format("{}: {}", device_, text), m.request, m.seq));
  }

  void handle_step(StepMessage m) {
    if (m.step.epoch < epoch_) return;  // sent before a re-plan: re-issued since
    const int first = m.step.first;
    Slot* found = active_slot(first);
    if (found == nullptr) return fail_step(m, fmt::format("no active stage starting at node {} on this worker", first));
    Slot& slot = *found;
    RequestLog& log = logs_[{first, m.request}];
    if (m.step.rebuild) {
      rebuild(slot, log, m);
    } else if (m.seq <= log.last_seq) {
      resend_logged(slot, log, m);
    } else if (m.seq > log.last_seq + 1 && slot_needs_order(slot)) {
      log.parked.emplace(m.seq, std::move(m));
      return;
    } else {
      compute(slot, log, std::move(m));
    }
    run_parked_steps(slot, log);
  }

  Slot* active_slot(int first) {
    Slot* found = nullptr;
    for (auto& [range, candidate] : slots_) {
      if (range.first == first && candidate.active) found = &candidate;
    }
    return found;
  }

  // Steps that waited for their predecessor (while that is a parked prefill, it is not logged yet: they wait on).
  void run_parked_steps(Slot& slot, RequestLog& log) {
    while (!log.parked.empty() && log.parked.begin()->first <= log.last_seq + 1) {
      StepMessage next = std::move(log.parked.begin()->second);
      log.parked.erase(log.parked.begin());
      if (next.step.epoch < epoch_) continue;  // stale
      if (next.seq <= log.last_seq) {
        resend_logged(slot, log, next);
      } else {
        compute(slot, log, std::move(next));
      }
    }
  }

  [[nodiscard]] bool slot_needs_order(const Slot& slot) const { return !graph_->node(slot.stage->last()).is_vision(); }

  struct Parsed {
    StepInput step;
    Activation input;
  };
  // The model's view of a typed step (its input ids as a tensor, its activation).
  Expected<Parsed> model_input(const StepMessage& m) {
    Parsed p;
    p.step.request = m.request;
    p.step.prefill = m.step.prefill;
    p.step.all_logits = m.step.all_logits;
    p.step.input_ids = at::tensor(m.step.input_ids, at::TensorOptions().dtype(at::kLong));
    auto kind = detail::parse_activation_kind(m.step.kind);
    if (!kind) return kind.error();
    p.input.kind = *kind;
    if (*kind != ActivationKind::none) {
      auto t = detail::from_blob(m.tensors.at(0));
      if (!t) return t.error();
      if (!at::isFloatingType(t->scalar_type())) return make_error("activation tensor must be floating point");
      p.input.tensor = *t;
    }
    return p;
  }

  // Runs the stage on a step, logs the result and passes it on.
  void compute(Slot& slot, RequestLog& log, StepMessage m) {
    auto parsed = model_input(m);
    if (!parsed) return fail_step(m, parsed.error().message);
    const int first = slot.stage->first();
    proceed(slot, log, Running{std::move(m), parsed->step, std::move(parsed->input), first});
  }

  // Runs the step's remaining nodes. Under decode-first a prefill runs them one at a time and, when the queue says
  // it yields (a decode step or a rebuild waits) after one, it is parked in the queue (ahead of every other prefill)
  // so that those go first. Each contiguous run of nodes is one trace event; the result is logged and passed on
  // once the last node ran.
  void proceed(Slot& slot, RequestLog& log, Running r) {
    const int last = slot.stage->last();
    const int from = r.next;
    const bool yields = r.input.prefill && queue_schedule() == Schedule::decode_first;
    const int64_t started_us = detail::wall_us();
    while (r.next <= last) {
      const int to = yields ? r.next : last;
      const auto start = Clock::now();
      auto out = slot.stage->forward(r.input, r.act, r.next, to);
      if (!out) return fail_step(r.m, out.error().message);
      emulate_compute(start);  // per node: a decode step that arrives waits for the current (emulated) node only
      r.act = std::move(out).value();
      r.next = to + 1;
      if (yields && r.next <= last && prefill_must_yield()) break;
    }
    add_event(r.m.step, r.input.prefill ? "prefill" : "decode", from, r.next - 1, started_us, detail::wall_us(),
              r.m.request);
    if (r.next <= last) {
      std::lock_guard lock(work_mu_);
      queue_.park(Work{std::nullopt, 0, ParkedPrefill{slot.stage.get(), std::move(r)}});
      return;
    }
    log_and_pass_on(slot, log, r.m, r.act);
  }

  Schedule queue_schedule() {
    std::lock_guard lock(work_mu_);
    return queue_.schedule();
  }

  void resume_prefill(ParkedPrefill p) {
    StepMessage& m = p.run.m;
    if (m.step.epoch < epoch_) return;  // a re-plan since: re-issued
    const int first = m.step.first;
    Slot* slot = active_slot(first);
    if (slot == nullptr || slot->stage.get() != p.stage) {
      return fail_step(m, fmt::format("the stage starting at node {} was replaced during a prefill", first));
    }
    RequestLog& log = logs_[{first, m.request}];
    proceed(*slot, log, std::move(p.run));
    run_parked_steps(*slot, log);
  }

  void log_and_pass_on(const Slot& slot, RequestLog& log, const StepMessage& m, const Activation& out) {
    if (auto onward = log_result(slot, log, m, out)) enqueue(slot.next, slot.next_key, wire::encode(*onward), slot.link);
  }

  // Logs a step's result; the last stage sends its token, any other returns the step message for the next stage
  // (none, after an error reply, when the stage has no next worker).
  std::optional<Message> log_result(const Slot& slot, RequestLog& log, const StepMessage& m, const Activation& out) {
    log.last_seq = m.seq;
    Logged& entry = log.steps[m.seq];
    if (out.kind == ActivationKind::logits) {
      const at::Tensor& logits = out.tensor;  // [1, tokens or 1, vocab]
      entry.token = logits[0][logits.size(1) - 1].argmax().item<int64_t>();
      send_token(m, entry.token, m.step.want_logits ? logits[0].to(at::kFloat) : at::Tensor());
      return std::nullopt;
    }
    entry.out = out;
    if (slot.next.empty()) {
      fail_step(m, "stage has no next worker but does not end with the head");
      return std::nullopt;
    }
    return forward_message(slot, m, out, false);
  }

  // Emulated slowdown: the step takes `slowdown_` times its measured time; the extra is idle waiting.
  void emulate_compute(Clock::time_point start) {
    if (slowdown_ <= 1.0) return;
    const auto measured = Clock::now() - start;
    std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(measured * slowdown_));
  }

  // A trace event "what [first, last]" for nodes first..last of this worker's run of a step.
  void add_event(wire::Step& step, std::string_view what, int first, int last, int64_t start_us, int64_t end_us,
                 int64_t request) {
    step.events.push_back({device_, fmt::format("{} [{}, {}]", what, first, last), request, start_us, end_us - start_us});
  }

  void forward(const Slot& slot, const StepMessage& in, const Activation& out, bool rebuild) {
    if (slot.next.empty()) return fail_step(in, "stage has no next worker but does not end with the head");
    enqueue(slot.next, slot.next_key, wire::encode(forward_message(slot, in, out, rebuild)), slot.link);
  }

  // The step message that carries `out` to the next stage.
  Message forward_message(const Slot& slot, const StepMessage& in, const Activation& out, bool rebuild) {
    wire::Step next = in.step;
    next.first = slot.stage->last() + 1;
    next.kind = std::string(to_string(out.kind));
    next.rebuild = rebuild;
    Message m = wire::make_message(MsgType::step, next, in.request, in.seq);
    if (out.kind != ActivationKind::none) m.tensors.push_back(detail::to_blob(out.tensor));
    return m;
  }

  void send_token(const StepMessage& in, int64_t token, const at::Tensor& logits) {
    Message t = wire::make_message(MsgType::token, wire::Token{token, in.step.events}, in.request, in.seq);
    if (logits.defined()) t.tensors.push_back(detail::to_blob(logits));
    to_coordinator(std::move(t), return_link_);
  }

  // A step seen before: pass on what was produced then (no second computation, no second cache entry).
  void resend_logged(Slot& slot, RequestLog& log, StepMessage& m) {
    auto it = log.steps.find(m.seq);
    if (it == log.steps.end()) return fail_step(m, fmt::format("step {} was rebuilt, not logged", m.seq));
    if (it->second.token >= 0) return send_token(m, it->second.token, at::Tensor());
    forward(slot, m, it->second.out, false);
  }

  // step.steps = k: rebuild the request's state for its steps 0..k-1 (input_ids = all their ids).
  void rebuild(Slot& slot, RequestLog& log, StepMessage& m) {
    const int steps = m.step.steps;
    // A stage of vision nodes only sees the prefill (decode steps skip it): its step 0 is all it has.
    bool complete = slot_needs_order(slot) ? log.last_seq >= steps - 1 : log.steps.count(0) > 0;
    for (int s = 0; complete && slot_needs_order(slot) && s < steps; ++s) complete = log.steps.count(s) > 0;
    const bool full = m.step.full;  // after a re-plan every stage may need rebuilding
    if (complete) {
      // This stage has its part: pass its outputs of those steps on (none: it ends with the head, done).
      if (slot.next.empty()) {
        if (full) ack_rebuild(m, 0);
        return;
      }
      std::vector<at::Tensor> parts;
      ActivationKind kind = log.steps[0].out.kind;
      for (int s = 0; s < steps; ++s) {
        auto it = log.steps.find(s);
        if (it != log.steps.end() && it->second.out.kind == kind && it->second.out.tensor.defined()) {
          parts.push_back(it->second.out.tensor);
        }
      }
      Activation joined{kind, kind == ActivationKind::text_hidden && !parts.empty() ? at::cat(parts, 1)
                              : parts.empty()                                        ? at::Tensor()
                                                                                     : parts.front()};
      if (!joined.tensor.defined()) joined.kind = ActivationKind::none;
      forward(slot, m, joined, true);
      return;
    }
    // The replacement: one prefill over every position of those steps rebuilds the KV cache.
    auto parsed = model_input(m);
    if (!parsed) return fail_step(m, parsed.error().message);
    parsed->step.prefill = true;
    parsed->step.all_logits = false;
    const int64_t started_us = detail::wall_us();
    const auto start = Clock::now();
    auto out = slot.stage->forward(parsed->step, parsed->input);
    if (!out) return fail_step(m, out.error().message);
    emulate_compute(start);
    add_event(m.step, "rebuild", slot.stage->first(), slot.stage->last(), started_us, detail::wall_us(), m.request);
    log.steps.clear();
    if (out->kind == ActivationKind::text_hidden) {
      const int64_t total = out->tensor.size(1);
      const int64_t first_positions = total - (steps - 1);
      log.steps[0].out = {out->kind, out->tensor.narrow(1, 0, first_positions)};
      for (int s = 1; s < steps; ++s) log.steps[s].out = {out->kind, out->tensor.narrow(1, first_positions + s - 1, 1)};
    } else if (out->kind != ActivationKind::logits) {
      log.steps[0].out = *out;
      for (int s = 1; s < steps; ++s) log.steps[s].out = Activation{};
    }
    log.last_seq = steps - 1;
    const int64_t positions = out->kind == ActivationKind::text_hidden || out->kind == ActivationKind::logits
                                  ? parsed->step.input_ids.size(0)
                                  : 0;
    if (full && !slot.next.empty()) {  // the stages behind may have lost their state too: pass it on
      m.step.rebuilt_positions += positions;
      forward(slot, m, *out, true);
      return;
    }
    ack_rebuild(m, positions);
  }

  // Tells the coordinator a rebuild is done and how many positions were recomputed on the way.
  void ack_rebuild(const StepMessage& m, int64_t positions) {
    wire::Ready done;
    done.rebuilt_positions = m.step.rebuilt_positions + positions;
    done.device = device_;
    done.events = m.step.events;
    to_coordinator(wire::make_message(MsgType::ready, done, m.request, m.seq));
  }

  // --- sender thread ---

  void enqueue(const std::string& endpoint, const std::string& key, std::vector<std::string> frames,
               const LinkEmulation& link) {
    if (endpoint.empty()) return;
    size_t bytes = 0;
    for (const auto& f : frames) bytes += f.size();
    const auto now = Clock::now();
    Outgoing o;
    o.endpoint = endpoint;
    o.key = key;
    o.frames = std::move(frames);
    std::lock_guard lock(out_mu_);
    o.order = next_order_++;
    if (active(link)) {
      auto& free_at = link_free_[endpoint];
      const auto start = std::max(now, free_at);
      free_at = start + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double, std::milli>(static_cast<double>(bytes) * link.ms_per_byte));
      o.deliver = free_at + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double, std::milli>(link.latency_ms));
    } else {
      o.deliver = now;
    }
    out_.push(std::move(o));
    out_cv_.notify_one();
  }

  void send_loop() {
    while (true) {
      Outgoing o;
      std::string coordinator;
      std::string coordinator_key;
      {
        std::unique_lock lock(out_mu_);
        out_cv_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stopping_ || !out_.empty(); });
        if (stopping_) return;
        if (out_.empty()) continue;
        const auto due = out_.top().deliver;
        if (due > Clock::now()) {
          out_cv_.wait_until(lock, due);  // woken early by an earlier message: re-check
          continue;
        }
        o = out_.top();
        out_.pop();
      }
      if (detail::send_frames(peer(o.endpoint, o.key), o.frames)) continue;
      // The peer there cannot be reached: tell the coordinator at once (it marks that worker lost) instead of
      // letting the step time out.
      {
        std::lock_guard lock(state_mu_);
        coordinator = coordinator_;
        coordinator_key = coordinator_key_;
      }
      if (o.endpoint != coordinator && !coordinator.empty()) {
        wire::ErrorMeta e{fmt::format("{}: cannot send to {}", device_, o.endpoint), o.endpoint};
        detail::send_frames(peer(coordinator, coordinator_key), wire::encode(wire::make_message(MsgType::error, e)));
      }
    }
  }

  // A DEALER to `endpoint`, a CURVE client of the server key it was given (one per endpoint and key).
  zmq::socket_t& peer(const std::string& endpoint, const std::string& key) {
    const auto id = std::make_pair(endpoint, key);
    auto it = peers_.find(id);
    if (it == peers_.end()) {
      zmq::socket_t s(ctx_, zmq::socket_type::dealer);
      detail::configure_socket(s, options_.limits);
      detail::secure_client(s, options_.transport, key);
      s.connect(endpoint);
      it = peers_.emplace(id, std::move(s)).first;
    }
    return it->second;
  }

  WorkerOptions options_;
  zmq::context_t ctx_;
  detail::RefusalLog refusals_{"worker"};
  const std::atomic<bool>* stop_ = nullptr;  // serve()'s: set by the signal handler of the process
  std::unique_ptr<detail::Authenticator> auth_;  // CURVE: which keys connect
  zmq::socket_t in_;
  std::atomic<bool> stopping_{false};

  // Session state (receiver: hello/route; compute thread: steps).
  std::mutex state_mu_;
  std::unique_ptr<Checkpoint> checkpoint_;
  std::string fingerprint_;
  std::unique_ptr<models::LayerGraph> graph_;
  ExecOptions exec_options_;
  std::string device_ = "worker";
  std::string coordinator_;
  std::string coordinator_key_;  // the owner's CURVE key: the return endpoint's server key
  double slowdown_ = 1.0;
  int64_t epoch_ = 0;  // placement generation: steps of an older one are stale (dropped)
  LinkEmulation return_link_;
  std::map<std::pair<int, int>, Slot> slots_;  // by node range
  std::map<std::pair<int, int64_t>, RequestLog> logs_;

  // What waits for the compute thread, in the hello's schedule (runtime::StageQueue). A hello clears it under both
  // state_mu_ and work_mu_; the receiver pushes, and the compute thread takes and parks, under work_mu_.
  std::mutex work_mu_;
  std::condition_variable work_cv_;
  runtime::StageQueue<Work> queue_;

  std::mutex out_mu_;
  std::condition_variable out_cv_;
  std::priority_queue<Outgoing, std::vector<Outgoing>, std::greater<>> out_;
  std::map<std::string, Clock::time_point> link_free_;
  uint64_t next_order_ = 0;
  std::map<std::pair<std::string, std::string>, zmq::socket_t> peers_;  // sender thread only

  // The lease and who may send steps (receiver thread only).
  std::string lease_;
  std::set<std::string> peer_keys_;  // the run's other workers
  std::string owner_key_;
  Clock::time_point owner_heard_{};
};

}  // namespace

std::string model_fingerprint(const Checkpoint& checkpoint) {
  Fnv f;
  f.add(checkpoint.raw_config().dump());
  for (const auto& [name, t] : checkpoint.tensors()) {
    f.add(name);
    f.add(std::to_string(static_cast<int>(t.info->dtype)));
    for (int64_t d : t.info->shape) f.add(std::to_string(d));
  }
  return fmt::format("{:016x}", f.h);
}

Status run_worker(const WorkerOptions& options, const std::function<void(const std::string&)>& on_listening,
                  const std::atomic<bool>* stop) {
  if (auto st = check_transport(options.transport, {options.listen}, "worker --listen"); !st) return st;
  if (!options.transport.insecure && options.coordinator_keys.empty()) {
    return make_error("a worker needs --coordinator-key: the public key of each coordinator it serves");
  }
  for (const auto& key : options.coordinator_keys) {
    if (auto st = check_public_key(key, "--coordinator-key"); !st) return st;
  }
  if (options.model.empty() && options.model_root.empty()) {
    return make_error("a worker needs --model (its checkpoint) or --model-root (the folder the coordinator's may lie in)");
  }
  WorkerOptions own = options;
  if (!options.model.empty()) {
    auto c = Checkpoint::open(options.model);
    if (!c) return c.error();
    // With its own --model a worker knows the largest message a step can be: no frame above that is buffered.
    const auto model = detail::message_limits(c->config());
    own.limits.max_message_bytes = std::min(own.limits.max_message_bytes, model.max_message_bytes);
  }
  Worker worker(own);
  std::string bound;
  auto st = worker.bind(&bound);
  if (!st) return st.error();
  if (on_listening) on_listening(bound);
  worker.serve(stop);
  return Ok{};
}

}  // namespace adaptlink::exec

#include "adaptlink/exec/coordinator.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <thread>
#include <utility>
#include <zmq.hpp>

#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/serve.hpp"
#include "adaptlink/exec/worker.hpp"
#include "adaptlink/models/graph.hpp"
#include "adaptlink/partition/problem.hpp"
#include "auth.hpp"
#include "coordinator_view.hpp"
#include "runtime.hpp"

namespace adaptlink::exec {

namespace {

using Clock = std::chrono::steady_clock;
using runtime::RecoveryAction;
using wire::Message;
using wire::MsgType;

using detail::preloaded;
using detail::Range;

struct WorkerState {
  zmq::socket_t socket;
  std::unique_ptr<detail::HandshakeMonitor> monitor;  // CURVE: a failed handshake names the worker at once
  std::string endpoint;
  bool alive = true;
  bool leased = false;  // it accepted a hello: its lease is released at the end
  Clock::time_point last_pong;
  std::set<Range> holds;  // node ranges loaded (active or backup)
};

struct RequestState {
  int outstanding = -1;  // sequence number of the step in flight, -1 before admission
  bool finished = false;
  bool rebuilding = false;  // a rebuild of its state is on its way (its ready counts towards the fault's recovery)
  int losses = 0;           // worker losses (not injected by the environment) it was in flight at
  std::vector<int64_t> generated;
  Clock::time_point admitted;
};

class Coordinator {
 public:
  Coordinator(const PipelineSpec& spec, const std::vector<ExecRequest>& requests, const CoordinatorOptions& options)
      : spec_(spec),
        requests_(requests),
        options_(options),
        env_(options.environment != nullptr ? *options.environment : no_environment_),
        auth_(options.transport.insecure ? nullptr : std::make_unique<detail::Authenticator>(ctx_, refusals_)),
        ret_(ctx_, zmq::socket_type::router),
        lease_(new_lease()) {
    detail::configure_socket(ret_);
  }
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // The run is over (done or failed): every worker's lease ends; the release gets half a second to leave.
  ~Coordinator() {
    Message release;
    release.type = MsgType::release;
    const auto frames = wire::encode(release);
    for (auto& w : workers_) {
      w.monitor.reset();
      if (!w.leased) continue;
      w.socket.set(zmq::sockopt::linger, 500);
      detail::send_frames(w.socket, frames);
    }
  }

  // Errors of prepare() are bad input (the pipeline, the checkpoint, the requests); what goes wrong once the workers
  // are contacted is a failed run.
  Expected<ExecRun> run() {
    auto st = prepare();
    if (!st) return st.error();
    st = handshake();
    if (st) st = env_.ready();
    if (st) st = serve();
    run_.wall_s = seconds(Clock::now());
    run_.start_wall_us = start_wall_us_;
    if (!st) {
      if (options_.failed_run != nullptr) *options_.failed_run = ended();
      return as_failure(st.error());
    }
    return std::move(run_);
  }

  // The run so far, with only the requests that ended (completed or failed), in completion order.
  ExecRun ended() const {
    ExecRun out = run_;
    out.results.clear();
    for (size_t i : ended_order_) out.results.push_back(run_.results[i]);
    return out;
  }

  [[nodiscard]] Status interrupted() const {
    if (options_.interrupt == nullptr || options_.interrupt->load() == 0) return Ok{};
    return make_error("interrupted by signal {} ({})", options_.interrupt->load(), strsignal(options_.interrupt->load()));
  }

 private:
  // --- set-up ---

  // A lease id: 128 random bits, hex (also the routing id of this coordinator's connections to its workers).
  static std::string new_lease() {
    std::random_device rd;
    std::string out;
    for (int i = 0; i < 4; ++i) out += fmt::format("{:08x}", rd());
    return out;
  }

  Status prepare() {
    if (spec_.stages.empty()) return make_error("the pipeline has no stages");
    std::vector<std::string> endpoints = {options_.listen};
    for (const auto& w : spec_.workers) endpoints.push_back(w.endpoint);
    if (auto st = check_transport(options_.transport, endpoints, "coordinator"); !st) return st;
    detail::secure_server(ret_, options_.transport);
    if (!options_.transport.insecure) {
      std::set<std::string> keys;
      for (const auto& w : spec_.workers) {
        if (auto st = check_public_key(w.public_key, fmt::format("worker '{}': its public_key", w.name)); !st) {
          return make_error("{} (scenario public_key, --worker-keys, or --insecure on loopback)", st.error().message);
        }
        keys.insert(w.public_key);
      }
      auth_->allow("worker", keys);
    }
    if (options_.in_flight < 1) return make_error("in_flight must be >= 1");
    auto ck = Checkpoint::open(options_.model);
    if (!ck) return ck.error();
    fingerprint_ = model_fingerprint(*ck);
    limits_ = detail::message_limits(ck->config());
    detail::configure_socket(ret_, limits_);
    const auto graph = models::LayerGraph::build(ck->config(), models::Dtype::fp32);
    int expect = 0;
    for (size_t s = 0; s < spec_.stages.size(); ++s) {
      const auto& st = spec_.stages[s];
      if (st.first != expect || st.last < st.first || st.last >= graph.size()) {
        return make_error("stages must cover nodes 0..{} in order (stage {} is [{}, {}])", graph.size() - 1, s,
                          st.first, st.last);
      }
      if (st.worker < 0 || st.worker >= static_cast<int>(spec_.workers.size())) {
        return make_error("stage {} names worker {}, there are {}", s, st.worker, spec_.workers.size());
      }
      expect = st.last + 1;
    }
    if (expect != graph.size()) return make_error("stages end at node {}, the model has {}", expect - 1, graph.size());
    auto view = detail::recovery_view(spec_, ck->config());
    if (!view) return view.error();
    view_.emplace(std::move(*view));
    try {
      ret_.bind(options_.listen);
    } catch (const zmq::error_t& e) {
      return make_error("cannot listen on {}: {}", options_.listen, e.what());
    }
    return_endpoint_ = ret_.get(zmq::sockopt::last_endpoint);
    for (const auto& w : spec_.workers) {
      WorkerState ws;
      try {
        connect(ws, w.endpoint, w.public_key);
      } catch (const zmq::error_t& e) {
        return make_error("worker '{}': bad endpoint '{}': {}", w.name, w.endpoint, e.what());
      }
      workers_.push_back(std::move(ws));
    }
    for (const auto& w : spec_.workers) slowdown_.push_back(w.slowdown);
    states_.assign(requests_.size(), RequestState{});
    run_.results.resize(requests_.size());
    for (size_t i = 0; i < requests_.size(); ++i) run_.results[i].id = requests_[i].id;
    start_ = Clock::now();
    start_wall_us_ = detail::wall_us();
    for (size_t i = 0; i < requests_.size(); ++i) {
      if (auto refused = admission_error(requests_[i], ck->config()); !refused.empty()) fail_request(i, refused);
    }
    return Ok{};
  }

  // Why a request cannot run on this model ("" if it can): it fails alone, before any worker sees it.
  static std::string admission_error(const ExecRequest& r, const models::LlavaConfig& config) {
    if (!r.refused.empty()) return r.refused;
    if (r.input_ids.empty()) return "refused: it has no input ids";
    for (int64_t id : r.input_ids) {
      if (id < 0 || id >= config.text.vocab_size) {
        return fmt::format("refused: input id {} is outside the vocabulary [0, {})", id, config.text.vocab_size);
      }
    }
    if (r.max_new_tokens < 0) return "refused: max_new_tokens is negative";
    if (auto fits = check_context(config, r.input_ids.size(), r.max_new_tokens); !fits) {
      return "refused: " + fits.error().message;
    }
    if (auto images = check_image_tokens(config, r.input_ids, r.pixel_values.defined()); !images) {
      return "refused: " + images.error().message;
    }
    return "";
  }

  // A new DEALER socket to `endpoint` for a worker (replacing its old one and whatever was queued there): a CURVE
  // client of the worker's key, with the lease as its routing id.
  void connect(WorkerState& ws, const std::string& endpoint, const std::string& key) {
    ws.monitor.reset();
    ws.socket = zmq::socket_t(ctx_, zmq::socket_type::dealer);
    detail::configure_socket(ws.socket, limits_);
    ws.socket.set(zmq::sockopt::routing_id, lease_);
    if (!options_.transport.insecure) {
      detail::secure_client(ws.socket, options_.transport, key);
      ws.monitor = std::make_unique<detail::HandshakeMonitor>(ctx_, ws.socket, options_.transport.key.public_key);
    }
    ws.socket.connect(endpoint);
    ws.endpoint = endpoint;
  }
  void reconnect(int w, const std::string& endpoint) {
    connect(workers_[static_cast<size_t>(w)], endpoint, spec_.workers[static_cast<size_t>(w)].public_key);
  }

  [[nodiscard]] std::string who(int w) const {
    return fmt::format("worker '{}' ({})", spec_.workers[static_cast<size_t>(w)].name,
                       workers_[static_cast<size_t>(w)].endpoint);
  }
  [[nodiscard]] double seconds(Clock::time_point t) const { return std::chrono::duration<double>(t - start_).count(); }

  // --- the placement in worker terms ---

  [[nodiscard]] const std::vector<partition::Stage>& stages() const { return view_->cluster.placement.stages; }
  [[nodiscard]] int stage_worker(size_t s) const { return view_->map.worker(stages()[s].device); }
  [[nodiscard]] int text_stage() const { return std::max(0, view_->cluster.placement.text_stage(view_->policy->cost())); }
  [[nodiscard]] int text_worker() const { return stage_worker(static_cast<size_t>(text_stage())); }
  [[nodiscard]] int64_t epoch() const { return view_->cluster.placement.epoch; }

  [[nodiscard]] LinkShape link(int from, int to) const { return from == to ? LinkShape{} : env_.link(from, to); }

  [[nodiscard]] detail::WireRoutes wire_routes() const {
    return {view_->map, [this](int w) { return workers_[static_cast<size_t>(w)].endpoint; },
            [this](int w) { return spec_.workers[static_cast<size_t>(w)].public_key; },
            [this](int from, int to) { return env_.link(from, to); }};
  }
  [[nodiscard]] wire::StageEntry stage_entry(const runtime::Placement& p, size_t s) const {
    return wire_routes().entry(p, s);
  }
  std::vector<wire::StageEntry> holdings(const runtime::Placement& p, size_t w, std::set<Range>& held) const {
    return wire_routes().holdings(p, static_cast<int>(w), held);
  }

  [[nodiscard]] Message hello_for(size_t w, std::vector<wire::StageEntry> stages) const {
    wire::Hello h;
    h.fingerprint = fingerprint_;
    h.model_dir = std::filesystem::absolute(options_.model).string();
    h.device = spec_.workers[w].name;
    h.dtype = options_.dtype;
    h.exec_device = options_.exec_device;
    h.coordinator = return_endpoint_;
    h.slowdown = std::max(1.0, slowdown_[w]);
    h.schedule = std::string(partition::schedule_name(options_.schedule));
    h.max_batch = std::clamp(options_.max_batch, 1, wire::kMaxBatchMembers);
    h.epoch = epoch();
    h.return_link = link(static_cast<int>(w), text_worker());
    h.stages = std::move(stages);
    h.lease = lease_;
    for (size_t o = 0; o < spec_.workers.size(); ++o) {
      if (o != w && !spec_.workers[o].public_key.empty()) h.peer_keys.push_back(spec_.workers[o].public_key);
    }
    return wire::make_message(MsgType::hello, h);
  }

  Status handshake() {
    for (size_t w = 0; w < workers_.size(); ++w) {
      auto stages = holdings(view_->cluster.placement, w, workers_[w].holds);
      if (!detail::send_frames(workers_[w].socket, wire::encode(hello_for(w, std::move(stages))))) {
        return make_error("{}: cannot send the hello", who(static_cast<int>(w)));
      }
    }
    // Every worker must answer (ready or error) within the timeout.
    std::vector<bool> ready(workers_.size(), false);
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(options_.hello_timeout_s));
    while (std::count(ready.begin(), ready.end(), true) < static_cast<long>(ready.size())) {
      if (auto st = interrupted(); !st) return st;
      if (Clock::now() > deadline) {
        for (size_t w = 0; w < ready.size(); ++w) {
          if (!ready[w]) {
            return make_error("{} did not answer the hello within {:g} s (unreachable, or still loading)",
                              who(static_cast<int>(w)), options_.hello_timeout_s);
          }
        }
      }
      for (const auto& e : env_.poll(-1)) {  // before the first admission: exits only, no fault is injected yet
        if (e.kind == EnvEvent::Kind::worker_lost) {
          if (const int w = worker_named(e.device); w >= 0) return make_error("{} exited during the handshake", who(w));
        }
      }
      for (size_t w = 0; w < workers_.size(); ++w) {
        if (ready[w]) continue;
        if (workers_[w].monitor) {
          if (auto failed = workers_[w].monitor->failure(); !failed.empty()) {
            return make_error("{}: {}", who(static_cast<int>(w)), failed);
          }
        }
        auto m = detail::receive_message(workers_[w].socket, 20);
        if (!m) continue;
        if (m->type == MsgType::error) {
          return make_error("{} refused the hello: {}", who(static_cast<int>(w)), detail::error_text(*m));
        }
        if (m->type != MsgType::ready) {
          return make_error("{} answered the hello with a {} message", who(static_cast<int>(w)), wire::to_string(m->type));
        }
        ready[w] = true;
        workers_[w].leased = true;
        workers_[w].last_pong = Clock::now();
      }
    }
    return Ok{};
  }

  [[nodiscard]] int worker_named(const std::string& name) const {
    for (size_t w = 0; w < spec_.workers.size(); ++w) {
      if (spec_.workers[w].name == name) return static_cast<int>(w);
    }
    return -1;
  }

  // --- the run ---

  // Sends to worker w; a failed send marks it lost at once (instead of waiting for the step timeout).
  Status send_to(int w, const Message& m) {
    if (detail::send_frames(workers_[static_cast<size_t>(w)].socket, wire::encode(m))) return Ok{};
    if (!workers_[static_cast<size_t>(w)].alive) return Ok{};
    return on_lost(w, runtime::LossCause::send_failure);
  }

  Status send_step(size_t index, int seq) {
    const auto& req = requests_[index];
    auto& state = states_[index];
    wire::Step step;
    step.epoch = epoch();
    Message m;
    size_t entry = 0;
    if (seq == 0) {
      step.prefill = true;
      step.input_ids = req.input_ids;
      step.all_logits = step.want_logits = options_.keep_prefill_logits;
      if (req.pixel_values.defined()) step.kind = "pixels";
    } else {
      entry = static_cast<size_t>(text_stage());
      step.input_ids = {state.generated.back()};
    }
    step.first = stages()[entry].first_node;
    m = wire::make_message(MsgType::step, step, static_cast<int64_t>(index) + 1, seq);
    if (seq == 0 && req.pixel_values.defined()) m.tensors.push_back(detail::to_blob(req.pixel_values.to(at::kFloat)));
    state.outstanding = seq;
    return send_to(stage_worker(entry), m);
  }

  // Request `index` is done: its result is final, every stage drops its state.
  void finish(size_t index) {
    auto& state = states_[index];
    state.finished = true;
    auto& result = run_.results[index];
    result.generated = state.generated;
    result.done_s = seconds(Clock::now());
    result.latency_ms = (result.done_s - result.admitted_s) * 1e3;
    if (state.rebuilding) rebuilt_one(index);
    if (state.outstanding >= 0) {  // admitted: the stages hold its state
      Message end;
      end.type = MsgType::end;
      end.request = static_cast<int64_t>(index) + 1;
      const auto frames = wire::encode(end);
      for (auto& w : workers_) {
        if (w.alive) detail::send_frames(w.socket, frames);  // a lost one's cache is gone anyway
      }
    }
    ++done_;
    ended_order_.push_back(index);
    if (state.outstanding >= 0) --active_;
    if (options_.on_result) options_.on_result(result);
    if (options_.progress) options_.progress(done_, requests_.size());
  }

  // Request `index` fails alone with `error` (refused, failed by a worker, or a likely poison): it is not retried.
  void fail_request(size_t index, const std::string& error) {
    auto& result = run_.results[index];
    result.error = error;
    refusals_.note(fmt::format("request '{}' failed: {}", result.id, error));
    finish(index);
  }

  void record_events(const std::vector<wire::TraceEvent>& events) {
    detail::append_timings(run_.events, events, start_wall_us_);
  }

  Status on_token(const Message& m, const wire::Token& token) {
    const int64_t index = m.request - 1;
    if (index < 0 || index >= static_cast<int64_t>(requests_.size())) return Ok{};
    auto& state = states_[static_cast<size_t>(index)];
    if (state.finished || m.seq != state.outstanding) return Ok{};  // a duplicate after a failover
    record_events(token.events);
    last_progress_ = Clock::now();
    const auto& req = requests_[static_cast<size_t>(index)];
    if (m.seq == 0 && options_.keep_prefill_logits && !m.tensors.empty()) {
      auto logits = detail::from_blob(m.tensors[0]);
      if (!logits) return logits.error();
      run_.results[static_cast<size_t>(index)].prefill_logits = *logits;
    }
    if (req.max_new_tokens == 0) {
      finish(static_cast<size_t>(index));
      return Ok{};
    }
    state.generated.push_back(token.token);
    const bool eos =
        std::find(options_.eos_ids.begin(), options_.eos_ids.end(), token.token) != options_.eos_ids.end();
    if (eos || static_cast<int>(state.generated.size()) >= req.max_new_tokens) {
      finish(static_cast<size_t>(index));
      return Ok{};
    }
    return send_step(static_cast<size_t>(index), m.seq + 1);
  }

  Status admit() {
    if (view_->cluster.pending && view_->cluster.pending->stages_changed) return Ok{};  // draining to a rebalance's safe point
    while (active_ < options_.in_flight && next_ < requests_.size()) {
      const size_t i = next_++;
      if (states_[i].finished) continue;  // refused at admission
      states_[i].admitted = Clock::now();
      run_.results[i].admitted_s = seconds(states_[i].admitted);
      ++active_;
      if (auto st = send_step(i, 0); !st) return st;
    }
    return Ok{};
  }

  Status serve() {
    // Times count from the first admission (the handshake's weight loading is not part of the run).
    start_ = Clock::now();
    start_wall_us_ = detail::wall_us();
    last_progress_ = Clock::now();
    for (auto& w : workers_) w.last_pong = last_progress_;  // `ready` may have waited (other replicas loading)
    auto last_ping = Clock::now() - std::chrono::hours(1);
    const auto interval = std::chrono::duration<double>(options_.heartbeat_interval_s);
    while (done_ < requests_.size()) {
      if (env_.cancelled()) return make_error("cancelled");
      if (auto st = interrupted(); !st) return st;
      if (auto st = admit(); !st) return st;
      const auto now = Clock::now();
      auto events = std::exchange(deferred_, {});
      for (auto& e : env_.poll(seconds(now))) events.push_back(std::move(e));
      if (auto st = on_environment(events); !st) return st;
      if (now - last_ping >= interval) {
        Message ping;
        ping.type = MsgType::ping;
        const auto frames = wire::encode(ping);
        for (auto& w : workers_) detail::send_frames(w.socket, frames);  // lost ones too: they may come back
        last_ping = now;
      }
      for (int w : std::exchange(returned_, {})) {
        if (workers_[static_cast<size_t>(w)].alive) continue;
        if (auto st = on_rejoined(w, workers_[static_cast<size_t>(w)].endpoint); !st) return st;
      }
      if (view_->cluster.pending && view_->cluster.pending->stages_changed && active_ == 0) {
        if (auto st = switch_placement(); !st) return st;
      }
      for (size_t w = 0; w < workers_.size(); ++w) {
        if (workers_[w].alive &&
            std::chrono::duration<double>(now - workers_[w].last_pong).count() > options_.heartbeat_timeout_s) {
          if (auto st = on_lost(static_cast<int>(w), runtime::LossCause::heartbeat_timeout); !st) return st;
        }
      }
      if (std::chrono::duration<double>(Clock::now() - last_progress_).count() > options_.step_timeout_s) {
        return make_error("no token for {:g} s: the pipeline is stuck", options_.step_timeout_s);
      }
      if (auto st = poll_once(20); !st) return st;
    }
    return Ok{};
  }

  Status on_environment(const std::vector<EnvEvent>& events) {
    std::set<int> relinked;
    for (const auto& e : events) {
      const int w = worker_named(e.device);
      if (w < 0) continue;
      switch (e.kind) {
        case EnvEvent::Kind::fault_injected:
          fired_[e.device] = e.at_s;  // the loss (or return) that follows is the environment's doing
          break;
        case EnvEvent::Kind::worker_lost:
          if (auto st = on_lost(w, e.cause); !st) return st;
          break;
        case EnvEvent::Kind::worker_back:
          if (!workers_[static_cast<size_t>(w)].alive) {
            if (auto st = on_rejoined(w, e.endpoint); !st) return st;
          }
          break;
        case EnvEvent::Kind::links_changed:
          relinked.insert(w);
          break;
        case EnvEvent::Kind::slowdown: {
          slowdown_[static_cast<size_t>(w)] = e.factor;
          if (!workers_[static_cast<size_t>(w)].alive) break;  // its next hello carries it
          wire::Route r;
          r.slowdown = e.factor;
          if (auto st = request_ready(w, wire::make_message(MsgType::route, r)); !st) return st;
          break;
        }
      }
    }
    return relink(relinked);
  }

  // One round of receiving: tokens, rebuild ends and step errors on the return socket, pongs and errors from each
  // worker. A message that does not decode, or whose meta does not parse, is logged and dropped and changes nothing:
  // the run goes on.
  Status poll_once(int wait_ms) {
    std::vector<zmq::pollitem_t> items;
    items.push_back({ret_.handle(), 0, ZMQ_POLLIN, 0});
    for (auto& w : workers_) items.push_back({w.socket.handle(), 0, ZMQ_POLLIN, 0});
    detail::poll_items(items.data(), items.size(), wait_ms);
    if (items[0].revents & ZMQ_POLLIN) {
      while (auto frames = detail::recv_frames(ret_, false)) {
        if (frames->size() < 2) continue;
        frames->erase(frames->begin());  // ROUTER identity
        auto m = wire::decode(*frames, limits_);
        if (!m) {
          drop(m.error());
          continue;
        }
        if (auto st = on_return(*m); !st) return st;
      }
    }
    for (size_t w = 0; w < workers_.size(); ++w) {
      if (!(items[w + 1].revents & ZMQ_POLLIN)) continue;
      while (auto frames = detail::recv_frames(workers_[w].socket, false)) {
        auto m = wire::decode(*frames);
        if (!m) continue;
        if (m->type == MsgType::pong) {
          workers_[w].last_pong = Clock::now();
          if (!workers_[w].alive) returned_.insert(static_cast<int>(w));  // restarted at its endpoint
        } else if (m->type == MsgType::error) {
          return make_error("{} reported an error: {}", who(static_cast<int>(w)), detail::error_text(*m));
        }
      }
    }
    return Ok{};
  }

  // A message on the return port that does not decode or parse: logged (rate-limited) and dropped, never answered
  // (the sender gets nothing to probe with) and nothing changes.
  void drop(const Error& e) { refusals_.log(fmt::format("a message on its return port: {}", e.message)); }

  Status on_return(const Message& m) {
    switch (m.type) {
      case MsgType::token: {
        auto token = wire::parse_token(m);
        if (!token) {
          drop(token.error());
          return Ok{};
        }
        return on_token(m, *token);
      }
      case MsgType::error: {
        auto e = wire::parse_error(m);
        if (!e) {
          drop(e.error());
          return Ok{};
        }
        if (!e->unreachable.empty()) {  // a worker could not send to this endpoint: its worker is lost
          for (size_t w = 0; w < workers_.size(); ++w) {
            if (workers_[w].alive && workers_[w].endpoint == e->unreachable) {
              return on_lost(static_cast<int>(w), runtime::LossCause::send_failure);
            }
          }
          return Ok{};
        }
        if (m.request > 0 && m.request <= static_cast<int64_t>(requests_.size())) {
          const auto index = static_cast<size_t>(m.request - 1);  // a worker refused or failed one of its steps
          if (!states_[index].finished && states_[index].outstanding >= 0) fail_request(index, e->message);
          return Ok{};
        }
        refusals_.note(fmt::format("a worker reported: {}", e->message));
        return Ok{};
      }
      case MsgType::ready: {  // a rebuild finished
        auto ready = wire::parse_ready(m);
        if (!ready) {
          drop(ready.error());
          return Ok{};
        }
        on_rebuilt(m.request, *ready);
        return Ok{};
      }
      default:
        drop(make_error("unexpected {} message on the coordinator's return socket", wire::to_string(m.type)));
        return Ok{};
    }
  }

  // --- routes ---

  // Sends a route to worker w and waits for its ready (loading a redeployed stage included).
  Status route(int w, std::vector<wire::StageEntry> stages, double load_delay_ms) {
    wire::Route r;
    r.stages = std::move(stages);
    r.load_delay_ms = env_.emulates_loads() ? load_delay_ms : 0;
    r.epoch = epoch();
    return request_ready(w, wire::make_message(MsgType::route, r));
  }

  // Emulated links changed for these workers' devices (a testbed link fault; Environment::link gives the new
  // shapes): every live worker that sends over one of their links (its own, into them, or the return to the text
  // stage's worker) gets its active stages' entries and its return link again.
  Status relink(const std::set<int>& changed) {
    if (changed.empty()) return Ok{};
    for (size_t w = 0; w < workers_.size(); ++w) {
      if (!workers_[w].alive) continue;
      bool touched = changed.count(static_cast<int>(w)) > 0 || changed.count(text_worker()) > 0;
      wire::Route r;
      r.stages.emplace();
      for (size_t s = 0; s < stages().size(); ++s) {
        if (stage_worker(s) != static_cast<int>(w)) continue;
        r.stages->push_back(stage_entry(view_->cluster.placement, s));
        touched = touched || (s + 1 < stages().size() && changed.count(stage_worker(s + 1)) > 0);
      }
      if (!touched) continue;
      r.epoch = epoch();
      r.return_link = link(static_cast<int>(w), text_worker());
      if (auto st = request_ready(static_cast<int>(w), wire::make_message(MsgType::route, r)); !st) return st;
    }
    return Ok{};
  }

  // Sends `m` to worker w and waits for its ready; the heartbeat clocks restart afterwards (no pings were sent).
  Status request_ready(int w, const Message& m) {
    auto& ws = workers_[static_cast<size_t>(w)];
    if (!detail::send_frames(ws.socket, wire::encode(m))) return make_error("{}: cannot send to it", who(w));
    auto st = wait_ready(w);
    for (auto& other : workers_) other.last_pong = Clock::now();
    return st;
  }

  Status wait_ready(int w) {
    auto& ws = workers_[static_cast<size_t>(w)];
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(options_.hello_timeout_s));
    while (Clock::now() < deadline) {
      auto m = detail::receive_message(ws.socket, 50);
      if (!m) {
        for (const auto& e : env_.poll(seconds(Clock::now()))) {
          if (e.kind == EnvEvent::Kind::worker_lost && worker_named(e.device) == w) {
            return make_error("{} was lost while taking over a stage", who(w));
          }
          deferred_.push_back(e);  // handled by the loop once this recovery is in place
        }
        continue;
      }
      if (m->type == MsgType::ready) return Ok{};
      if (m->type == MsgType::error) return make_error("{} could not take over: {}", who(w), detail::error_text(*m));
      // pongs and the like: keep waiting
    }
    return make_error("{} did not confirm the new route within {:g} s", who(w), options_.hello_timeout_s);
  }

  // --- failover ---

  // Whether the environment injected the fault of worker w being handled now (fault_record uses the injection up).
  [[nodiscard]] bool injected_fault(int w) const { return fired_.count(spec_.workers[static_cast<size_t>(w)].name) > 0; }

  // A fault of worker w seen now. It happened when the environment injected it (that injection is used up), or, for
  // a loss found by the heartbeat timeout, when the worker last answered: the time it went silent.
  [[nodiscard]] runtime::FaultRecord fault_record(int w, partition::FaultKind kind, bool injected,
                                                  std::optional<Clock::time_point> silent_since = std::nullopt) {
    runtime::FaultRecord rec;
    rec.device = spec_.workers[static_cast<size_t>(w)].name;
    rec.kind = kind;
    rec.at_s = seconds(silent_since.value_or(Clock::now()));
    if (auto it = fired_.find(rec.device); it != fired_.end()) {
      if (injected) rec.at_s = it->second;
      fired_.erase(it);
    }
    rec.detected_s = seconds(Clock::now());
    return rec;
  }

  static void recovered_now(runtime::FaultRecord& rec, double now_s) {
    rec.recovered_s = now_s;
    rec.recovery_ms = (now_s - rec.at_s) * 1e3;
  }

  Status on_lost(int w, runtime::LossCause cause) {
    auto& ws = workers_[static_cast<size_t>(w)];
    if (!ws.alive) return Ok{};
    ws.alive = false;
    const bool injected = injected_fault(w);
    // A fresh socket to the same endpoint: what was queued for the lost process is dropped, and only pings go
    // there from now on (a pong means the worker is back).
    reconnect(w, ws.endpoint);
    ws.holds.clear();
    auto rec = fault_record(w, partition::FaultKind::dropout, injected,
                            cause == runtime::LossCause::heartbeat_timeout ? std::optional(ws.last_pong) : std::nullopt);
    rec.cause = cause;
    const int device = view_->map.device(w);
    const bool held_stage = !view_->cluster.placement.stages_on(device).empty();
    if (held_stage && !options_.recover) {
      return make_error("{} was lost ({})", who(w),
                        cause == runtime::LossCause::heartbeat_timeout
                            ? fmt::format("no heartbeat for {:g} s", options_.heartbeat_timeout_s)
                            : std::string(runtime::to_string(cause)));
    }
    auto plan = view_->policy->on_dropout(view_->cluster, device);
    if (!plan) return make_error("{} was lost and cannot be replaced: {}", who(w), plan.error().message);
    runtime::describe(*plan, *view_->scenario, rec);
    if (view_->cluster.pending) {  // this dropout cancels the pending rebalance: planned again once it is recovered
      cancelled_faults_.insert(cancelled_faults_.end(), pending_faults_.begin(), pending_faults_.end());
      pending_faults_.clear();
    }
    runtime::apply(view_->cluster, *plan);
    if (plan->action == RecoveryAction::none) {  // a standby or idle worker: nothing to recover
      recovered_now(rec, *rec.detected_s);
      run_.faults.push_back(rec);
      return plan->rebalance_after ? plan_rebalance_again() : Status(Ok{});
    }
    // Steps of the old placement still on their way are dropped by the workers told the new epoch (the requests in
    // flight are re-issued below). A lost worker that was only hung (SIGSTOP, a partition) and comes back may still
    // send or hold such steps: its hello carries the new epoch, so it drops them too.
    if (!injected) give_up_poison(w);
    if (plan->action == RecoveryAction::replan) {
      if (auto st = preload(plan->placement, plan->load_ms); !st) return st;
      if (auto st = apply_placement(plan->placement); !st) return st;
      if (auto st = rebuild_in_flight(std::move(rec), /*full=*/true); !st) return st;
      return Ok{};
    }
    if (auto st = route_moves(*plan); !st) return st;
    if (auto st = rebuild_in_flight(std::move(rec), /*full=*/false); !st) return st;
    return plan->rebalance_after ? plan_rebalance_again() : Status(Ok{});
  }

  // Worker w, holding a stage, was lost by no doing of the environment (it crashed, hung, or its connection went):
  // every request in flight may be why. One in flight at `poison_losses` such losses fails instead of being replayed
  // onto the next worker, so that a request that crashes workers takes down at most that many.
  void give_up_poison(int w) {
    for (size_t i = 0; i < requests_.size(); ++i) {
      auto& state = states_[i];
      if (state.finished || state.outstanding < 0) continue;
      if (++state.losses < options_.poison_losses) continue;
      fail_request(i, fmt::format("it was in flight at {} worker losses (the last: {}) and is not replayed again: it "
                                  "may be what makes the workers fail",
                                  state.losses, who(w)));
    }
  }

  // Moves: the new holders (loading if needed) first, so that a step their upstream neighbours send once re-routed
  // never finds the stage inactive; then those neighbours.
  Status route_moves(runtime::RecoveryPlan& plan) {
    std::vector<size_t> order;
    for (const auto& m : plan.moves) order.push_back(static_cast<size_t>(m.stage));
    for (const auto& m : plan.moves) {
      const auto up = static_cast<size_t>(m.stage);
      if (up > 0 && std::find(order.begin(), order.end(), up - 1) == order.end()) order.push_back(up - 1);
    }
    for (size_t s : order) {
      const int holder = stage_worker(s);
      const auto& st = stages()[s];
      workers_[static_cast<size_t>(holder)].holds.insert({st.first_node, st.last_node});
      const bool moved = std::any_of(plan.moves.begin(), plan.moves.end(),
                                     [s](const auto& m) { return static_cast<size_t>(m.stage) == s; });
      const double delay = moved ? std::exchange(plan.load_ms[static_cast<size_t>(st.device)], 0.0) : 0.0;
      if (auto r = route(holder, {stage_entry(view_->cluster.placement, s)}, delay); !r) return r;
    }
    return Ok{};
  }

  // Requests in flight: rebuild the replacements' state from the upstream logs (`full`: through every stage
  // that has none), then re-issue their pending step. The fault is recovered when the last rebuild is done.
  Status rebuild_in_flight(runtime::FaultRecord rec, bool full) {
    pending_rebuilds_ = 0;
    rebuild_fault_ = run_.faults.size();
    run_.faults.push_back(std::move(rec));
    for (size_t i = 0; i < requests_.size(); ++i) {
      const auto& state = states_[i];
      if (state.finished || state.outstanding < 0) continue;
      if (state.outstanding > 0) {
        if (auto st = send_rebuild(i, full); !st) return st;
        states_[i].rebuilding = true;
        ++pending_rebuilds_;
      }
      if (auto st = send_step(i, state.outstanding); !st) return st;
    }
    if (pending_rebuilds_ == 0) recovered_now(run_.faults[rebuild_fault_], seconds(Clock::now()));
    last_progress_ = Clock::now();
    return Ok{};
  }

  void on_rebuilt(int64_t request, const wire::Ready& ready) {
    record_events(ready.events);
    if (rebuild_fault_ >= run_.faults.size()) return;
    run_.faults[rebuild_fault_].recomputed_tokens += ready.rebuilt_positions.value_or(0);
    if (request > 0 && request <= static_cast<int64_t>(requests_.size()) &&
        states_[static_cast<size_t>(request - 1)].rebuilding) {
      rebuilt_one(static_cast<size_t>(request - 1));
    }
  }
  // Request `index`'s rebuild is over (done, or the request finished or failed): the fault is recovered with the last.
  void rebuilt_one(size_t index) {
    states_[index].rebuilding = false;
    if (pending_rebuilds_ > 0 && --pending_rebuilds_ == 0 && rebuild_fault_ < run_.faults.size()) {
      recovered_now(run_.faults[rebuild_fault_], seconds(Clock::now()));
    }
  }

  // --- rejoin and rebalance ---

  Status on_rejoined(int w, const std::string& endpoint) {
    auto& ws = workers_[static_cast<size_t>(w)];
    const bool injected = injected_fault(w);
    reconnect(w, endpoint);
    ws.holds.clear();
    auto rec = fault_record(w, partition::FaultKind::rejoin, injected);
    if (auto st = request_ready(w, hello_for(static_cast<size_t>(w), {})); !st) return st;
    ws.alive = true;
    ws.leased = true;
    rec.detected_s = seconds(Clock::now());
    auto plan = view_->policy->on_rejoin(view_->cluster, view_->map.device(w));
    runtime::describe(plan, *view_->scenario, rec);
    runtime::apply(view_->cluster, plan);
    run_.faults.push_back(rec);
    if (plan.action != RecoveryAction::rebalance) {  // no plan fits, or nothing changes: it is a spare
      recovered_now(run_.faults.back(), *rec.detected_s);
      return Ok{};
    }
    pending_faults_.push_back(run_.faults.size() - 1);  // a rebalance still pending is taken over by this one
    return start_rebalance(plan);
  }

  // After a dropout that cancelled a rebalance: the policy plans one again on the workers up.
  Status plan_rebalance_again() {
    auto plan = view_->policy->rebalance(view_->cluster);
    runtime::apply(view_->cluster, plan);
    pending_faults_ = std::exchange(cancelled_faults_, {});
    if (plan.action != RecoveryAction::rebalance) {  // the devices up keep the running placement
      for (size_t f : std::exchange(pending_faults_, {})) recovered_now(run_.faults[f], seconds(Clock::now()));
      return Ok{};
    }
    return start_rebalance(plan);
  }

  // A rebalance: preload what each worker lacks while the old placement serves; when only backups change it is in
  // place at once, otherwise the switch waits for the safe point (no request in flight).
  Status start_rebalance(const runtime::RecoveryPlan& plan) {
    if (auto st = preload(plan.placement, plan.load_ms); !st) return st;
    if (!plan.stages_changed) return switch_placement();
    return Ok{};
  }

  // Every live worker loads the node ranges of `placement` it lacks (inactive), with the emulated transfer.
  Status preload(const runtime::Placement& placement, const std::vector<double>& load_ms) {
    for (size_t c = 0; c < workers_.size(); ++c) {
      if (!workers_[c].alive) continue;
      std::set<Range> wanted;
      std::vector<wire::StageEntry> load;
      for (const auto& e : holdings(placement, c, wanted)) {
        if (workers_[c].holds.count({e.first, e.last})) continue;
        load.push_back(preloaded(e.first, e.last));
        workers_[c].holds.insert({e.first, e.last});
      }
      const double delay = load_ms[static_cast<size_t>(view_->map.device(static_cast<int>(c)))];
      if (auto st = route(static_cast<int>(c), std::move(load), delay); !st) return st;  // hands out the epoch too
    }
    return Ok{};
  }

  // Every live worker switches to `placement` (preloaded): its stages active, its backups held, the rest dropped.
  Status apply_placement(const runtime::Placement& placement) {
    for (size_t c = 0; c < workers_.size(); ++c) {
      if (!workers_[c].alive) continue;
      std::set<Range> keep;
      auto list = holdings(placement, c, keep);
      for (const auto& range : workers_[c].holds) {
        if (!keep.count(range)) {
          auto drop = preloaded(range.first, range.second);
          drop.drop = true;
          list.push_back(drop);
        }
      }
      workers_[c].holds = keep;
      if (auto st = route(static_cast<int>(c), std::move(list), 0); !st) return st;
    }
    return Ok{};
  }

  // The safe point of the pending rebalance: every worker switches to its placement.
  Status switch_placement() {
    runtime::commit_rebalance(view_->cluster);
    if (auto st = apply_placement(view_->cluster.placement); !st) return st;
    for (size_t f : std::exchange(pending_faults_, {})) recovered_now(run_.faults[f], seconds(Clock::now()));
    last_progress_ = Clock::now();
    return Ok{};
  }

  // A rebuild of request `index`'s steps 0..k-1 (k = its outstanding step), entering at the first stage.
  Status send_rebuild(size_t index, bool full) {
    const auto& req = requests_[index];
    const auto& state = states_[index];
    const int k = state.outstanding;
    wire::Step step;
    step.first = stages()[0].first_node;
    step.epoch = epoch();
    step.prefill = true;
    step.rebuild = true;
    step.steps = k;
    step.full = full;
    step.input_ids = req.input_ids;
    step.input_ids.insert(step.input_ids.end(), state.generated.begin(), state.generated.begin() + (k - 1));
    if (req.pixel_values.defined()) step.kind = "pixels";
    Message m = wire::make_message(MsgType::step, step, static_cast<int64_t>(index) + 1, k);
    if (req.pixel_values.defined()) m.tensors.push_back(detail::to_blob(req.pixel_values.to(at::kFloat)));
    return send_to(stage_worker(0), m);
  }

  const PipelineSpec& spec_;
  const std::vector<ExecRequest>& requests_;
  const CoordinatorOptions& options_;
  Environment no_environment_;
  Environment& env_;
  zmq::context_t ctx_;
  detail::RefusalLog refusals_{"coordinator"};
  std::unique_ptr<detail::Authenticator> auth_;  // CURVE: only the workers' keys reach ret_
  zmq::socket_t ret_;
  std::string lease_;
  std::vector<double> slowdown_;  // per worker: its emulated slowdown now (testbed slowdown faults)
  std::string return_endpoint_;
  std::string fingerprint_;
  wire::Limits limits_;  // the model's (prepare)
  std::vector<WorkerState> workers_;
  std::optional<detail::RecoveryView> view_;  // the policy's view of the cluster in scenario devices; which device each worker is
  std::vector<size_t> pending_faults_;    // the rejoins (faults[] entries) the pending rebalance completes
  std::vector<size_t> cancelled_faults_;  // those of a rebalance a dropout cancelled
  std::map<std::string, double> fired_;   // device -> when its fault not handled yet was injected (Environment)
  std::vector<EnvEvent> deferred_;        // environment events seen while waiting for a route's ready
  std::set<int> returned_;  // lost workers that answered a ping again
  std::vector<RequestState> states_;
  std::vector<size_t> ended_order_;  // requests in the order they completed or failed
  size_t next_ = 0;
  size_t done_ = 0;
  int active_ = 0;
  int pending_rebuilds_ = 0;
  size_t rebuild_fault_ = 0;  // the faults[] entry whose rebuilds are running
  Clock::time_point start_;
  int64_t start_wall_us_ = 0;
  Clock::time_point last_progress_;
  ExecRun run_;
};

}  // namespace

Expected<ExecRun> run_pipeline(const PipelineSpec& spec, const std::vector<ExecRequest>& requests,
                               const CoordinatorOptions& options) {
  Coordinator c(spec, requests, options);
  return c.run();
}

}  // namespace adaptlink::exec

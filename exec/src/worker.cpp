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
#include <thread>
#include <zmq.hpp>

#include "adaptlink/exec/model.hpp"
#include "runtime.hpp"

namespace adaptlink::exec {

namespace {

using Clock = std::chrono::steady_clock;
using partition::Schedule;
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

struct LinkEmulation {
  double latency_ms = 0;
  double ms_per_byte = 0;
  [[nodiscard]] bool active() const { return latency_ms > 0 || ms_per_byte > 0; }
};

LinkEmulation parse_link(const nlohmann::json& j) {
  LinkEmulation l;
  if (j.is_object()) {
    l.latency_ms = std::max(0.0, j.value("latency_ms", 0.0));
    l.ms_per_byte = std::max(0.0, j.value("ms_per_byte", 0.0));
  }
  return l;
}

struct Slot {
  std::unique_ptr<Stage> stage;
  bool active = false;
  std::string next;  // endpoint of the next stage's worker; "" when this stage ends with the head
  LinkEmulation link;
};

// What one stage produced for one request, step by step.
struct Logged {
  Activation out;       // none for steps the stage passes over (decode steps of vision nodes)
  int64_t token = -1;   // the stage with the head: the sampled token
};
struct RequestLog {
  int last_seq = -1;
  std::map<int, Logged> steps;
  std::map<int, Message> parked;  // steps that arrived before their predecessor
};

// A step on its way through a stage's nodes: what ran so far produced `act`, `next` runs next.
struct Running {
  Message m;
  StepInput step;
  Activation act;
  int next = 0;
};

// A prefill that let decode steps (or rebuilds) go first between two of its nodes (decode-first); it goes on in
// the same Stage object (its KV cache holds the prefill's first layers).
struct ParkedPrefill {
  const Stage* stage = nullptr;
  Running run;
};

struct Outgoing {
  Clock::time_point deliver;
  uint64_t order = 0;  // FIFO among equal delivery times
  std::string endpoint;
  std::vector<std::string> frames;
  bool operator>(const Outgoing& o) const { return deliver != o.deliver ? deliver > o.deliver : order > o.order; }
};

class Worker {
 public:
  explicit Worker(WorkerOptions options) : options_(std::move(options)), in_(ctx_, zmq::socket_type::router) {
    detail::configure_socket(in_);
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

  void serve(const std::atomic<bool>* stop) {
    std::thread compute([this] { compute_loop(); });
    std::thread sender([this] { send_loop(); });
    while (!stopping_) {
      if (stop != nullptr && stop->load()) break;
      zmq::pollitem_t item{in_.handle(), 0, ZMQ_POLLIN, 0};
      detail::poll_items(&item, 1, 100);
      if ((item.revents & ZMQ_POLLIN) == 0) continue;
      auto frames = detail::recv_frames(in_, false);
      if (!frames || frames->empty()) continue;
      const std::string identity = frames->front();
      frames->erase(frames->begin());
      receive(identity, *frames);
    }
    stopping_ = true;
    work_cv_.notify_all();
    out_cv_.notify_all();
    compute.join();
    sender.join();
  }

 private:
  void reply(const std::string& identity, const Message& m) { detail::send_frames(in_, wire::encode(m), &identity); }

  void receive(const std::string& identity, const std::vector<std::string>& frames) {
    auto m = wire::decode(frames, options_.limits);
    if (!m) {
      reply(identity, wire::error_message(fmt::format("rejected message: {}", m.error().message)));
      return;
    }
    switch (m->type) {
      case MsgType::ping: {
        Message pong;
        pong.type = MsgType::pong;
        pong.seq = m->seq;
        reply(identity, pong);
        return;
      }
      case MsgType::hello:
        reply(identity, hello(*m));
        return;
      case MsgType::route:
        reply(identity, route(*m));
        return;
      case MsgType::step:
      case MsgType::end: {
        std::lock_guard lock(work_mu_);
        work_.push_back(std::move(m).value());
        work_cv_.notify_one();
        return;
      }
      case MsgType::shutdown:
        stopping_ = true;
        return;
      default:
        reply(identity, wire::error_message(fmt::format("unexpected {} message", wire::to_string(m->type))));
        return;
    }
  }

  // --- handshake and routing (receiver thread, under state_mu_) ---

  Expected<const Checkpoint*> checkpoint_for(const nlohmann::json& meta) {
    std::filesystem::path dir = options_.model;
    if (dir.empty() && !meta.contains("model_dir") && checkpoint_) return checkpoint_.get();  // a route
    if (dir.empty()) {
      if (!meta.contains("model_dir") || !meta["model_dir"].is_string()) {
        return make_error("this worker has no --model and the hello names no model_dir");
      }
      dir = meta["model_dir"].get<std::string>();
    }
    if (!checkpoint_ || checkpoint_->dir() != dir) {
      auto c = Checkpoint::open(dir);
      if (!c) return c.error();
      checkpoint_ = std::make_unique<Checkpoint>(std::move(c).value());
      fingerprint_ = model_fingerprint(*checkpoint_);
    }
    return checkpoint_.get();
  }

  // Loads or re-targets the stages listed in meta["stages"]; `reset` drops everything else first.
  Expected<nlohmann::json> apply_stages(const nlohmann::json& meta, bool reset) {
    if (!meta.contains("stages") || !meta["stages"].is_array()) return make_error("missing \"stages\" array");
    auto ck = checkpoint_for(meta);
    if (!ck) return ck.error();
    const auto start = Clock::now();
    std::lock_guard lock(state_mu_);
    if (reset) {
      slots_.clear();
      logs_.clear();
    }
    double weight_bytes = 0;
    for (const auto& s : meta["stages"]) {
      if (!s.is_object() || !s.contains("first") || !s.contains("last") || !s["first"].is_number_integer() ||
          !s["last"].is_number_integer()) {
        return make_error("each stage needs integer \"first\" and \"last\"");
      }
      const int first = s["first"].get<int>();
      const int last = s["last"].get<int>();
      if (s.value("drop", false)) {
        slots_.erase({first, last});
        for (auto it = logs_.begin(); it != logs_.end();) it = it->first.first == first ? logs_.erase(it) : std::next(it);
        continue;
      }
      if (first < 0 || last < first || last >= graph_->size()) {
        return make_error("stage [{}, {}] is outside the model's nodes 0..{}", first, last, graph_->size() - 1);
      }
      auto& slot = slots_[{first, last}];
      if (!slot.stage) {
        auto stage = Stage::load(**ck, *graph_, first, last, exec_options_);
        if (!stage) {
          slots_.erase({first, last});
          return stage.error();
        }
        slot.stage = std::move(stage).value();
      }
      slot.active = s.value("active", false);
      slot.next = s.value("next", std::string());
      slot.link = parse_link(s.value("link", nlohmann::json()));
      weight_bytes += static_cast<double>(slot.stage->weight_bytes());
    }
    const double load_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    // Emulated weight transfer (redeploy over the link in the testbed): the load takes at least this long.
    const double emulated_ms = meta.value("load_delay_ms", 0.0);
    if (emulated_ms > load_ms) {
      std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(emulated_ms - load_ms));
    }
    return nlohmann::json{{"weight_bytes", weight_bytes},
                          {"load_ms", std::chrono::duration<double, std::milli>(Clock::now() - start).count()}};
  }

  Message hello(const Message& m) {
    const auto& meta = m.meta;
    const int protocol = meta.value("protocol", -1);
    if (protocol != wire::kProtocolVersion) {
      return wire::error_message(
          fmt::format("protocol version {} is not supported (this worker speaks {})", protocol, wire::kProtocolVersion));
    }
    auto ck = checkpoint_for(meta);
    if (!ck) return wire::error_message(ck.error().to_string());
    const std::string want = meta.value("fingerprint", std::string());
    if (want != fingerprint_) {
      return wire::error_message(fmt::format("model fingerprint mismatch: the coordinator has {}, this worker's {} has {}",
                                             want.empty() ? "none" : want, (*ck)->dir().string(), fingerprint_));
    }
    auto opts = parse_exec_options(meta.value("dtype", std::string("fp32")), meta.value("exec_device", std::string("cpu")));
    if (!opts) return wire::error_message(opts.error().to_string());
    auto schedule = detail::parse_schedule(
        meta.value("schedule", std::string(partition::schedule_name(Schedule::decode_first))));
    if (!schedule) return wire::error_message(schedule.error().to_string());
    {
      std::lock_guard lock(state_mu_);
      exec_options_ = *opts;
      graph_ = std::make_unique<models::LayerGraph>(models::LayerGraph::build(
          (*ck)->config(), opts->dtype == at::kFloat ? models::Dtype::fp32 : models::Dtype::bf16));
      device_ = meta.value("device", std::string("worker"));
      coordinator_ = meta.value("coordinator", std::string());
      slowdown_ = std::max(1.0, meta.value("slowdown", 1.0));
      epoch_ = meta.value("epoch", int64_t{0});
      return_link_ = parse_link(meta.value("return_link", nlohmann::json()));
    }
    {
      std::scoped_lock lock(state_mu_, work_mu_);
      work_.clear();
      parked_.reset();
      schedule_ = *schedule;
    }
    {
      // A new session (also a worker taken back after it hung, e.g. SIGSTOP then SIGCONT): nothing it produced
      // before is sent any more.
      std::lock_guard lock(out_mu_);
      out_ = {};
      link_free_.clear();
    }
    auto loaded = apply_stages(meta, /*reset=*/true);
    if (!loaded) return wire::error_message(loaded.error().to_string());
    Message ready;
    ready.type = MsgType::ready;
    ready.meta = *loaded;
    ready.meta["fingerprint"] = fingerprint_;
    return ready;
  }

  // New routes or preloads ("stages"; a stage's "link" also changes its emulated link: a testbed link fault), a new
  // emulated slowdown ("slowdown": a testbed slowdown fault) and/or a new emulated return link ("return_link").
  Message route(const Message& m) {
    if (!graph_) return wire::error_message("route before hello");
    Message ready;
    ready.type = MsgType::ready;
    if (m.meta.contains("epoch") && m.meta["epoch"].is_number_integer()) {
      std::lock_guard lock(state_mu_);
      epoch_ = std::max(epoch_, m.meta["epoch"].get<int64_t>());
    }
    if (m.meta.contains("slowdown")) {
      if (!m.meta["slowdown"].is_number() || m.meta["slowdown"].get<double>() < 1.0) {
        return wire::error_message("slowdown must be a number >= 1");
      }
      std::lock_guard lock(state_mu_);
      slowdown_ = m.meta["slowdown"].get<double>();
    }
    if (m.meta.contains("return_link")) {
      std::lock_guard lock(state_mu_);
      return_link_ = parse_link(m.meta["return_link"]);
    }
    if (!m.meta.contains("stages") && (m.meta.contains("slowdown") || m.meta.contains("return_link"))) return ready;
    auto loaded = apply_stages(m.meta, /*reset=*/false);
    if (!loaded) return wire::error_message(loaded.error().to_string());
    ready.meta = *loaded;
    return ready;
  }

  // --- compute thread ---

  void compute_loop() {
    c10::AutoGradMode no_grad(false);
    if (options_.threads > 0) at::set_num_threads(options_.threads);
    while (true) {
      std::optional<Message> m;
      {
        std::unique_lock lock(work_mu_);
        work_cv_.wait_for(lock, std::chrono::milliseconds(100),
                          [this] { return stopping_ || !work_.empty() || parked_.has_value(); });
        if (stopping_) return;
        const auto next = detail::next_message(work_, schedule_, parked_.has_value());
        if (next) {
          m = std::move(work_[*next]);
          work_.erase(work_.begin() + static_cast<std::ptrdiff_t>(*next));
        } else if (!parked_) {
          continue;
        }
      }
      std::lock_guard lock(state_mu_);
      if (!m) {
        resume_prefill();
      } else if (m->type == MsgType::end) {
        end_request(m->request);
      } else {
        handle_step(std::move(*m));
      }
    }
  }

  // Under decode-first, whether a parked prefill would now wait for a decode step or a rebuild (the compute thread's
  // choice).
  bool prefill_must_yield() {
    std::lock_guard lock(work_mu_);
    return detail::next_message(work_, schedule_, /*prefill_parked=*/true).has_value();
  }

  void end_request(int64_t request) {
    for (auto& [range, slot] : slots_) slot.stage->drop_request(request);
    for (auto it = logs_.begin(); it != logs_.end();) {
      it = it->first.second == request ? logs_.erase(it) : std::next(it);
    }
  }

  void to_coordinator(Message m, const LinkEmulation& link = {}) { enqueue(coordinator_, wire::encode(m), link); }

  void fail_step(const Message& m, const std::string& text) {
    to_coordinator(wire::error_message(fmt::format("{}: {}", device_, text), m.request, m.seq));
  }

  void handle_step(Message m) {
    if (!m.meta.contains("first") || !m.meta["first"].is_number_integer()) {
      return fail_step(m, "step without an integer \"first\" node");
    }
    if (m.meta.value("epoch", int64_t{0}) < epoch_) return;  // sent before a re-plan: re-issued since
    const int first = m.meta["first"].get<int>();
    Slot* found = active_slot(first);
    if (found == nullptr) return fail_step(m, fmt::format("no active stage starting at node {} on this worker", first));
    Slot& slot = *found;
    RequestLog& log = logs_[{first, m.request}];
    if (m.meta.value("rebuild", false)) {
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
      Message next = std::move(log.parked.begin()->second);
      log.parked.erase(log.parked.begin());
      if (next.meta.value("epoch", int64_t{0}) < epoch_) continue;  // stale
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
  Expected<Parsed> parse_step(const Message& m) {
    Parsed p;
    p.step.request = m.request;
    p.step.prefill = m.meta.value("prefill", false);
    p.step.all_logits = m.meta.value("all_logits", false);
    std::vector<int64_t> ids;
    if (!m.meta.contains("input_ids") || !m.meta["input_ids"].is_array()) return make_error("step without input_ids");
    for (const auto& id : m.meta["input_ids"]) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0) return make_error("input_ids must be non-negative integers");
      ids.push_back(id.get<int64_t>());
    }
    if (ids.empty()) return make_error("step with no input_ids");
    p.step.input_ids = at::tensor(ids, at::TensorOptions().dtype(at::kLong));
    auto kind = detail::parse_activation_kind(m.meta.value("kind", std::string("none")));
    if (!kind) return kind.error();
    p.input.kind = *kind;
    if (*kind == ActivationKind::none) {
      if (!m.tensors.empty()) return make_error("activation kind none with a tensor");
    } else {
      if (m.tensors.size() != 1) return make_error("activation {} needs exactly one tensor", to_string(*kind));
      auto t = detail::from_blob(m.tensors[0]);
      if (!t) return t.error();
      if (!at::isFloatingType(t->scalar_type())) return make_error("activation tensor must be floating point");
      p.input.tensor = *t;
    }
    return p;
  }

  // Runs the stage on a step, logs the result and passes it on.
  void compute(Slot& slot, RequestLog& log, Message m) {
    auto parsed = parse_step(m);
    if (!parsed) return fail_step(m, parsed.error().message);
    const int first = slot.stage->first();
    proceed(slot, log, Running{std::move(m), parsed->step, std::move(parsed->input), first});
  }

  // Runs the step's remaining nodes. Under decode-first a prefill runs them one at a time and, when a decode step or
  // a rebuild waits after one, parks (parked_: at most one) so that those go first; the compute loop resumes it.
  // Each contiguous run of nodes is one trace event; the result is logged and passed on once the last node ran.
  void proceed(Slot& slot, RequestLog& log, Running r) {
    const int last = slot.stage->last();
    const int from = r.next;
    const bool yields = r.step.prefill && schedule_ == Schedule::decode_first && !parked_;
    const int64_t started_us = detail::wall_us();
    while (r.next <= last) {
      const int to = yields ? r.next : last;
      const auto start = Clock::now();
      auto out = slot.stage->forward(r.step, r.act, r.next, to);
      if (!out) return fail_step(r.m, out.error().message);
      emulate_compute(start);  // per node: a decode step that arrives waits for the current (emulated) node only
      r.act = std::move(out).value();
      r.next = to + 1;
      if (yields && r.next <= last && prefill_must_yield()) break;
    }
    add_event(r.m.meta, r.step.prefill ? "prefill" : "decode", from, r.next - 1, started_us, detail::wall_us(),
              r.m.request);
    if (r.next <= last) {
      parked_ = ParkedPrefill{slot.stage.get(), std::move(r)};
      return;
    }
    log_and_pass_on(slot, log, r.m, r.act);
  }

  void resume_prefill() {
    if (!parked_) return;  // a hello dropped it
    ParkedPrefill p = std::move(*parked_);
    parked_.reset();
    Message& m = p.run.m;
    if (m.meta.value("epoch", int64_t{0}) < epoch_) return;  // a re-plan since: re-issued
    const int first = m.meta["first"].get<int>();
    Slot* slot = active_slot(first);
    if (slot == nullptr || slot->stage.get() != p.stage) {
      return fail_step(m, fmt::format("the stage starting at node {} was replaced during a prefill", first));
    }
    RequestLog& log = logs_[{first, m.request}];
    proceed(*slot, log, std::move(p.run));
    run_parked_steps(*slot, log);
  }

  void log_and_pass_on(const Slot& slot, RequestLog& log, const Message& m, const Activation& out) {
    log.last_seq = m.seq;
    Logged& entry = log.steps[m.seq];
    if (out.kind == ActivationKind::logits) {
      const at::Tensor& logits = out.tensor;  // [1, tokens or 1, vocab]
      entry.token = logits[0][logits.size(1) - 1].argmax().item<int64_t>();
      send_token(m, entry.token, m.meta.value("want_logits", false) ? logits[0].to(at::kFloat) : at::Tensor());
      return;
    }
    entry.out = out;
    forward(slot, m, out, false);
  }

  // Emulated slowdown: the step takes `slowdown_` times its measured time; the extra is idle waiting.
  void emulate_compute(Clock::time_point start) {
    if (slowdown_ <= 1.0) return;
    const auto measured = Clock::now() - start;
    std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(measured * slowdown_));
  }

  // A trace event "what [first, last]" for nodes first..last of this worker's run of a step.
  void add_event(nlohmann::json& meta, std::string_view what, int first, int last, int64_t start_us, int64_t end_us,
                 int64_t request) {
    if (!meta.contains("events") || !meta["events"].is_array()) meta["events"] = nlohmann::json::array();
    meta["events"].push_back({{"device", device_},
                              {"name", fmt::format("{} [{}, {}]", what, first, last)},
                              {"request", request},
                              {"ts_us", start_us},
                              {"dur_us", end_us - start_us}});
  }

  void forward(const Slot& slot, const Message& in, const Activation& out, bool rebuild) {
    if (slot.next.empty()) return fail_step(in, "stage has no next worker but does not end with the head");
    Message m;
    m.type = MsgType::step;
    m.request = in.request;
    m.seq = in.seq;
    m.meta = in.meta;
    m.meta["first"] = slot.stage->last() + 1;
    m.meta["kind"] = std::string(to_string(out.kind));
    m.meta["rebuild"] = rebuild;
    if (out.kind != ActivationKind::none) m.tensors.push_back(detail::to_blob(out.tensor));
    enqueue(slot.next, wire::encode(m), slot.link);
  }

  void send_token(const Message& in, int64_t token, const at::Tensor& logits) {
    Message t;
    t.type = MsgType::token;
    t.request = in.request;
    t.seq = in.seq;
    t.meta = {{"token", token}, {"events", in.meta.value("events", nlohmann::json::array())}};
    if (logits.defined()) t.tensors.push_back(detail::to_blob(logits));
    to_coordinator(std::move(t), return_link_);
  }

  // A step seen before: pass on what was produced then (no second computation, no second cache entry).
  void resend_logged(Slot& slot, RequestLog& log, Message& m) {
    auto it = log.steps.find(m.seq);
    if (it == log.steps.end()) return fail_step(m, fmt::format("step {} was rebuilt, not logged", m.seq));
    if (it->second.token >= 0) return send_token(m, it->second.token, at::Tensor());
    forward(slot, m, it->second.out, false);
  }

  // meta.steps = k: rebuild the request's state for its steps 0..k-1 (input_ids = all their ids).
  void rebuild(Slot& slot, RequestLog& log, Message& m) {
    const int steps = m.meta.value("steps", 0);
    if (steps <= 0) return fail_step(m, "rebuild without a positive \"steps\" count");
    // A stage of vision nodes only sees the prefill (decode steps skip it): its step 0 is all it has.
    bool complete = slot_needs_order(slot) ? log.last_seq >= steps - 1 : log.steps.count(0) > 0;
    for (int s = 0; complete && slot_needs_order(slot) && s < steps; ++s) complete = log.steps.count(s) > 0;
    const bool full = m.meta.value("full", false);  // after a re-plan every stage may need rebuilding
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
    auto parsed = parse_step(m);
    if (!parsed) return fail_step(m, parsed.error().message);
    parsed->step.prefill = true;
    parsed->step.all_logits = false;
    const int64_t started_us = detail::wall_us();
    const auto start = Clock::now();
    auto out = slot.stage->forward(parsed->step, parsed->input);
    if (!out) return fail_step(m, out.error().message);
    emulate_compute(start);
    add_event(m.meta, "rebuild", slot.stage->first(), slot.stage->last(), started_us, detail::wall_us(), m.request);
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
      m.meta["rebuilt_positions"] = m.meta.value("rebuilt_positions", int64_t{0}) + positions;
      forward(slot, m, *out, true);
      return;
    }
    ack_rebuild(m, positions);
  }

  // Tells the coordinator a rebuild is done and how many positions were recomputed on the way.
  void ack_rebuild(const Message& m, int64_t positions) {
    Message done;
    done.type = MsgType::ready;
    done.request = m.request;
    done.seq = m.seq;
    done.meta = {{"rebuilt_positions", m.meta.value("rebuilt_positions", int64_t{0}) + positions},
                 {"device", device_},
                 {"events", m.meta.value("events", nlohmann::json::array())}};
    to_coordinator(std::move(done));
  }

  // --- sender thread ---

  void enqueue(const std::string& endpoint, std::vector<std::string> frames, const LinkEmulation& link) {
    if (endpoint.empty()) return;
    size_t bytes = 0;
    for (const auto& f : frames) bytes += f.size();
    const auto now = Clock::now();
    Outgoing o;
    o.endpoint = endpoint;
    o.frames = std::move(frames);
    std::lock_guard lock(out_mu_);
    o.order = next_order_++;
    if (link.active()) {
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
      auto& socket = peer(o.endpoint);
      detail::send_frames(socket, o.frames);
    }
  }

  zmq::socket_t& peer(const std::string& endpoint) {
    auto it = peers_.find(endpoint);
    if (it == peers_.end()) {
      zmq::socket_t s(ctx_, zmq::socket_type::dealer);
      detail::configure_socket(s);
      s.connect(endpoint);
      it = peers_.emplace(endpoint, std::move(s)).first;
    }
    return it->second;
  }

  WorkerOptions options_;
  zmq::context_t ctx_;
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
  double slowdown_ = 1.0;
  int64_t epoch_ = 0;  // placement generation: steps of an older one are stale (dropped)
  LinkEmulation return_link_;
  std::map<std::pair<int, int>, Slot> slots_;  // by node range
  std::map<std::pair<int, int64_t>, RequestLog> logs_;

  std::mutex work_mu_;
  std::condition_variable work_cv_;
  std::deque<Message> work_;
  // Set by a hello under both state_mu_ and work_mu_; the compute thread chooses under work_mu_ and computes under
  // state_mu_ (it alone writes parked_ otherwise).
  Schedule schedule_ = Schedule::decode_first;
  std::optional<ParkedPrefill> parked_;

  std::mutex out_mu_;
  std::condition_variable out_cv_;
  std::priority_queue<Outgoing, std::vector<Outgoing>, std::greater<>> out_;
  std::map<std::string, Clock::time_point> link_free_;
  uint64_t next_order_ = 0;
  std::map<std::string, zmq::socket_t> peers_;  // sender thread only
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
  if (!options.model.empty()) {
    auto c = Checkpoint::open(options.model);
    if (!c) return c.error();
  }
  Worker worker(options);
  std::string bound;
  auto st = worker.bind(&bound);
  if (!st) return st.error();
  if (on_listening) on_listening(bound);
  worker.serve(stop);
  return Ok{};
}

}  // namespace adaptlink::exec

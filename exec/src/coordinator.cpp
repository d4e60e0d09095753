#include "adaptlink/exec/coordinator.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <thread>
#include <utility>
#include <zmq.hpp>

#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/worker.hpp"
#include "adaptlink/models/graph.hpp"
#include "adaptlink/runtime/run_recorder.hpp"
#include "runtime.hpp"

namespace adaptlink::exec {

namespace {

using Clock = std::chrono::steady_clock;
using wire::Message;
using wire::MsgType;

struct WorkerState {
  zmq::socket_t socket;
  std::string endpoint;
  bool alive = true;
  Clock::time_point last_pong;
  std::set<std::pair<int, int>> holds;  // node ranges loaded (active or backup)
};

struct RequestState {
  int outstanding = -1;  // sequence number of the step in flight, -1 before admission
  bool finished = false;
  std::vector<int64_t> generated;
  Clock::time_point admitted;
};

class Coordinator {
 public:
  Coordinator(const PipelineSpec& spec, const std::vector<ExecRequest>& requests, const CoordinatorOptions& options)
      : spec_(spec), requests_(requests), options_(options), ret_(ctx_, zmq::socket_type::router) {
    detail::configure_socket(ret_);
  }

  Expected<ExecRun> run() {
    auto st = prepare();
    if (!st) return st.error();
    st = handshake();
    if (!st) return st.error();
    if (options_.ready) {
      st = options_.ready();
      if (!st) return st.error();
    }
    st = serve();
    if (!st) return st.error();
    run_.wall_s = seconds(Clock::now());
    run_.start_wall_us = start_wall_us_;
    return std::move(run_);
  }

 private:
  // --- set-up ---

  Status prepare() {
    stages_ = spec_.stages;
    if (stages_.empty()) return make_error("the pipeline has no stages");
    if (options_.in_flight < 1) return make_error("in_flight must be >= 1");
    auto ck = Checkpoint::open(options_.model);
    if (!ck) return ck.error();
    fingerprint_ = model_fingerprint(*ck);
    const auto graph = models::LayerGraph::build(ck->config(), models::Dtype::fp32);
    int expect = 0;
    for (size_t s = 0; s < stages_.size(); ++s) {
      const auto& st = stages_[s];
      if (st.first != expect || st.last < st.first || st.last >= graph.size()) {
        return make_error("stages must cover nodes 0..{} in order (stage {} is [{}, {}])", graph.size() - 1, s,
                          st.first, st.last);
      }
      if (st.worker < 0 || st.worker >= static_cast<int>(spec_.workers.size())) {
        return make_error("stage {} names worker {}, there are {}", s, st.worker, spec_.workers.size());
      }
      for (int n = st.first; n <= st.last; ++n) {
        if (graph.node(n).kind == models::NodeKind::text_embed) text_node_ = n;
      }
      expect = st.last + 1;
    }
    if (expect != graph.size()) return make_error("stages end at node {}, the model has {}", expect - 1, graph.size());
    ADAPTLINK_CHECK(text_node_ >= 0, "no stage holds text_embed");
    update_text_stage();
    for (const auto& r : requests_) {
      if (r.input_ids.empty()) return make_error("request '{}' has no input ids", r.id);
    }
    try {
      ret_.bind(options_.listen);
    } catch (const zmq::error_t& e) {
      return make_error("cannot listen on {}: {}", options_.listen, e.what());
    }
    return_endpoint_ = ret_.get(zmq::sockopt::last_endpoint);
    for (const auto& w : spec_.workers) {
      WorkerState ws;
      try {
        connect(ws, w.endpoint);
      } catch (const zmq::error_t& e) {
        return make_error("worker '{}': bad endpoint '{}': {}", w.name, w.endpoint, e.what());
      }
      workers_.push_back(std::move(ws));
    }
    stage_worker_.clear();
    for (const auto& s : stages_) stage_worker_.push_back(s.worker);
    states_.assign(requests_.size(), RequestState{});
    run_.results.resize(requests_.size());
    for (size_t i = 0; i < requests_.size(); ++i) run_.results[i].id = requests_[i].id;
    start_ = Clock::now();
    start_wall_us_ = detail::wall_us();
    return Ok{};
  }

  void update_text_stage() {
    for (size_t s = 0; s < stages_.size(); ++s) {
      if (stages_[s].first <= text_node_ && text_node_ <= stages_[s].last) text_stage_ = static_cast<int>(s);
    }
  }

  // A new DEALER socket to `endpoint` for a worker (replacing its old one and whatever was queued there).
  void connect(WorkerState& ws, const std::string& endpoint) {
    ws.socket = zmq::socket_t(ctx_, zmq::socket_type::dealer);
    detail::configure_socket(ws.socket);
    ws.socket.connect(endpoint);
    ws.endpoint = endpoint;
  }

  [[nodiscard]] std::string who(int w) const {
    return fmt::format("worker '{}' ({})", spec_.workers[static_cast<size_t>(w)].name,
                       workers_[static_cast<size_t>(w)].endpoint);
  }
  [[nodiscard]] double seconds(Clock::time_point t) const { return std::chrono::duration<double>(t - start_).count(); }

  [[nodiscard]] LinkShape link(int from, int to) const {
    if (!spec_.link || from == to) return {};
    return spec_.link(from, to);
  }
  [[nodiscard]] nlohmann::json link_json(int from, int to) const {
    const auto l = link(from, to);
    return {{"latency_ms", l.latency_ms}, {"ms_per_byte", l.ms_per_byte}};
  }
  [[nodiscard]] int text_worker() const { return stage_worker_[static_cast<size_t>(text_stage_)]; }

  // The stage entry for a hello/route: its range, whether it runs, where it sends.
  [[nodiscard]] nlohmann::json stage_entry(size_t s) const {
    const auto& st = stages_[s];
    const int w = stage_worker_[s];
    nlohmann::json e = {{"first", st.first}, {"last", st.last}, {"active", true}, {"next", ""}};
    if (s + 1 < stages_.size()) {
      const int nw = stage_worker_[s + 1];
      e["next"] = workers_[static_cast<size_t>(nw)].endpoint;
      e["link"] = link_json(w, nw);
    }
    return e;
  }

  [[nodiscard]] Message hello_for(size_t w, const nlohmann::json& stages) const {
    Message hello;
    hello.type = MsgType::hello;
    hello.meta = {{"protocol", wire::kProtocolVersion},
                  {"fingerprint", fingerprint_},
                  {"model_dir", std::filesystem::absolute(options_.model).string()},
                  {"device", spec_.workers[w].name},
                  {"dtype", options_.dtype},
                  {"exec_device", options_.exec_device},
                  {"coordinator", return_endpoint_},
                  {"slowdown", spec_.workers[w].slowdown},
                  {"schedule", std::string(partition::schedule_name(options_.schedule))},
                  {"epoch", epoch_},
                  {"return_link", link_json(static_cast<int>(w), text_worker())},
                  {"stages", stages}};
    return hello;
  }

  // Stage entries for worker w under the current placement: its stages (active) and `backups` (preloaded,
  // inactive); every range listed goes into `held`.
  nlohmann::json holdings(size_t w, const std::vector<std::pair<int, int>>& backups,
                          std::set<std::pair<int, int>>& held) const {
    nlohmann::json list = nlohmann::json::array();
    for (size_t s = 0; s < stages_.size(); ++s) {
      if (stage_worker_[s] != static_cast<int>(w)) continue;
      list.push_back(stage_entry(s));
      held.insert({stages_[s].first, stages_[s].last});
    }
    for (const auto& range : backups) {
      if (!held.insert(range).second) continue;
      list.push_back({{"first", range.first}, {"last", range.second}, {"active", false}});
    }
    return list;
  }

  Status handshake() {
    for (size_t w = 0; w < workers_.size(); ++w) {
      const nlohmann::json stages = holdings(w, spec_.workers[w].backups, workers_[w].holds);
      if (!detail::send_frames(workers_[w].socket, wire::encode(hello_for(w, stages)))) {
        return make_error("{}: cannot send the hello", who(static_cast<int>(w)));
      }
    }
    // Every worker must answer (ready or error) within the timeout.
    std::vector<bool> ready(workers_.size(), false);
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(options_.hello_timeout_s));
    while (std::count(ready.begin(), ready.end(), true) < static_cast<long>(ready.size())) {
      if (Clock::now() > deadline) {
        for (size_t w = 0; w < ready.size(); ++w) {
          if (!ready[w]) {
            return make_error("{} did not answer the hello within {:g} s (unreachable, or still loading)",
                              who(static_cast<int>(w)), options_.hello_timeout_s);
          }
        }
      }
      if (auto lost = check_lost(); !lost.empty()) {
        return make_error("{} exited during the handshake", who(lost.front()));
      }
      for (size_t w = 0; w < workers_.size(); ++w) {
        if (ready[w]) continue;
        auto m = receive(workers_[w].socket, static_cast<int>(w), 20);
        if (!m) return m.error();
        if (!m->has_value()) continue;
        const Message& reply = **m;
        if (reply.type == MsgType::error) {
          return make_error("{} refused the hello: {}", who(static_cast<int>(w)),
                            reply.meta.value("message", std::string("?")));
        }
        if (reply.type != MsgType::ready) {
          return make_error("{} answered the hello with a {} message", who(static_cast<int>(w)),
                            wire::to_string(reply.type));
        }
        ready[w] = true;
        workers_[w].last_pong = Clock::now();
      }
    }
    return Ok{};
  }

  // Polls one socket for up to `wait_ms`; a malformed message is an error naming the worker.
  Expected<std::optional<Message>> receive(zmq::socket_t& socket, int w, int wait_ms) {
    zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
    detail::poll_items(&item, 1, wait_ms);
    if ((item.revents & ZMQ_POLLIN) == 0) return std::optional<Message>();
    auto frames = detail::recv_frames(socket, false);
    if (!frames) return std::optional<Message>();
    auto m = wire::decode(*frames);
    if (!m) return make_error("{} sent a malformed message: {}", who(w), m.error().message);
    return std::optional<Message>(std::move(m).value());
  }

  std::vector<int> check_lost() {
    std::vector<int> lost;
    if (!options_.poll_lost) return lost;
    for (const auto& name : options_.poll_lost(seconds(Clock::now()))) {
      for (size_t w = 0; w < spec_.workers.size(); ++w) {
        if (spec_.workers[w].name == name && workers_[w].alive) lost.push_back(static_cast<int>(w));
      }
    }
    return lost;
  }

  // --- the run ---

  void send_step(size_t index, int seq) {
    const auto& req = requests_[index];
    auto& state = states_[index];
    Message m;
    m.type = MsgType::step;
    m.request = static_cast<int64_t>(index) + 1;
    m.seq = seq;
    size_t entry = 0;
    if (seq == 0) {
      m.meta = {{"prefill", true}, {"input_ids", req.input_ids}, {"kind", "none"}};
      if (options_.keep_prefill_logits) {
        m.meta["all_logits"] = true;
        m.meta["want_logits"] = true;
      }
      if (req.pixel_values.defined()) {
        m.meta["kind"] = "pixels";
        m.tensors.push_back(detail::to_blob(req.pixel_values.to(at::kFloat)));
      }
    } else {
      entry = static_cast<size_t>(text_stage_);
      m.meta = {{"prefill", false}, {"input_ids", {state.generated.back()}}, {"kind", "none"}};
    }
    m.meta["first"] = stages_[entry].first;
    m.meta["epoch"] = epoch_;
    state.outstanding = seq;
    detail::send_frames(workers_[static_cast<size_t>(stage_worker_[entry])].socket, wire::encode(m));
  }

  void finish(size_t index) {
    auto& state = states_[index];
    state.finished = true;
    auto& result = run_.results[index];
    result.generated = state.generated;
    result.done_s = seconds(Clock::now());
    result.latency_ms = (result.done_s - result.admitted_s) * 1e3;
    Message end;
    end.type = MsgType::end;
    end.request = static_cast<int64_t>(index) + 1;
    const auto frames = wire::encode(end);
    for (auto& w : workers_) {
      if (w.alive) detail::send_frames(w.socket, frames);
    }
    ++done_;
    --active_;
    if (options_.progress) options_.progress(done_, requests_.size());
  }

  void record_events(const nlohmann::json& events) {
    if (!events.is_array()) return;
    for (const auto& e : events) {
      if (!e.is_object()) continue;
      StageTiming t;
      t.device = e.value("device", std::string());
      t.name = e.value("name", std::string());
      t.request = e.value("request", int64_t{0});
      t.start_s = static_cast<double>(e.value("ts_us", int64_t{0}) - start_wall_us_) / 1e6;
      t.end_s = t.start_s + static_cast<double>(e.value("dur_us", int64_t{0})) / 1e6;
      run_.events.push_back(std::move(t));
    }
  }

  Status on_token(const Message& m) {
    const int64_t index = m.request - 1;
    if (index < 0 || index >= static_cast<int64_t>(requests_.size())) return Ok{};
    auto& state = states_[static_cast<size_t>(index)];
    if (state.finished || m.seq != state.outstanding) return Ok{};  // a duplicate after a failover
    record_events(m.meta.value("events", nlohmann::json()));
    last_progress_ = Clock::now();
    const auto& req = requests_[static_cast<size_t>(index)];
    if (!m.meta.contains("token") || !m.meta["token"].is_number_integer()) {
      return make_error("the last stage sent a token message without a token (request '{}')", req.id);
    }
    if (m.seq == 0 && options_.keep_prefill_logits && !m.tensors.empty()) {
      auto logits = detail::from_blob(m.tensors[0]);
      if (!logits) return logits.error();
      run_.results[static_cast<size_t>(index)].prefill_logits = *logits;
    }
    const int64_t token = m.meta["token"].get<int64_t>();
    if (req.max_new_tokens == 0) {
      finish(static_cast<size_t>(index));
      return Ok{};
    }
    state.generated.push_back(token);
    const bool eos = std::find(options_.eos_ids.begin(), options_.eos_ids.end(), token) != options_.eos_ids.end();
    if (eos || static_cast<int>(state.generated.size()) >= req.max_new_tokens) {
      finish(static_cast<size_t>(index));
    } else {
      send_step(static_cast<size_t>(index), m.seq + 1);
    }
    return Ok{};
  }

  void admit() {
    if (pending_) return;  // draining to the safe point of a rebalance
    while (active_ < options_.in_flight && next_ < requests_.size()) {
      const size_t i = next_++;
      states_[i].admitted = Clock::now();
      run_.results[i].admitted_s = seconds(states_[i].admitted);
      ++active_;
      send_step(i, 0);
    }
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
      if (options_.cancelled && options_.cancelled()) return make_error("cancelled");
      admit();
      const auto now = Clock::now();
      if (options_.tick) options_.tick(seconds(now));
      if (options_.poll_relinked) {
        auto st = relink(options_.poll_relinked(seconds(now)));
        if (!st) return st;
      }
      if (now - last_ping >= interval) {
        Message ping;
        ping.type = MsgType::ping;
        const auto frames = wire::encode(ping);
        for (auto& w : workers_) detail::send_frames(w.socket, frames);  // lost ones too: they may come back
        last_ping = now;
      }
      for (int w : check_lost()) {
        auto st = on_lost(w, "its process exited");
        if (!st) return st;
      }
      for (int w : std::exchange(returned_, {})) {
        if (workers_[static_cast<size_t>(w)].alive) continue;
        auto st = on_rejoined(w, workers_[static_cast<size_t>(w)].endpoint);
        if (!st) return st;
      }
      if (options_.poll_rejoined) {
        for (const auto& [name, endpoint] : options_.poll_rejoined(seconds(now))) {
          for (size_t w = 0; w < spec_.workers.size(); ++w) {
            if (spec_.workers[w].name != name || workers_[w].alive) continue;
            auto st = on_rejoined(static_cast<int>(w), endpoint);
            if (!st) return st;
          }
        }
      }
      if (pending_ && active_ == 0) {
        auto st = switch_placement();
        if (!st) return st;
      }
      for (size_t w = 0; w < workers_.size(); ++w) {
        if (workers_[w].alive && std::chrono::duration<double>(now - workers_[w].last_pong).count() >
                                     options_.heartbeat_timeout_s) {
          auto st = on_lost(static_cast<int>(w), fmt::format("no heartbeat for {:g} s", options_.heartbeat_timeout_s));
          if (!st) return st;
        }
      }
      if (std::chrono::duration<double>(Clock::now() - last_progress_).count() > options_.step_timeout_s) {
        return make_error("no token for {:g} s: the pipeline is stuck", options_.step_timeout_s);
      }
      auto st = poll_once(20);
      if (!st) return st;
    }
    return Ok{};
  }

  // One round of receiving: tokens and step errors on the return socket, pongs and errors from each worker.
  Status poll_once(int wait_ms) {
    std::vector<zmq::pollitem_t> items;
    items.push_back({ret_.handle(), 0, ZMQ_POLLIN, 0});
    for (auto& w : workers_) items.push_back({w.socket.handle(), 0, ZMQ_POLLIN, 0});
    detail::poll_items(items.data(), items.size(), wait_ms);
    if (items[0].revents & ZMQ_POLLIN) {
      while (auto frames = detail::recv_frames(ret_, false)) {
        if (frames->size() < 2) continue;
        frames->erase(frames->begin());  // ROUTER identity
        auto m = wire::decode(*frames);
        if (!m) return make_error("a worker sent a malformed message to the coordinator: {}", m.error().message);
        auto st = on_return(*m);
        if (!st) return st;
      }
    }
    for (size_t w = 0; w < workers_.size(); ++w) {
      if (!(items[w + 1].revents & ZMQ_POLLIN)) continue;
      while (auto frames = detail::recv_frames(workers_[w].socket, false)) {
        auto m = wire::decode(*frames);
        if (!m) return make_error("{} sent a malformed message: {}", who(static_cast<int>(w)), m.error().message);
        if (m->type == MsgType::pong) {
          workers_[w].last_pong = Clock::now();
          if (!workers_[w].alive) returned_.insert(static_cast<int>(w));  // restarted at its endpoint
        } else if (m->type == MsgType::error) {
          return make_error("{} reported an error: {}", who(static_cast<int>(w)),
                            m->meta.value("message", std::string("?")));
        }
      }
    }
    return Ok{};
  }

  Status on_return(const Message& m) {
    switch (m.type) {
      case MsgType::token:
        return on_token(m);
      case MsgType::error: {
        std::string text = m.meta.value("message", std::string("?"));
        if (m.request > 0 && m.request <= static_cast<int64_t>(requests_.size())) {
          return make_error("request '{}' failed: {}", requests_[static_cast<size_t>(m.request - 1)].id, text);
        }
        return make_error("a worker reported: {}", text);
      }
      case MsgType::ready:  // a rebuild finished
        on_rebuilt(m);
        return Ok{};
      default:
        return make_error("unexpected {} message on the coordinator's return socket", wire::to_string(m.type));
    }
  }

  // --- failover ---

  void on_rebuilt(const Message& m) {
    record_events(m.meta.value("events", nlohmann::json()));
    if (run_.faults.empty()) return;
    auto& rec = run_.faults.back();
    rec.recomputed_tokens += m.meta.value("rebuilt_positions", int64_t{0});
    if (pending_rebuilds_ > 0 && --pending_rebuilds_ == 0) {
      rec.recovered_s = seconds(Clock::now());
      rec.recovery_ms = (*rec.recovered_s - rec.at_s) * 1e3;
    }
  }

  // Sends a route to worker w and waits for its ready (loading a redeployed stage included).
  Status route(int w, const nlohmann::json& stages, double load_delay_ms) {
    Message r;
    r.type = MsgType::route;
    r.meta = {{"stages", stages}, {"load_delay_ms", load_delay_ms}, {"epoch", epoch_}};
    return request_ready(w, r);
  }

  // A link fault on `devices` (spec_.link now gives the degraded shapes): every live worker that sends over one of
  // their links (its own, into them, or the return to the text stage's worker) gets its active stages' entries and
  // its return link again. Later routes and hellos use spec_.link too, so a re-plan keeps the degraded links.
  Status relink(const std::vector<std::string>& devices) {
    std::set<int> changed;
    for (const auto& name : devices) {
      for (size_t w = 0; w < spec_.workers.size(); ++w) {
        if (spec_.workers[w].name == name) changed.insert(static_cast<int>(w));
      }
    }
    if (changed.empty()) return Ok{};
    for (size_t w = 0; w < workers_.size(); ++w) {
      if (!workers_[w].alive) continue;
      bool touched = changed.count(static_cast<int>(w)) > 0 || changed.count(text_worker()) > 0;
      nlohmann::json stages = nlohmann::json::array();
      for (size_t s = 0; s < stages_.size(); ++s) {
        if (stage_worker_[s] != static_cast<int>(w)) continue;
        stages.push_back(stage_entry(s));
        touched = touched || (s + 1 < stages_.size() && changed.count(stage_worker_[s + 1]) > 0);
      }
      if (!touched) continue;
      Message r;
      r.type = MsgType::route;
      r.meta = {{"stages", stages}, {"epoch", epoch_}, {"return_link", link_json(static_cast<int>(w), text_worker())}};
      auto st = request_ready(static_cast<int>(w), r);
      if (!st) return st;
    }
    return Ok{};
  }

  // Sends `m` to worker w and waits for its ready; the heartbeat clocks restart afterwards (no pings were sent).
  Status request_ready(int w, const Message& m) {
    auto& ws = workers_[static_cast<size_t>(w)];
    detail::send_frames(ws.socket, wire::encode(m));
    auto st = wait_ready(w);
    for (auto& other : workers_) other.last_pong = Clock::now();
    return st;
  }

  Status wait_ready(int w) {
    auto& ws = workers_[static_cast<size_t>(w)];
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(options_.hello_timeout_s));
    while (Clock::now() < deadline) {
      auto m = receive(ws.socket, w, 50);
      if (!m) return m.error();
      if (!m->has_value()) {
        for (int gone : check_lost()) {
          if (gone == w) return make_error("{} was lost while taking over a stage", who(w));
        }
        continue;
      }
      if ((*m)->type == MsgType::ready) return Ok{};
      if ((*m)->type == MsgType::error) {
        return make_error("{} could not take over: {}", who(w), (*m)->meta.value("message", std::string("?")));
      }
      // pongs and the like: keep waiting
    }
    return make_error("{} did not confirm the new route within {:g} s", who(w), options_.hello_timeout_s);
  }

  [[nodiscard]] int active_nodes(int w) const {
    int n = 0;
    for (size_t s = 0; s < stages_.size(); ++s) {
      if (stage_worker_[s] == w) n += stages_[s].last - stages_[s].first + 1;
    }
    return n;
  }

  Status on_lost(int w, const std::string& why) {
    auto& ws = workers_[static_cast<size_t>(w)];
    ws.alive = false;
    // A fresh socket to the same endpoint: what was queued for the lost process is dropped, and only pings go
    // there from now on (a pong means the worker is back).
    connect(ws, ws.endpoint);
    const double detected = seconds(Clock::now());
    runtime::FaultRecord rec;
    rec.device = spec_.workers[static_cast<size_t>(w)].name;
    rec.kind = partition::FaultKind::dropout;
    rec.at_s = detected;
    if (options_.fault_time) {
      if (auto t = options_.fault_time(rec.device)) rec.at_s = *t;
    }
    rec.detected_s = detected;
    std::vector<size_t> lost_stages;
    for (size_t s = 0; s < stages_.size(); ++s) {
      if (stage_worker_[s] == w) lost_stages.push_back(s);
    }
    if (lost_stages.empty()) {  // a standby or idle worker: nothing to recover
      rec.recovered_s = detected;
      rec.recovery_ms = (detected - rec.at_s) * 1e3;
      run_.faults.push_back(rec);
      return Ok{};
    }
    if (!options_.recover) return make_error("{} was lost ({})", who(w), why);
    // Steps of the old placement still on their way are dropped by the workers told the new epoch (the requests in
    // flight are re-issued below). A lost worker that was only hung (SIGSTOP, a partition) and comes back may still
    // send or hold such steps: its hello carries the new epoch, so it drops them too.
    ++epoch_;
    // Without a live preloaded copy of every lost stage: re-plan on the workers that are up (the paper's
    // baseline: the new placement loads what it lacks, every request in flight is rebuilt).
    bool all_backed = true;
    for (size_t s : lost_stages) {
      bool backed = false;
      for (const auto& c : workers_) backed = backed || (c.alive && c.holds.count({stages_[s].first, stages_[s].last}));
      all_backed = all_backed && backed;
    }
    if (!all_backed && spec_.replan) {
      std::vector<bool> up;
      for (const auto& c : workers_) up.push_back(c.alive);
      if (auto placement = spec_.replan(up)) {
        ws.holds.clear();
        auto st = preload(*placement);
        if (!st) return st;
        st = apply_placement(*placement);
        if (!st) return st;
        rebuild_in_flight(rec, /*full=*/true);
        return Ok{};
      }
    }
    std::set<size_t> rerouted;
    std::map<int, double> delay_ms;  // per new holder: the emulated transfer of weights it did not preload
    for (size_t s : lost_stages) {
      const auto range = std::make_pair(stages_[s].first, stages_[s].last);
      // A live holder of a preloaded copy (standby first, then the least loaded); else redeploy on the least
      // loaded live worker.
      int best = -1;
      bool backup = false;
      for (size_t c = 0; c < workers_.size(); ++c) {
        if (!workers_[c].alive) continue;
        const bool holds = workers_[c].holds.count(range) > 0;
        const auto key = std::make_tuple(!holds, active_nodes(static_cast<int>(c)));
        if (best < 0 || key < std::make_tuple(!backup, active_nodes(best))) {
          best = static_cast<int>(c);
          backup = holds;
        }
      }
      if (best < 0) {
        return make_error("{} was lost ({}) and no worker is left to take over nodes [{}, {}]", who(w), why,
                          range.first, range.second);
      }
      stage_worker_[s] = best;
      if (!backup && spec_.redeploy_ms) delay_ms[best] += spec_.redeploy_ms(best, range.first, range.second);
      workers_[static_cast<size_t>(best)].holds.insert(range);
      rerouted.insert(s);
      if (s > 0) rerouted.insert(s - 1);
    }
    ws.holds.clear();
    // New routes: the replacements (loading if needed) first, so that a step their upstream neighbours send
    // once re-routed never finds the stage inactive; then those neighbours.
    std::vector<size_t> order(lost_stages.begin(), lost_stages.end());
    for (size_t s : rerouted) {
      if (std::find(lost_stages.begin(), lost_stages.end(), s) == lost_stages.end()) order.push_back(s);
    }
    for (size_t s : order) {
      const int holder = stage_worker_[s];
      auto st = route(holder, nlohmann::json::array({stage_entry(s)}), std::exchange(delay_ms[holder], 0.0));
      if (!st) return st;
    }
    rebuild_in_flight(rec, /*full=*/false);
    return Ok{};
  }

  // Requests in flight: rebuild the replacements' state from the upstream logs (`full`: through every stage
  // that has none), then re-issue their pending step. The fault is recovered when the last rebuild is done.
  void rebuild_in_flight(runtime::FaultRecord rec, bool full) {
    pending_rebuilds_ = 0;
    for (size_t i = 0; i < requests_.size(); ++i) {
      const auto& state = states_[i];
      if (state.finished || state.outstanding < 0) continue;
      if (state.outstanding > 0) {
        send_rebuild(i, full);
        ++pending_rebuilds_;
      }
      send_step(i, state.outstanding);
    }
    if (pending_rebuilds_ == 0) {
      rec.recovered_s = seconds(Clock::now());
      rec.recovery_ms = (*rec.recovered_s - rec.at_s) * 1e3;
    }
    run_.faults.push_back(rec);
    last_progress_ = Clock::now();
  }

  // --- rejoin and rebalance ---

  Status on_rejoined(int w, const std::string& endpoint) {
    auto& ws = workers_[static_cast<size_t>(w)];
    connect(ws, endpoint);
    ws.holds.clear();
    runtime::FaultRecord rec;
    rec.device = spec_.workers[static_cast<size_t>(w)].name;
    rec.kind = partition::FaultKind::rejoin;
    rec.at_s = seconds(Clock::now());
    if (options_.fault_time) {
      if (auto t = options_.fault_time(rec.device)) rec.at_s = *t;
    }
    auto st = request_ready(w, hello_for(static_cast<size_t>(w), nlohmann::json::array()));
    if (!st) return st;
    ws.alive = true;
    rec.detected_s = seconds(Clock::now());
    std::vector<bool> up;
    for (const auto& other : workers_) up.push_back(other.alive);
    auto placement = spec_.replan ? spec_.replan(up) : Expected<Placement>(make_error("no re-planning"));
    if (!placement) {  // it stays a spare: a redeploy target for later dropouts
      rec.recovered_s = rec.detected_s;
      rec.recovery_ms = (*rec.recovered_s - rec.at_s) * 1e3;
      run_.faults.push_back(rec);
      return Ok{};
    }
    // Preload what each worker lacks while the old placement serves.
    st = preload(*placement);
    if (!st) return st;
    pending_ = std::move(placement).value();
    pending_fault_ = run_.faults.size();
    run_.faults.push_back(rec);
    return Ok{};
  }

  // Every live worker loads the node ranges of `placement` it lacks (inactive), with the emulated transfer.
  Status preload(const Placement& placement) {
    for (size_t c = 0; c < workers_.size(); ++c) {
      if (!workers_[c].alive) continue;
      std::vector<std::pair<int, int>> wanted =
          placement.backups.size() > c ? placement.backups[c] : std::vector<std::pair<int, int>>{};
      for (const auto& st : placement.stages) {
        if (st.worker == static_cast<int>(c)) wanted.emplace_back(st.first, st.last);
      }
      nlohmann::json load = nlohmann::json::array();
      double delay_ms = 0;
      for (const auto& range : wanted) {
        if (workers_[c].holds.count(range)) continue;
        load.push_back({{"first", range.first}, {"last", range.second}, {"active", false}});
        if (spec_.redeploy_ms) delay_ms += spec_.redeploy_ms(static_cast<int>(c), range.first, range.second);
        workers_[c].holds.insert(range);
      }
      auto st = route(static_cast<int>(c), load, delay_ms);  // also hands every worker the current epoch
      if (!st) return st;
    }
    return Ok{};
  }

  // Every live worker switches to `placement` (preloaded): its stages active, its backups held, the rest dropped.
  Status apply_placement(const Placement& placement) {
    stages_ = placement.stages;
    stage_worker_.clear();
    for (const auto& st : stages_) stage_worker_.push_back(st.worker);
    update_text_stage();
    for (size_t c = 0; c < workers_.size(); ++c) {
      if (!workers_[c].alive) continue;
      std::set<std::pair<int, int>> keep;
      nlohmann::json list =
          holdings(c, placement.backups.size() > c ? placement.backups[c] : std::vector<std::pair<int, int>>{}, keep);
      for (const auto& range : workers_[c].holds) {
        if (!keep.count(range)) list.push_back({{"first", range.first}, {"last", range.second}, {"drop", true}});
      }
      workers_[c].holds = keep;
      auto st = route(static_cast<int>(c), list, 0);
      if (!st) return st;
    }
    return Ok{};
  }

  // The safe point (no request in flight): every worker switches to the new placement.
  Status switch_placement() {
    auto st = apply_placement(*pending_);
    if (!st) return st;
    pending_.reset();
    auto& rec = run_.faults[pending_fault_];
    rec.recovered_s = seconds(Clock::now());
    rec.recovery_ms = (*rec.recovered_s - rec.at_s) * 1e3;
    last_progress_ = Clock::now();
    return Ok{};
  }

  // A rebuild of request `index`'s steps 0..k-1 (k = its outstanding step), entering at the first stage.
  void send_rebuild(size_t index, bool full) {
    const auto& req = requests_[index];
    const auto& state = states_[index];
    const int k = state.outstanding;
    std::vector<int64_t> ids = req.input_ids;
    ids.insert(ids.end(), state.generated.begin(), state.generated.begin() + (k - 1));
    Message m;
    m.type = MsgType::step;
    m.request = static_cast<int64_t>(index) + 1;
    m.seq = k;
    m.meta = {{"first", stages_[0].first}, {"prefill", true}, {"rebuild", true}, {"steps", k},
              {"input_ids", ids}, {"kind", "none"}, {"epoch", epoch_}, {"full", full}};
    if (req.pixel_values.defined()) {
      m.meta["kind"] = "pixels";
      m.tensors.push_back(detail::to_blob(req.pixel_values.to(at::kFloat)));
    }
    detail::send_frames(workers_[static_cast<size_t>(stage_worker_[0])].socket, wire::encode(m));
  }

  const PipelineSpec& spec_;
  const std::vector<ExecRequest>& requests_;
  const CoordinatorOptions& options_;
  zmq::context_t ctx_;
  zmq::socket_t ret_;
  std::string return_endpoint_;
  std::string fingerprint_;
  std::vector<WorkerState> workers_;
  std::vector<StageSpec> stages_;  // the current placement (changes on a rebalance)
  std::vector<int> stage_worker_;
  int text_stage_ = 0;
  int text_node_ = -1;
  int64_t epoch_ = 0;  // placement generation, raised by a re-plan after a dropout
  std::optional<Placement> pending_;  // a rebalance waiting for the safe point
  std::set<int> returned_;            // lost workers that answered a ping again
  size_t pending_fault_ = 0;          // its faults[] entry
  std::vector<RequestState> states_;
  size_t next_ = 0;
  size_t done_ = 0;
  int active_ = 0;
  int pending_rebuilds_ = 0;
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

runtime::RunRecorder record_exec_run(const ExecRun& run, const std::vector<std::string>& device_names, int in_flight) {
  runtime::RunRecorder rec(device_names, static_cast<long long>(run.results.size()), in_flight, true);
  for (const auto& res : run.results) {
    rec.admit(res.admitted_s);
    rec.complete(res.admitted_s, res.done_s, static_cast<long long>(res.generated.size()));
  }
  for (const auto& e : run.events) {
    const auto it = std::find(device_names.begin(), device_names.end(), e.device);
    if (it == device_names.end()) continue;
    const int d = static_cast<int>(it - device_names.begin());
    rec.busy(d, e.start_s, e.end_s);
    rec.holds_stage(d);
  }
  for (const auto& f : run.faults) rec.fault(f);
  return rec;
}

runtime::RunReport make_exec_report(const ExecRun& run, const std::string& scenario, const std::string& planner,
                                    const std::vector<std::string>& device_names, int in_flight) {
  return record_exec_run(run, device_names, in_flight).report(scenario, "exec", planner);
}

ExecRun merge_exec_runs(const std::vector<ExecRun>& runs, const std::vector<std::vector<size_t>>& indices,
                        size_t requests) {
  ExecRun out;
  out.results.resize(requests);
  if (runs.empty()) return out;
  int64_t start = runs.front().start_wall_us;
  for (const auto& run : runs) start = std::min(start, run.start_wall_us);
  out.start_wall_us = start;
  for (size_t r = 0; r < runs.size(); ++r) {
    const auto& run = runs[r];
    const double offset = static_cast<double>(run.start_wall_us - start) / 1e6;
    for (size_t i = 0; i < run.results.size() && i < indices[r].size(); ++i) {
      auto& res = out.results[indices[r][i]];
      res = run.results[i];
      res.admitted_s += offset;
      res.done_s += offset;
    }
    for (auto e : run.events) {
      e.start_s += offset;
      e.end_s += offset;
      out.events.push_back(std::move(e));
    }
    for (auto f : run.faults) {
      f.at_s += offset;
      if (f.detected_s) *f.detected_s += offset;
      if (f.recovered_s) *f.recovered_s += offset;
      out.faults.push_back(std::move(f));
    }
    out.wall_s = std::max(out.wall_s, offset + run.wall_s);
  }
  std::stable_sort(out.events.begin(), out.events.end(), [](const auto& a, const auto& b) { return a.start_s < b.start_s; });
  std::stable_sort(out.faults.begin(), out.faults.end(), [](const auto& a, const auto& b) { return a.at_s < b.at_s; });
  return out;
}

nlohmann::json make_exec_trace(const ExecRun& run, const std::vector<std::string>& device_names) {
  nlohmann::json events = nlohmann::json::array();
  for (size_t d = 0; d < device_names.size(); ++d) {
    events.push_back({{"ph", "M"}, {"pid", 1}, {"tid", d + 1}, {"name", "thread_name"},
                      {"args", {{"name", device_names[d]}}}});
  }
  events.push_back({{"ph", "M"}, {"pid", 1}, {"name", "process_name"}, {"args", {{"name", "devices"}}}});
  for (const auto& e : run.events) {
    const auto it = std::find(device_names.begin(), device_names.end(), e.device);
    const size_t tid = it == device_names.end() ? device_names.size() + 1 : static_cast<size_t>(it - device_names.begin()) + 1;
    events.push_back({{"ph", "X"}, {"pid", 1}, {"tid", tid}, {"name", e.name}, {"cat", "stage"},
                      {"ts", e.start_s * 1e6}, {"dur", (e.end_s - e.start_s) * 1e6},
                      {"args", {{"request", e.request}}}});
  }
  for (const auto& f : run.faults) {
    events.push_back({{"ph", "i"}, {"pid", 1}, {"tid", 0}, {"s", "g"}, {"name", std::string(partition::fault_kind_name(f.kind)) + " " + f.device},
                      {"ts", f.at_s * 1e6}});
  }
  return {{"traceEvents", events}, {"displayTimeUnit", "ms"}};
}

}  // namespace adaptlink::exec

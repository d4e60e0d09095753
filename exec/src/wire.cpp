#include "adaptlink/exec/wire.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

namespace adaptlink::exec::wire {

std::string_view to_string(MsgType type) {
  switch (type) {
    case MsgType::hello: return "hello";
    case MsgType::ready: return "ready";
    case MsgType::error: return "error";
    case MsgType::step: return "step";
    case MsgType::token: return "token";
    case MsgType::end: return "end";
    case MsgType::route: return "route";
    case MsgType::ping: return "ping";
    case MsgType::pong: return "pong";
    case MsgType::shutdown: return "shutdown";
    case MsgType::release: return "release";
    case MsgType::batch: return "batch";
  }
  return "unknown";
}

int dtype_size(std::string_view dtype) {
  if (dtype == "f32" || dtype == "i32") return 4;
  if (dtype == "bf16" || dtype == "f16") return 2;
  if (dtype == "i64") return 8;
  return 0;
}

std::vector<std::string> encode(const Message& message) {
  nlohmann::json meta = message.meta;
  if (!message.tensors.empty()) {
    auto& list = meta["tensors"] = nlohmann::json::array();
    for (const auto& t : message.tensors) list.push_back({{"dtype", t.dtype}, {"shape", t.shape}});
  }
  std::vector<std::string> frames;
  frames.reserve(2 + message.tensors.size());
  std::string meta_text = meta.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  Header header;
  header.type = static_cast<uint16_t>(message.type);
  header.request = message.request;
  header.seq = message.seq;
  header.meta_bytes = static_cast<uint32_t>(meta_text.size());
  header.tensor_count = static_cast<uint32_t>(message.tensors.size());
  frames.emplace_back(reinterpret_cast<const char*>(&header), sizeof header);
  frames.push_back(std::move(meta_text));
  for (const auto& t : message.tensors) frames.push_back(t.data);
  return frames;
}

std::vector<std::string> encode_batch(const std::vector<Message>& members) {
  Message head;
  head.type = MsgType::batch;
  head.meta["frames"] = nlohmann::json::array();
  std::vector<std::string> rest;
  for (const auto& m : members) {
    auto frames = encode(m);
    head.meta["frames"].push_back(frames.size());
    for (auto& f : frames) rest.push_back(std::move(f));
  }
  auto frames = encode(head);
  for (auto& f : rest) frames.push_back(std::move(f));
  return frames;
}

bool is_batch(const std::vector<std::string>& frames) {
  if (frames.empty() || frames[0].size() != sizeof(Header)) return false;
  Header header;
  std::memcpy(&header, frames[0].data(), sizeof header);
  return header.magic == kMagic && header.type == static_cast<uint16_t>(MsgType::batch);
}

Expected<std::vector<Message>> decode_batch(const std::vector<std::string>& frames, const Limits& limits) {
  if (frames.size() < 2) return make_error("batch: {} frame(s), expected a header and a meta first", frames.size());
  size_t total = 0;
  for (const auto& f : frames) total += f.size();
  if (total > limits.max_message_bytes) {
    return make_error("batch of {} bytes exceeds the limit of {} bytes", total, limits.max_message_bytes);
  }
  auto head = decode({frames[0], frames[1]}, limits);
  if (!head) return make_error("batch: {}", head.error().message);
  if (head->type != MsgType::batch) return make_error("expected a batch message, got {}", to_string(head->type));
  const auto it = head->meta.find("frames");
  if (head->meta.size() != 1 || it == head->meta.end() || !it->is_array()) {
    return make_error("batch: meta must be {{\"frames\": [frame counts of its members]}}");
  }
  if (it->size() < 2 || it->size() > static_cast<size_t>(kMaxBatchMembers)) {
    return make_error("batch: {} members (2 to {})", it->size(), kMaxBatchMembers);
  }
  std::vector<Message> members;
  size_t at = 2;
  for (size_t i = 0; i < it->size(); ++i) {
    const auto& count = (*it)[i];
    if (!count.is_number_unsigned() || count.get<uint64_t>() < 2 || count.get<uint64_t>() > frames.size() - at) {
      return make_error("batch: member {} announces {} frames, {} remain", i, count.dump(), frames.size() - at);
    }
    const auto n = static_cast<size_t>(count.get<uint64_t>());
    auto m = decode(std::vector<std::string>(frames.begin() + static_cast<long>(at), frames.begin() + static_cast<long>(at + n)), limits);
    if (!m) return make_error("batch: member {}: {}", i, m.error().message);
    if (m->type == MsgType::batch) return make_error("batch: member {} is itself a batch", i);
    members.push_back(std::move(*m));
    at += n;
  }
  if (at != frames.size()) return make_error("batch: {} frames after its last member", frames.size() - at);
  return members;
}

Expected<Message> decode(const std::vector<std::string>& frames, const Limits& limits) {
  if (frames.empty()) return make_error("empty message");
  if (frames[0].size() != sizeof(Header)) {
    return make_error("header frame has {} bytes, expected {}", frames[0].size(), sizeof(Header));
  }
  Header header;
  std::memcpy(&header, frames[0].data(), sizeof header);
  if (header.magic != kMagic) return make_error("bad magic 0x{:08x} (not an AdaptLink message)", header.magic);
  if (header.version != kProtocolVersion) {
    return make_error("protocol version {} (this side speaks version {})", header.version, kProtocolVersion);
  }
  if (header.type < static_cast<uint16_t>(MsgType::hello) || header.type > kLastMsgType) {
    return make_error("unknown message type {}{}", header.type, header.type == 11 ? " (reserved)" : "");
  }
  if (header.tensor_count > static_cast<uint32_t>(limits.max_tensors)) {
    return make_error("{} tensors in one message (at most {})", header.tensor_count, limits.max_tensors);
  }
  if (frames.size() != 2 + static_cast<size_t>(header.tensor_count)) {
    return make_error("{} frames, the header announces {}", frames.size(), 2 + header.tensor_count);
  }
  size_t total = 0;
  for (const auto& f : frames) total += f.size();
  if (total > limits.max_message_bytes) {
    return make_error("message of {} bytes exceeds the limit of {} bytes", total, limits.max_message_bytes);
  }
  if (frames[1].size() != header.meta_bytes) {
    return make_error("meta frame has {} bytes, the header says {}", frames[1].size(), header.meta_bytes);
  }
  if (header.meta_bytes > limits.max_meta_bytes) {
    return make_error("meta of {} bytes exceeds the limit of {} bytes", header.meta_bytes, limits.max_meta_bytes);
  }
  Message m;
  m.type = static_cast<MsgType>(header.type);
  m.request = header.request;
  m.seq = header.seq;
  m.meta = nlohmann::json::parse(frames[1], nullptr, /*allow_exceptions=*/false);
  if (m.meta.is_discarded() || !m.meta.is_object()) return make_error("meta is not a JSON object");
  if (header.tensor_count == 0) {
    if (m.meta.contains("tensors")) return make_error("meta lists tensors but the header announces none");
    return m;
  }
  const auto it = m.meta.find("tensors");
  if (it == m.meta.end() || !it->is_array() || it->size() != header.tensor_count) {
    return make_error("meta must list {} tensor header(s) under \"tensors\"", header.tensor_count);
  }
  for (size_t i = 0; i < header.tensor_count; ++i) {
    const auto& th = (*it)[i];
    if (!th.is_object() || !th.contains("dtype") || !th["dtype"].is_string() || !th.contains("shape") ||
        !th["shape"].is_array()) {
      return make_error("tensor {}: header needs a string \"dtype\" and an array \"shape\"", i);
    }
    TensorBlob blob;
    blob.dtype = th["dtype"].get<std::string>();
    const int elem = dtype_size(blob.dtype);
    if (elem == 0) return make_error("tensor {}: unknown dtype '{}'", i, blob.dtype);
    if (th["shape"].size() > static_cast<size_t>(limits.max_dims)) {
      return make_error("tensor {}: {} dimensions (at most {})", i, th["shape"].size(), limits.max_dims);
    }
    uint64_t count = 1;
    for (const auto& d : th["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) return make_error("tensor {}: bad shape {}", i, th["shape"].dump());
      const auto dim = static_cast<uint64_t>(d.get<int64_t>());
      if (dim != 0 && count > limits.max_message_bytes / dim) {
        return make_error("tensor {}: shape {} is too large", i, th["shape"].dump());
      }
      count *= dim;
      blob.shape.push_back(d.get<int64_t>());
    }
    const auto& data = frames[2 + i];
    if (count * static_cast<uint64_t>(elem) != data.size()) {
      return make_error("tensor {}: {} bytes, dtype {} and shape {} need {}", i, data.size(), blob.dtype,
                        th["shape"].dump(), count * static_cast<uint64_t>(elem));
    }
    blob.data = data;
    m.tensors.push_back(std::move(blob));
  }
  m.meta.erase("tensors");
  return m;
}

Message error_message(std::string text, int64_t request, int32_t seq) {
  Message m;
  m.type = MsgType::error;
  m.request = request;
  m.seq = seq;
  m.meta = {{"message", std::move(text)}};
  return m;
}

// --- typed meta ---------------------------------------------------------------------------------------------

namespace {

using nlohmann::json;

std::string_view type_name(const json& j) {
  if (j.is_null()) return "null";
  if (j.is_boolean()) return "a boolean";
  if (j.is_number_integer()) return "an integer";
  if (j.is_number()) return "a number";
  if (j.is_string()) return "a string";
  if (j.is_array()) return "an array";
  return "an object";
}

// Reads one JSON object's fields into typed values: each field is read once, required or optional, checked for its
// type (and range); done() rejects the fields nobody read. The first problem is the error ("step: 'epoch' must be
// an integer, not a string").
class Fields {
 public:
  Fields(const json& object, std::string what) : object_(object), what_(std::move(what)) {
    if (!object_.is_object()) fail("", fmt::format("must be a JSON object, not {}", type_name(object_)));
  }

  template <class T>
  Fields& required(const char* key, T& out) {
    if (!error_ && !object_.contains(key)) fail(key, "is missing");
    return optional(key, out);
  }
  template <class T>
  Fields& optional(const char* key, T& out) {
    if (error_) return *this;
    read_.insert(key);
    const auto it = object_.find(key);
    if (it == object_.end()) return *this;
    read(key, *it, out);
    return *this;
  }
  template <class T>
  Fields& optional(const char* key, std::optional<T>& out) {
    if (error_) return *this;
    read_.insert(key);
    const auto it = object_.find(key);
    if (it == object_.end()) return *this;
    T value{};
    read(key, *it, value);
    if (!error_) out = std::move(value);
    return *this;
  }
  // A check of what was read, with the field it concerns.
  Fields& check(bool ok, const char* key, std::string_view what) {
    if (!error_ && !ok) fail(key, std::string(what));
    return *this;
  }

  Status done() {
    if (!error_) {
      for (const auto& [key, value] : object_.items()) {
        if (!read_.count(key)) {
          fail("", fmt::format("unknown field '{}'", key));
          break;
        }
      }
    }
    if (error_) return *error_;
    return Ok{};
  }

 private:
  void fail(std::string_view key, std::string text) {
    if (error_) return;
    error_ = key.empty() ? make_error("{}: {}", what_, text) : make_error("{}: '{}' {}", what_, key, text);
  }
  void wrong(const char* key, const json& v, std::string_view want) {
    fail(key, fmt::format("must be {}, not {}", want, type_name(v)));
  }

  void read(const char* key, const json& v, bool& out) {
    if (!v.is_boolean()) return wrong(key, v, "a boolean");
    out = v.get<bool>();
  }
  void read(const char* key, const json& v, int64_t& out) {
    if (!v.is_number_integer()) return wrong(key, v, "an integer");
    out = v.get<int64_t>();
  }
  void read(const char* key, const json& v, int& out) {
    if (!v.is_number_integer()) return wrong(key, v, "an integer");
    const auto x = v.get<int64_t>();
    if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max()) {
      return fail(key, fmt::format("{} is out of range", x));
    }
    out = static_cast<int>(x);
  }
  void read(const char* key, const json& v, double& out) {
    if (!v.is_number()) return wrong(key, v, "a number");
    out = v.get<double>();
    if (!std::isfinite(out)) fail(key, "must be finite");
  }
  void read(const char* key, const json& v, std::string& out) {
    if (!v.is_string()) return wrong(key, v, "a string");
    out = v.get<std::string>();
  }
  void read(const char* key, const json& v, std::vector<int64_t>& out) {
    if (!v.is_array()) return wrong(key, v, "an array of integers");
    for (const auto& x : v) {
      if (!x.is_number_integer()) return wrong(key, x, "an array of integers, an element");
      out.push_back(x.get<int64_t>());
    }
  }
  void read(const char* key, const json& v, std::vector<std::string>& out) {
    if (!v.is_array()) return wrong(key, v, "an array of strings");
    for (const auto& x : v) {
      if (!x.is_string()) return wrong(key, x, "an array of strings, an element");
      out.push_back(x.get<std::string>());
    }
  }
  void read(const char* key, const json& v, LinkMeta& out) {
    Fields f(v, fmt::format("{}.{}", what_, key));
    f.optional("latency_ms", out.latency_ms).optional("ms_per_byte", out.ms_per_byte);
    f.check(out.latency_ms >= 0, "latency_ms", "must be >= 0").check(out.ms_per_byte >= 0, "ms_per_byte", "must be >= 0");
    nested(f.done());
  }
  void read(const char* key, const json& v, std::vector<StageEntry>& out) {
    if (!v.is_array()) return wrong(key, v, "an array of stages");
    for (size_t i = 0; i < v.size() && !error_; ++i) {
      StageEntry e;
      Fields f(v[i], fmt::format("{}.{}[{}]", what_, key, i));
      f.required("first", e.first).required("last", e.last).optional("active", e.active).optional("next", e.next);
      f.optional("next_key", e.next_key).optional("link", e.link).optional("drop", e.drop);
      f.check(e.first >= 0 && e.last >= e.first, "last", "must be >= first >= 0");
      nested(f.done());
      out.push_back(std::move(e));
    }
  }
  void read(const char* key, const json& v, std::vector<TraceEvent>& out) {
    if (!v.is_array()) return wrong(key, v, "an array of events");
    for (size_t i = 0; i < v.size() && !error_; ++i) {
      TraceEvent e;
      Fields f(v[i], fmt::format("{}.{}[{}]", what_, key, i));
      f.required("device", e.device).required("name", e.name).required("request", e.request);
      f.required("ts_us", e.ts_us).required("dur_us", e.dur_us).check(e.dur_us >= 0, "dur_us", "must be >= 0");
      nested(f.done());
      out.push_back(std::move(e));
    }
  }
  void nested(const Status& st) {
    if (!error_ && !st) error_ = st.error();
  }

  const json& object_;
  std::string what_;
  std::set<std::string> read_;
  std::optional<Error> error_;
};

json link_json(const LinkMeta& l) { return {{"latency_ms", l.latency_ms}, {"ms_per_byte", l.ms_per_byte}}; }

json stages_json(const std::vector<StageEntry>& stages) {
  json out = json::array();
  for (const auto& e : stages) {
    json j = {{"first", e.first}, {"last", e.last}};
    if (e.drop) {
      j["drop"] = true;
    } else {
      j["active"] = e.active;
      if (!e.next.empty()) j["next"] = e.next;
      if (!e.next_key.empty()) j["next_key"] = e.next_key;
      if (e.link) j["link"] = link_json(*e.link);
    }
    out.push_back(std::move(j));
  }
  return out;
}

json events_json(const std::vector<TraceEvent>& events) {
  json out = json::array();
  for (const auto& e : events) {
    out.push_back({{"device", e.device}, {"name", e.name}, {"request", e.request}, {"ts_us", e.ts_us}, {"dur_us", e.dur_us}});
  }
  return out;
}

Status expect_type(const Message& m, MsgType type) {
  if (m.type != type) return make_error("expected a {} message, got {}", to_string(type), to_string(m.type));
  return Ok{};
}

}  // namespace

json to_meta(const Hello& m) {
  return {{"protocol", m.protocol},       {"fingerprint", m.fingerprint}, {"model_dir", m.model_dir},
          {"device", m.device},           {"dtype", m.dtype},             {"exec_device", m.exec_device},
          {"coordinator", m.coordinator}, {"schedule", m.schedule},       {"epoch", m.epoch},
          {"max_batch", m.max_batch},
          {"slowdown", m.slowdown},       {"return_link", link_json(m.return_link)}, {"stages", stages_json(m.stages)},
          {"lease", m.lease},             {"peer_keys", m.peer_keys}};
}

json to_meta(const Ready& m) {
  json j = json::object();
  if (m.weight_bytes) j["weight_bytes"] = *m.weight_bytes;
  if (m.load_ms) j["load_ms"] = *m.load_ms;
  if (!m.fingerprint.empty()) j["fingerprint"] = m.fingerprint;
  if (m.rebuilt_positions) j["rebuilt_positions"] = *m.rebuilt_positions;
  if (!m.device.empty()) j["device"] = m.device;
  if (!m.events.empty()) j["events"] = events_json(m.events);
  return j;
}

json to_meta(const ErrorMeta& m) {
  json j = {{"message", m.message}};
  if (!m.unreachable.empty()) j["unreachable"] = m.unreachable;
  return j;
}

json to_meta(const Step& m) {
  json j = {{"first", m.first}, {"epoch", m.epoch}, {"prefill", m.prefill}, {"input_ids", m.input_ids}, {"kind", m.kind}};
  if (m.all_logits) j["all_logits"] = true;
  if (m.want_logits) j["want_logits"] = true;
  if (m.rebuild) {
    j["rebuild"] = true;
    j["steps"] = m.steps;
    j["full"] = m.full;
    if (m.rebuilt_positions > 0) j["rebuilt_positions"] = m.rebuilt_positions;
  }
  if (!m.events.empty()) j["events"] = events_json(m.events);
  return j;
}

json to_meta(const Token& m) {
  json j = {{"token", m.token}};
  if (!m.events.empty()) j["events"] = events_json(m.events);
  return j;
}

json to_meta(const Route& m) {
  json j = json::object();
  if (m.stages) j["stages"] = stages_json(*m.stages);
  if (m.load_delay_ms > 0) j["load_delay_ms"] = m.load_delay_ms;
  if (m.epoch) j["epoch"] = *m.epoch;
  if (m.slowdown) j["slowdown"] = *m.slowdown;
  if (m.return_link) j["return_link"] = link_json(*m.return_link);
  return j;
}

Expected<Hello> parse_hello(const Message& m) {
  if (auto st = expect_type(m, MsgType::hello); !st) return st.error();
  Hello h;
  Fields f(m.meta, "hello");
  f.required("protocol", h.protocol).required("fingerprint", h.fingerprint).optional("model_dir", h.model_dir);
  f.optional("device", h.device).optional("dtype", h.dtype).optional("exec_device", h.exec_device);
  f.optional("coordinator", h.coordinator).optional("schedule", h.schedule).optional("epoch", h.epoch);
  f.optional("max_batch", h.max_batch);
  f.check(h.max_batch >= 1 && h.max_batch <= kMaxBatchMembers, "max_batch", "must be 1 to 1024");
  f.optional("slowdown", h.slowdown).optional("return_link", h.return_link).required("stages", h.stages);
  f.required("lease", h.lease).optional("peer_keys", h.peer_keys);
  f.check(!h.lease.empty() && h.lease.size() <= 64, "lease", "must be 1 to 64 characters");
  f.check(h.slowdown >= 1, "slowdown", "must be >= 1").check(h.epoch >= 0, "epoch", "must be >= 0");
  if (auto st = f.done(); !st) return st.error();
  return h;
}

Expected<Ready> parse_ready(const Message& m) {
  if (auto st = expect_type(m, MsgType::ready); !st) return st.error();
  Ready r;
  Fields f(m.meta, "ready");
  f.optional("weight_bytes", r.weight_bytes).optional("load_ms", r.load_ms).optional("fingerprint", r.fingerprint);
  f.optional("rebuilt_positions", r.rebuilt_positions).optional("device", r.device).optional("events", r.events);
  f.check(!r.rebuilt_positions || *r.rebuilt_positions >= 0, "rebuilt_positions", "must be >= 0");
  if (auto st = f.done(); !st) return st.error();
  return r;
}

Expected<ErrorMeta> parse_error(const Message& m) {
  if (auto st = expect_type(m, MsgType::error); !st) return st.error();
  ErrorMeta e;
  Fields f(m.meta, "error");
  f.required("message", e.message).optional("unreachable", e.unreachable);
  if (auto st = f.done(); !st) return st.error();
  return e;
}

Expected<Step> parse_step(const Message& m) {
  if (auto st = expect_type(m, MsgType::step); !st) return st.error();
  Step s;
  Fields f(m.meta, "step");
  f.required("first", s.first).required("epoch", s.epoch).required("prefill", s.prefill);
  f.optional("all_logits", s.all_logits).optional("want_logits", s.want_logits);
  f.required("input_ids", s.input_ids).required("kind", s.kind).optional("rebuild", s.rebuild);
  f.optional("steps", s.steps).optional("full", s.full).optional("rebuilt_positions", s.rebuilt_positions);
  f.optional("events", s.events);
  f.check(s.first >= 0, "first", "must be >= 0").check(s.epoch >= 0, "epoch", "must be >= 0");
  f.check(!s.input_ids.empty(), "input_ids", "must not be empty");
  f.check(std::all_of(s.input_ids.begin(), s.input_ids.end(), [](int64_t id) { return id >= 0; }), "input_ids",
          "must be token ids >= 0");
  f.check(!s.rebuild || s.steps > 0, "steps", "must be positive in a rebuild");
  f.check(s.rebuilt_positions >= 0, "rebuilt_positions", "must be >= 0");
  f.check((s.kind == "none") == m.tensors.empty(), "kind",
          m.tensors.empty() ? "names an activation but the step carries no tensor" : "is \"none\" but a tensor came");
  f.check(m.tensors.size() <= 1, "kind", "allows one tensor");
  if (auto st = f.done(); !st) return st.error();
  return s;
}

Expected<Token> parse_token(const Message& m) {
  if (auto st = expect_type(m, MsgType::token); !st) return st.error();
  Token t;
  Fields f(m.meta, "token");
  f.required("token", t.token).optional("events", t.events).check(t.token >= 0, "token", "must be >= 0");
  if (auto st = f.done(); !st) return st.error();
  return t;
}

Expected<Route> parse_route(const Message& m) {
  if (auto st = expect_type(m, MsgType::route); !st) return st.error();
  Route r;
  Fields f(m.meta, "route");
  f.optional("stages", r.stages).optional("load_delay_ms", r.load_delay_ms).optional("epoch", r.epoch);
  f.optional("slowdown", r.slowdown).optional("return_link", r.return_link);
  f.check(r.load_delay_ms >= 0 && r.load_delay_ms <= kMaxLoadDelayMs, "load_delay_ms",
          fmt::format("must be 0 to {:g} (an hour)", kMaxLoadDelayMs));
  f.check(!r.slowdown || *r.slowdown >= 1, "slowdown", "must be >= 1");
  f.check(!r.epoch || *r.epoch >= 0, "epoch", "must be >= 0");
  if (auto st = f.done(); !st) return st.error();
  return r;
}

Expected<Ok> parse_empty(const Message& m) {
  if (m.meta.is_object() && m.meta.empty()) return Ok{};
  return make_error("{}: carries no fields, got {}", to_string(m.type), m.meta.dump());
}

}  // namespace adaptlink::exec::wire

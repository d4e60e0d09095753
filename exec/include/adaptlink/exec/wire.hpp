// The wire protocol between the coordinator and the workers (ZeroMQ multipart messages).
//
// Every message is   [header (32 bytes)] [meta: a JSON object] [tensor data]...
//
//   header   magic "ALNK", protocol version, message type, request id, step sequence number, the meta's byte
//            count and the number of tensor frames. Packed, little-endian, static_assert'ed.
//   meta     UTF-8 JSON object; "tensors": [{"dtype": "f32"|"bf16"|"f16"|"i64"|"i32", "shape": [..]}] gives
//            one entry per tensor frame.
//   tensors  raw contiguous little-endian bytes, one frame each; the byte count must equal the shape's
//            element count x the dtype's size.
//
// decode() checks all of this (frame count, sizes, magic, version, JSON, dtype, shape, limits) before anything
// is used, so a malformed or oversized message is an Error value, never a crash.
//
// Every message's meta is decoded into the typed struct of its type (Hello, Ready, Step, ...) by one parse
// function at the boundary (parse_hello, parse_step, ...): a missing required field, a field of the wrong type, an
// unknown field or a value out of range is an Error naming the message and the field, answered with an error
// reply; nothing reads meta by key after that. Who sends what (see worker.hpp and coordinator.hpp):
//   hello     coordinator -> worker: Hello (protocol, fingerprint, model_dir, device, dtype, exec_device,
//             coordinator: the return endpoint, schedule, epoch, slowdown, return_link, stages [StageEntry])
//   ready     worker -> coordinator: Ready (reply to hello or route: weight_bytes, load_ms; the end of a rebuild:
//             rebuilt_positions, device, events)
//   error     either way: ErrorMeta (message; request/seq set when it concerns one step)
//   step      -> worker: Step (first, epoch, prefill, input_ids, kind, ..., events); one tensor (the activation)
//             unless kind is "none"
//   token     last worker -> coordinator: Token (token, events); one tensor (logits [tokens, vocab]) when asked for
//   end       coordinator -> worker: drop the request's KV cache (no meta)
//   route     coordinator -> worker: Route (stages as in the hello (failover: serve another preloaded stage, send
//             elsewhere; "drop": true unloads one), load_delay_ms, epoch, slowdown, return_link)
//   ping/pong heartbeats (pong answers at once, even while the worker computes; no meta)
//   shutdown  coordinator -> worker: exit (no meta)
//   release   coordinator -> worker: the run is over, the lease ends (no meta); the worker drops its stages
//   batch     worker -> worker: the decode steps a stage ran as one batch, passed on as one message (encode_batch):
//             meta {"frames": [n_1, ..., n_k]}, then each member's own step message (n_i frames each), k >= 2
// Only the lease's owner is obeyed (worker.hpp); steps come from it or from the run's other workers.
// Type number 11 is reserved (it once named a "resend" message that was never sent).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "adaptlink/error.hpp"

namespace adaptlink::exec::wire {

constexpr uint32_t kMagic = 0x4B4E4C41;  // "ALNK" read as little-endian
constexpr uint16_t kProtocolVersion = 2;  // 2: leases, peer keys (CURVE transport), release

enum class MsgType : uint16_t {
  hello = 1,
  ready = 2,
  error = 3,
  step = 4,
  token = 5,
  end = 6,
  route = 7,
  ping = 8,
  pong = 9,
  shutdown = 10,
  // 11: reserved
  release = 12,
  batch = 13,
};
inline constexpr uint16_t kLastMsgType = 13;
inline constexpr int kMaxBatchMembers = 1024;  // members of one batch message (and a hello's max_batch)
static_assert(static_cast<uint16_t>(MsgType::hello) == 1, "the handshake's message type never moves");
std::string_view to_string(MsgType type);

#pragma pack(push, 1)
struct Header {
  uint32_t magic = kMagic;
  uint16_t version = kProtocolVersion;
  uint16_t type = 0;
  int64_t request = 0;
  int32_t seq = 0;
  uint32_t meta_bytes = 0;
  uint32_t tensor_count = 0;
  uint32_t reserved = 0;
};
#pragma pack(pop)
static_assert(sizeof(Header) == 32, "the wire header is 32 bytes");

struct TensorBlob {
  std::string dtype;           // f32 | bf16 | f16 | i64 | i32
  std::vector<int64_t> shape;  // row-major
  std::string data;            // contiguous little-endian bytes
};
// Bytes per element of a wire dtype, 0 when unknown.
int dtype_size(std::string_view dtype);

struct Message {
  MsgType type = MsgType::error;
  int64_t request = 0;
  int32_t seq = 0;
  nlohmann::json meta = nlohmann::json::object();
  std::vector<TensorBlob> tensors;
};

// A route's emulated weight transfer (load_delay_ms) is at most an hour.
inline constexpr double kMaxLoadDelayMs = 3600e3;

struct Limits {
  size_t max_message_bytes = size_t{1} << 30;  // all frames together
  size_t max_meta_bytes = size_t{16} << 20;
  int max_tensors = 8;
  int max_dims = 8;
};

// Frames of a message (header, meta, tensors).
std::vector<std::string> encode(const Message& message);
// Checks and parses frames; the error says what is wrong ("frame 2 has 10 bytes, the header says 12", ...).
Expected<Message> decode(const std::vector<std::string>& frames, const Limits& limits = {});

// A batch message of `members` (each a whole message, e.g. a step) as one multipart message.
std::vector<std::string> encode_batch(const std::vector<Message>& members);
// Whether the frames announce a batch message (its header's type; decode_batch checks the rest).
bool is_batch(const std::vector<std::string>& frames);
// Checks a batch message (its header and meta, 2 to kMaxBatchMembers members, every frame accounted for, all of them
// within limits.max_message_bytes) and decodes each member as decode() does; a member that does not decode is an
// error naming it.
Expected<std::vector<Message>> decode_batch(const std::vector<std::string>& frames, const Limits& limits = {});

// An error message (type error) with `text` as meta.message.
Message error_message(std::string text, int64_t request = 0, int32_t seq = 0);

// --- typed meta ---------------------------------------------------------------------------------------------

// Testbed link emulation on a hop: latency + bytes x ms_per_byte (both >= 0).
struct LinkMeta {
  double latency_ms = 0;
  double ms_per_byte = 0;
};

// A stage a worker holds: its node range, whether it runs (false: a preloaded backup), where it sends its output
// ("" when it ends with the head), the link emulation on that hop; `drop` unloads it (route only).
struct StageEntry {
  int first = 0;
  int last = 0;
  bool active = false;
  std::string next;
  std::string next_key;  // the next worker's CURVE public key ("" : plain TCP)
  std::optional<LinkMeta> link;
  bool drop = false;
};

// One stage execution, for the trace: on `device`, "what [first, last]", microseconds since the Unix epoch.
struct TraceEvent {
  std::string device;
  std::string name;
  int64_t request = 0;
  int64_t ts_us = 0;
  int64_t dur_us = 0;
};

struct Hello {
  int protocol = kProtocolVersion;
  std::string fingerprint;
  std::string model_dir;  // the coordinator's checkpoint path ("" : none given)
  std::string device = "worker";
  std::string dtype = "fp32";
  std::string exec_device = "cpu";
  std::string coordinator;  // where results go back
  std::string schedule = "decode-first";
  int max_batch = 1;  // up to how many waiting decode steps of a stage run as one forward (1 to kMaxBatchMembers)
  int64_t epoch = 0;
  double slowdown = 1;
  LinkMeta return_link;
  std::vector<StageEntry> stages;
  std::string lease;                   // the coordinator's run: the worker is its own until release (worker.hpp)
  std::vector<std::string> peer_keys;  // CURVE public keys of the run's other workers (they send it steps)
};

struct Ready {
  std::optional<double> weight_bytes;  // hello, route
  std::optional<double> load_ms;
  std::string fingerprint;             // hello
  std::optional<int64_t> rebuilt_positions;  // a rebuild's end
  std::string device;
  std::vector<TraceEvent> events;
};

struct ErrorMeta {
  std::string message;
  std::string unreachable;  // a worker that could not send to this endpoint (the peer there is lost)
};

struct Step {
  int first = 0;           // the node the receiving stage starts at
  int64_t epoch = 0;       // placement generation it was sent in
  bool prefill = false;
  bool all_logits = false;   // the head returns every position's logits
  bool want_logits = false;  // the token message carries them
  std::vector<int64_t> input_ids;  // non-empty, each >= 0
  std::string kind = "none";       // activation kind of the tensor (exec/model.hpp), or "none"
  bool rebuild = false;            // rebuild a replacement stage's KV cache for steps 0..steps-1
  int steps = 0;
  bool full = false;               // rebuild: every stage without a log recomputes (after a re-placement)
  int64_t rebuilt_positions = 0;
  std::vector<TraceEvent> events;
};

struct Token {
  int64_t token = 0;
  std::vector<TraceEvent> events;
};

struct Route {
  std::optional<std::vector<StageEntry>> stages;
  double load_delay_ms = 0;
  std::optional<int64_t> epoch;
  std::optional<double> slowdown;
  std::optional<LinkMeta> return_link;
};

nlohmann::json to_meta(const Hello& m);
nlohmann::json to_meta(const Ready& m);
nlohmann::json to_meta(const ErrorMeta& m);
nlohmann::json to_meta(const Step& m);
nlohmann::json to_meta(const Token& m);
nlohmann::json to_meta(const Route& m);

Expected<Hello> parse_hello(const Message& m);
Expected<Ready> parse_ready(const Message& m);
Expected<ErrorMeta> parse_error(const Message& m);
Expected<Step> parse_step(const Message& m);
Expected<Token> parse_token(const Message& m);
Expected<Route> parse_route(const Message& m);
// end, ping, pong, shutdown, release: the meta must be empty.
Expected<Ok> parse_empty(const Message& m);

// A message of `type` with `meta` (and tensors, for steps and tokens).
template <class Meta>
Message make_message(MsgType type, const Meta& meta, int64_t request = 0, int32_t seq = 0) {
  Message m;
  m.type = type;
  m.request = request;
  m.seq = seq;
  m.meta = to_meta(meta);
  return m;
}

}  // namespace adaptlink::exec::wire

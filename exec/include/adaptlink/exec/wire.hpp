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
// Message types and their meta (see worker.hpp and coordinator.hpp for who sends what):
//   hello     coordinator -> worker: protocol, fingerprint, model_dir, device, dtype, exec_device, coordinator
//             (return endpoint), schedule ("decode-first" | "fifo": the order of its waiting steps), epoch
//             (placement generation), slowdown, return_link {latency_ms, ms_per_byte}, stages [{first, last,
//             active (false: a preloaded backup), next (endpoint or ""), link {latency_ms, ms_per_byte}}]
//   ready     worker -> coordinator (reply to hello or route): weight_bytes, load_ms
//   error     either way: message (request/seq set when it concerns one step)
//   step      -> worker: prefill, all_logits, want_logits, input_ids [..], kind (activation kind), events;
//             one tensor (the activation) unless kind is "none"
//   token     last worker -> coordinator: token, events; one tensor (logits [tokens, vocab]) when asked for
//   end       coordinator -> worker: drop the request's KV cache
//   route     coordinator -> worker: stages as in the hello (failover: serve another preloaded stage, send
//             elsewhere; "drop": true unloads one), load_delay_ms, epoch; slowdown and return_link (testbed
//             slowdown and link faults; a stage entry's link changes that link)
//   resend    coordinator -> worker: send the logged inputs of a request's past steps to `next` again as one
//             step with "rebuild": true, so that a replacement stage rebuilds that request's KV cache
//   ping/pong heartbeats (pong answers at once, even while the worker computes)
//   shutdown  coordinator -> worker: exit
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "adaptlink/error.hpp"

namespace adaptlink::exec::wire {

constexpr uint32_t kMagic = 0x4B4E4C41;  // "ALNK" read as little-endian
constexpr uint16_t kProtocolVersion = 1;

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
  resend = 11,
};
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

// An error message (type error) with `text` as meta.message.
Message error_message(std::string text, int64_t request = 0, int32_t seq = 0);

}  // namespace adaptlink::exec::wire

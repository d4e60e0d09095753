// Internal helpers shared by the worker and the coordinator: ZeroMQ frames <-> wire messages, tensors <-> wire
// blobs, clocks (the mechanism; what a worker runs next is runtime::StageQueue's). Not installed: only exec/src
// includes it.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "adaptlink/error.hpp"
#include "adaptlink/exec/model.hpp"
#include "adaptlink/exec/wire.hpp"
#include "adaptlink/partition/scenario.hpp"

namespace adaptlink::exec::detail {

// A CPU, contiguous copy of `t` as a wire blob (float32, bfloat16, float16, int64, int32).
wire::TensorBlob to_blob(const at::Tensor& t);
// The tensor a blob describes (owning, on the CPU).
Expected<at::Tensor> from_blob(const wire::TensorBlob& blob);
Expected<ActivationKind> parse_activation_kind(std::string_view name);

// Sends frames (with an optional ROUTER identity first). Returns false when the socket would block
// for longer than its send timeout.
bool send_frames(zmq::socket_t& socket, const std::vector<std::string>& frames, const std::string* identity = nullptr);
// Receives every frame of one message (non-blocking when `wait` is false: nullopt when nothing is queued);
// `user_id` gets the sender's authenticated CURVE key ("" without CURVE).
std::optional<std::vector<std::string>> recv_frames(zmq::socket_t& socket, bool wait = true,
                                                    std::string* user_id = nullptr);

// Polls `socket` for up to `wait_ms` and decodes one message; nullopt when nothing came or it does not decode
// (for sockets whose peer only ever answers: there is nothing to answer a bad message with).
std::optional<wire::Message> receive_message(zmq::socket_t& socket, int wait_ms);
// An error message's text, or a note that its meta does not parse.
std::string error_text(const wire::Message& m);

// Linger 0, large high-water marks, a send timeout (a send that cannot go out fails instead of blocking), and
// ZMQ_MAXMSGSIZE at the limits' message size (set before bind/connect: it applies to the connections made after).
void configure_socket(zmq::socket_t& socket, const wire::Limits& limits = {});
// The wire limits for a model: the largest activation a step of it can carry (pixel_values of the most crops a
// request can bring, CLIP hidden states, or context x max(hidden, vocab) floats: text states or every prefill
// logit) plus the meta limit; at most the wire's default (1 GiB).
wire::Limits message_limits(const models::LlavaConfig& config);
// zmq::poll that treats an interrupted call (a signal) as "nothing ready".
void poll_items(zmq::pollitem_t* items, size_t count, int timeout_ms);

// A hello's "schedule" (partition::schedule_name's names), or an error naming the known ones.
Expected<partition::Schedule> parse_schedule(std::string_view name);

// Microseconds since the Unix epoch (system clock: comparable between processes on one host, and between
// hosts as far as their clocks agree); trace events carry it.
inline int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace adaptlink::exec::detail

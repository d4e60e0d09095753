#include "runtime.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace adaptlink::exec::detail {

namespace {

struct DtypeName {
  at::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypes[] = {
    {at::kFloat, "f32"}, {at::kBFloat16, "bf16"}, {at::kHalf, "f16"}, {at::kLong, "i64"}, {at::kInt, "i32"}};

}  // namespace

wire::TensorBlob to_blob(const at::Tensor& t) {
  wire::TensorBlob blob;
  const at::Tensor c = t.to(at::kCPU).contiguous();
  for (const auto& d : kDtypes) {
    if (d.type == c.scalar_type()) blob.dtype = d.name;
  }
  ADAPTLINK_CHECK(!blob.dtype.empty(), "tensor dtype has no wire encoding");
  blob.shape = c.sizes().vec();
  blob.data.assign(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  return blob;
}

Expected<at::Tensor> from_blob(const wire::TensorBlob& blob) {
  for (const auto& d : kDtypes) {
    if (blob.dtype != d.name) continue;
    at::Tensor t = at::empty(blob.shape, at::TensorOptions().dtype(d.type));
    if (static_cast<size_t>(t.numel() * t.element_size()) != blob.data.size()) {
      return make_error("tensor of shape [{}] {} needs {} bytes, got {}", fmt::join(blob.shape, ", "), blob.dtype,
                        t.numel() * t.element_size(), blob.data.size());
    }
    if (!blob.data.empty()) std::memcpy(t.data_ptr(), blob.data.data(), blob.data.size());
    return t;
  }
  return make_error("unknown tensor dtype '{}'", blob.dtype);
}

Expected<ActivationKind> parse_activation_kind(std::string_view name) {
  for (auto kind : {ActivationKind::none, ActivationKind::pixels, ActivationKind::vision_hidden,
                    ActivationKind::image_features, ActivationKind::text_hidden, ActivationKind::logits}) {
    if (to_string(kind) == name) return kind;
  }
  return make_error("unknown activation kind '{}'", name);
}

Expected<partition::Schedule> parse_schedule(std::string_view name) {
  if (auto schedule = partition::parse_schedule(name)) return *schedule;
  return make_error("unknown schedule '{}' (expected decode-first or fifo)", name);
}

bool send_frames(zmq::socket_t& socket, const std::vector<std::string>& frames, const std::string* identity) {
  try {
    if (identity != nullptr) {
      if (!socket.send(zmq::buffer(*identity), zmq::send_flags::sndmore)) return false;
    }
    for (size_t i = 0; i < frames.size(); ++i) {
      const auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      if (!socket.send(zmq::buffer(frames[i]), flags)) return false;
    }
  } catch (const zmq::error_t&) {
    return false;
  }
  return true;
}

std::optional<std::vector<std::string>> recv_frames(zmq::socket_t& socket, bool wait, std::string* user_id) {
  std::vector<std::string> frames;
  zmq::message_t part;
  auto first = socket.recv(part, wait ? zmq::recv_flags::none : zmq::recv_flags::dontwait);
  if (!first) return std::nullopt;
  // The authenticated key travels with every frame (read from each: a ROUTER's identity frame may lack it).
  auto take_user = [&] {
    if (user_id == nullptr || !user_id->empty()) return;
    if (const char* id = zmq_msg_gets(part.handle(), "User-Id")) *user_id = id;
  };
  if (user_id != nullptr) user_id->clear();
  take_user();
  frames.emplace_back(static_cast<const char*>(part.data()), part.size());
  while (part.more()) {
    (void)socket.recv(part, zmq::recv_flags::none);
    take_user();
    frames.emplace_back(static_cast<const char*>(part.data()), part.size());
  }
  return frames;
}

void configure_socket(zmq::socket_t& socket, const wire::Limits& limits) {
  socket.set(zmq::sockopt::linger, 0);
  socket.set(zmq::sockopt::sndhwm, 100000);
  socket.set(zmq::sockopt::rcvhwm, 100000);
  socket.set(zmq::sockopt::sndtimeo, 10000);
  // A frame above the wire's limit is refused by ZeroMQ as it arrives (the peer is disconnected), before it is
  // buffered whole: decode() would refuse it anyway, after holding it in memory.
  socket.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(limits.max_message_bytes));
}

wire::Limits message_limits(const models::LlavaConfig& config) {
  const auto& t = config.text;
  const auto& v = config.vision;
  const int64_t ctx = t.max_position_embeddings;
  const int64_t crops = config.max_crops();
  const int64_t largest = std::max({
      crops * v.num_channels * v.image_size * v.image_size,  // pixel_values
      crops * v.num_positions() * v.hidden_size,              // vision hidden states
      ctx * std::max<int64_t>(t.hidden_size, t.vocab_size),   // image features / text hidden states / all logits
  });
  wire::Limits limits;
  const auto bytes = static_cast<size_t>(largest) * sizeof(float) + limits.max_meta_bytes;
  limits.max_message_bytes = std::min(limits.max_message_bytes, bytes);
  return limits;
}

void poll_items(zmq::pollitem_t* items, size_t count, int timeout_ms) {
  try {
    zmq::poll(items, count, std::chrono::milliseconds(timeout_ms));
  } catch (const zmq::error_t& e) {
    if (e.num() != EINTR) throw;
    for (size_t i = 0; i < count; ++i) items[i].revents = 0;
  }
}

std::optional<wire::Message> receive_message(zmq::socket_t& socket, int wait_ms) {
  zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
  poll_items(&item, 1, wait_ms);
  if ((item.revents & ZMQ_POLLIN) == 0) return std::nullopt;
  auto frames = recv_frames(socket, false);
  if (!frames) return std::nullopt;
  auto m = wire::decode(*frames);
  if (!m) return std::nullopt;
  return std::move(m).value();
}

std::string error_text(const wire::Message& m) {
  auto e = wire::parse_error(m);
  return e ? e->message : "(an error message that does not parse: " + e.error().message + ")";
}

}  // namespace adaptlink::exec::detail

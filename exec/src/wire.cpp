#include "adaptlink/exec/wire.hpp"

#include <cstring>

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
    case MsgType::resend: return "resend";
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
  if (header.type < static_cast<uint16_t>(MsgType::hello) || header.type > static_cast<uint16_t>(MsgType::resend)) {
    return make_error("unknown message type {}", header.type);
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

}  // namespace adaptlink::exec::wire

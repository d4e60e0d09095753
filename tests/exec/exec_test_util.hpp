// Helpers of the executor's multi-process tests (distributed_test.cpp, hostile_test.cpp): the fixtures, a raw wire
// client that speaks to a worker or a coordinator port directly, runs over LocalWorkers as serve makes them.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "adaptlink/exec/coordinator.hpp"
#include "adaptlink/exec/local_workers.hpp"
#include "adaptlink/exec/transport.hpp"
#include "adaptlink/exec/wire.hpp"

namespace adaptlink::exec::test {

inline const std::filesystem::path kFixtures = std::filesystem::path(ADAPTLINK_SOURCE_DIR) / "tests" / "fixtures";
inline const std::filesystem::path kRun = std::filesystem::path(ADAPTLINK_BINARY_DIR) / "cli" / "adaptlink-run";

// run_pipeline over `own`'s workers, as serve runs it (CURVE): every worker spec at one of own's endpoints gets that
// worker's public key, and the coordinator the key they serve.
inline Expected<ExecRun> run_on(const LocalWorkers& own, PipelineSpec spec, const std::vector<ExecRequest>& requests,
                                CoordinatorOptions co) {
  for (auto& w : spec.workers) {
    for (size_t i = 0; i < own.endpoints().size(); ++i) {
      if (own.endpoints()[i] == w.endpoint) w.public_key = own.public_keys()[i];
    }
  }
  co.transport = own.transport();
  return run_pipeline(spec, requests, co);
}

// A socket of this process that speaks the wire protocol to `endpoint`: a worker's port, or a coordinator's.
struct RawClient {
  static constexpr const char* kLease = "raw-client-lease";
  zmq::context_t ctx;
  zmq::socket_t s{ctx, zmq::socket_type::dealer};
  RawClient(const LocalWorkers& own, int i)
      : RawClient(own.endpoints()[static_cast<size_t>(i)], own.public_keys()[static_cast<size_t>(i)],
                  own.transport().key) {}
  // Any client: `key` its CURVE key pair (empty: plain TCP), `lease` its routing id; replies wait `wait_ms`.
  RawClient(const std::string& endpoint, const std::string& server_key, const KeyPair& key,
            const std::string& lease = kLease, int wait_ms = 20000) {
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::rcvtimeo, wait_ms);
    s.set(zmq::sockopt::sndtimeo, wait_ms);  // a send with no connection (a refused client) gives up
    s.set(zmq::sockopt::routing_id, lease);
    if (!key.public_key.empty()) {
      s.set(zmq::sockopt::curve_serverkey, server_key);
      s.set(zmq::sockopt::curve_publickey, key.public_key);
      s.set(zmq::sockopt::curve_secretkey, key.secret_key);
    }
    s.connect(endpoint);
  }
  // Ends the lease its hello took, so that a coordinator may have the worker. Returns once the worker has handled it:
  // it takes one connection's messages in order, so the ping sent after it is answered only then (a coordinator's
  // hello on another connection could otherwise overtake the release and find the worker still leased).
  void release() {
    wire::Message m;
    m.type = wire::MsgType::release;
    send(wire::encode(m));
    wire::Message ping;
    ping.type = wire::MsgType::ping;
    send(wire::encode(ping));
    (void)reply();
  }
  void send(const std::vector<std::string>& frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
      s.send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  Expected<wire::Message> reply() {
    std::vector<std::string> frames;
    zmq::message_t part;
    if (!s.recv(part)) return make_error("no reply");
    frames.emplace_back(static_cast<const char*>(part.data()), part.size());
    while (part.more()) {
      (void)s.recv(part);
      frames.emplace_back(static_cast<const char*>(part.data()), part.size());
    }
    return wire::decode(frames);
  }
};

inline std::string reply_error(RawClient& c) {
  auto m = c.reply();
  if (!m) return "undecodable reply: " + m.error().message;
  if (m->type != wire::MsgType::error) return std::string("reply of type ") + std::string(wire::to_string(m->type));
  return m->meta.value("message", std::string());
}

inline std::string free_endpoint() {
  zmq::context_t ctx;
  zmq::socket_t s(ctx, zmq::socket_type::router);
  s.bind("tcp://127.0.0.1:*");
  return s.get(zmq::sockopt::last_endpoint);
}

inline KeyPair stranger_key() {
  auto key = generate_keypair();
  EXPECT_TRUE(key.has_value());
  return *key;
}

}  // namespace adaptlink::exec::test

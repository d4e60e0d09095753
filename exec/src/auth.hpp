// The mechanism of transport.hpp: CURVE socket options, the ZAP handler that decides which client keys a process
// lets in, the authenticated key of a received message, and refusal logging. Not installed: only exec/src
// includes it.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "adaptlink/exec/transport.hpp"

namespace adaptlink::exec::detail {

// One line per refusal on stderr ("adaptlink worker: refused ..."), at most `burst` lines per `window`; the
// lines held back are counted and reported with the next line that is printed.
class RefusalLog {
 public:
  explicit RefusalLog(std::string who, int burst = 5, std::chrono::seconds window = std::chrono::seconds(10))
      : who_(std::move(who)), burst_(burst), window_(window) {}
  void log(const std::string& line);   // "adaptlink WHO: refused LINE"
  void note(const std::string& line);  // "adaptlink WHO: LINE" (the same limit)

 private:
  std::mutex mu_;
  std::string who_;
  int burst_;
  std::chrono::seconds window_;
  std::chrono::steady_clock::time_point window_start_{};
  int printed_ = 0;
  long suppressed_ = 0;
};

// The ZAP handler of one ZeroMQ context (RFC 27): a thread answering the CURVE handshakes of every server socket
// of that context, letting in the public keys allowed (the user id of their messages is the key, Z85) and
// refusing, and logging, every other. Construct it before any server socket of the context binds: a handshake
// that finds no handler would let anyone in.
class Authenticator {
 public:
  Authenticator(zmq::context_t& ctx, RefusalLog& log);
  Authenticator(const Authenticator&) = delete;
  Authenticator& operator=(const Authenticator&) = delete;
  ~Authenticator();

  // Replaces the keys let in under `group` (a worker: "coordinator" keys fixed at start, "peer" keys per hello).
  void allow(const std::string& group, const std::set<std::string>& keys);
  [[nodiscard]] bool allowed(const std::string& key);

 private:
  void loop();

  zmq::socket_t socket_;
  RefusalLog& log_;
  std::mutex mu_;
  std::map<std::string, std::set<std::string>> keys_;  // group -> Z85 public keys
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Makes `socket` a CURVE server with the transport's key (nothing when insecure). Before bind.
void secure_server(zmq::socket_t& socket, const Transport& transport);
// Makes `socket` a CURVE client of the server whose public key is `server_key` (nothing when insecure). Before
// connect.
void secure_client(zmq::socket_t& socket, const Transport& transport, const std::string& server_key);

// Watches a client socket's handshakes: the first failed one (a wrong server key, or refused by the server's ZAP
// handler) as text. For the coordinator's connections to its workers, so that a worker whose key does not match
// is named at once instead of timing out.
class HandshakeMonitor {
 public:
  HandshakeMonitor(zmq::context_t& ctx, zmq::socket_t& socket, std::string own_public_key);
  // A failed handshake as text ("it refused this coordinator's key ...", or "the security handshake failed: ..."
  // once no refusal followed a failure for 300 ms), or "" while there is none.
  std::string failure();

 private:
  zmq::socket_t pair_;
  std::string own_public_key_;
  std::string auth_;  // a refusal of this coordinator's key, once seen
  std::optional<std::chrono::steady_clock::time_point> failed_since_;  // the first other failure
};

}  // namespace adaptlink::exec::detail

#include "adaptlink/exec/transport.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

#include "adaptlink/read_file.hpp"
#include "auth.hpp"

namespace adaptlink::exec {

namespace {

constexpr size_t kZ85KeyChars = 40;
constexpr size_t kKeyBytes = 32;
constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";  // RFC 27: fixed per context
constexpr const char* kZapDomain = "adaptlink";

bool decodes(std::string_view key) {
  if (key.size() != kZ85KeyChars) return false;
  std::array<uint8_t, kKeyBytes> bytes{};
  const std::string text(key);
  return zmq_z85_decode(bytes.data(), text.c_str()) != nullptr;
}

std::string z85(const uint8_t* bytes) {
  std::array<char, kZ85KeyChars + 1> text{};
  if (zmq_z85_encode(text.data(), bytes, kKeyBytes) == nullptr) return {};
  return text.data();
}

// The host of a tcp:// endpoint ("tcp://127.0.0.1:5555" -> "127.0.0.1", "tcp://[::1]:*" -> "::1").
std::string tcp_host(std::string_view rest) {
  if (!rest.empty() && rest.front() == '[') {
    const auto close = rest.find(']');
    return std::string(rest.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1));
  }
  const auto colon = rest.rfind(':');
  std::string host(rest.substr(0, colon));
  // "tcp://eth0;127.0.0.1:5555" names a source interface first: the address is after ';'.
  if (const auto semi = host.rfind(';'); semi != std::string::npos) host = host.substr(semi + 1);
  return host;
}

}  // namespace

Expected<KeyPair> generate_keypair() {
  std::array<char, kZ85KeyChars + 1> pub{};
  std::array<char, kZ85KeyChars + 1> sec{};
  if (zmq_curve_keypair(pub.data(), sec.data()) != 0) {
    return make_error("cannot generate a CURVE key pair: {} (libzmq built without CURVE?)", zmq_strerror(zmq_errno()));
  }
  return KeyPair{pub.data(), sec.data()};
}

Status check_public_key(std::string_view key, std::string_view what) {
  if (!decodes(key)) {
    return make_error("{} must be a CURVE public key: 40 Z85 characters (from adaptlink-run keygen), got {} characters",
                      what, key.size());
  }
  return Ok{};
}

Expected<KeyPair> read_key_file(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return Error{fmt::format("key file is readable by others (mode {:03o}): chmod 600 it", st.st_mode & 0777),
                 path.string(), 0, 0};
  }
  auto text = read_input_file(path, "key file", 64 << 10);
  if (!text) return text.error();
  const auto j = nlohmann::json::parse(*text, nullptr, false);
  if (!j.is_object() || !j.contains("public_key") || !j.contains("secret_key") || !j["public_key"].is_string() ||
      !j["secret_key"].is_string()) {
    return Error{"not a key file (expected {\"public_key\", \"secret_key\"} from adaptlink-run keygen)", path.string(),
                 0, 0};
  }
  KeyPair key{j["public_key"].get<std::string>(), j["secret_key"].get<std::string>()};
  if (!decodes(key.public_key) || !decodes(key.secret_key)) {
    return Error{"the key file's keys are not 40 Z85 characters each", path.string(), 0, 0};
  }
  // The public key must be the secret key's (a pasted public key of another pair would make every peer refuse).
  std::array<char, kZ85KeyChars + 1> derived{};
  if (zmq_curve_public(derived.data(), key.secret_key.c_str()) != 0 || key.public_key != derived.data()) {
    return Error{"the key file's public key is not its secret key's", path.string(), 0, 0};
  }
  return key;
}

Status write_key_file(const std::filesystem::path& path, const KeyPair& key) {
  const std::string body =
      nlohmann::json{{"public_key", key.public_key}, {"secret_key", key.secret_key}}.dump(2) + "\n";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return make_error("cannot create {}: {}", path.string(), std::strerror(errno));
  const bool ok = ::write(fd, body.data(), body.size()) == static_cast<ssize_t>(body.size());
  const bool closed = ::close(fd) == 0;
  if (!ok || !closed) return make_error("cannot write {}", path.string());
  const auto pub = path.string() + ".pub";
  std::FILE* f = std::fopen(pub.c_str(), "wx");
  if (f == nullptr) return make_error("cannot create {}: {}", pub, std::strerror(errno));
  const bool pub_ok = std::fprintf(f, "%s\n", key.public_key.c_str()) > 0;
  if (std::fclose(f) != 0 || !pub_ok) return make_error("cannot write {}", pub);
  return Ok{};
}

Expected<std::string> read_public_key(const std::string& text_or_path, std::string_view what) {
  if (decodes(text_or_path)) return text_or_path;
  std::error_code ec;
  if (!std::filesystem::exists(text_or_path, ec)) {
    return make_error("{}: '{}' is neither a public key (40 Z85 characters) nor a file", what, text_or_path);
  }
  auto text = read_input_file(text_or_path, what, 64 << 10);
  if (!text) return text.error();
  const auto j = nlohmann::json::parse(*text, nullptr, false);
  std::string key;
  if (j.is_object() && j.contains("public_key") && j["public_key"].is_string()) {
    key = j["public_key"].get<std::string>();
  } else {
    key = *text;
    while (!key.empty() && (key.back() == '\n' || key.back() == '\r' || key.back() == ' ')) key.pop_back();
  }
  if (auto st = check_public_key(key, fmt::format("{} in {}", what, text_or_path)); !st) return st.error();
  return key;
}

Status check_insecure_endpoint(const std::string& endpoint, std::string_view what) {
  if (endpoint.rfind("ipc://", 0) == 0 || endpoint.rfind("inproc://", 0) == 0) return Ok{};
  if (endpoint.rfind("tcp://", 0) == 0) {
    const std::string host = tcp_host(std::string_view(endpoint).substr(6));
    if (host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0) return Ok{};
  }
  return make_error(
      "{} {}: --insecure (plain TCP, unauthenticated) is only allowed on this machine (tcp://127.0.0.1, ipc://); "
      "use CURVE keys (adaptlink-run keygen) for other addresses",
      what, endpoint);
}

Status check_transport(const Transport& transport, const std::vector<std::string>& endpoints, std::string_view what) {
  if (transport.insecure) {
    for (const auto& e : endpoints) {
      if (auto st = check_insecure_endpoint(e, what); !st) return st;
    }
    return Ok{};
  }
  if (!decodes(transport.key.public_key) || !decodes(transport.key.secret_key)) {
    return make_error("{}: no CURVE key (--key FILE from adaptlink-run keygen, or --insecure on loopback)", what);
  }
  return Ok{};
}

namespace detail {

void RefusalLog::log(const std::string& line) { note("refused " + line); }

void RefusalLog::note(const std::string& line) {
  std::lock_guard lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  if (now - window_start_ >= window_) {
    window_start_ = now;
    printed_ = 0;
  }
  if (printed_ >= burst_) {
    ++suppressed_;
    return;
  }
  ++printed_;
  if (suppressed_ > 0) {
    std::fprintf(stderr, "adaptlink %s: %s (and %ld more lines not shown)\n", who_.c_str(), line.c_str(), suppressed_);
    suppressed_ = 0;
  } else {
    std::fprintf(stderr, "adaptlink %s: %s\n", who_.c_str(), line.c_str());
  }
  std::fflush(stderr);
}

Authenticator::Authenticator(zmq::context_t& ctx, RefusalLog& log) : socket_(ctx, zmq::socket_type::rep), log_(log) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.bind(kZapEndpoint);
  thread_ = std::thread([this] { loop(); });
}

Authenticator::~Authenticator() {
  stop_ = true;
  thread_.join();
}

void Authenticator::allow(const std::string& group, const std::set<std::string>& keys) {
  std::lock_guard lock(mu_);
  keys_[group] = keys;
}

bool Authenticator::allowed(const std::string& key) {
  std::lock_guard lock(mu_);
  for (const auto& [group, keys] : keys_) {
    if (keys.count(key) > 0) return true;
  }
  return false;
}

void Authenticator::loop() {
  while (!stop_) {
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    try {
      zmq::poll(&item, 1, std::chrono::milliseconds(100));
    } catch (const zmq::error_t&) {
      continue;
    }
    if ((item.revents & ZMQ_POLLIN) == 0) continue;
    // Request (RFC 27): version, request id, domain, address, routing id, mechanism, credentials...
    std::vector<std::string> frames;
    zmq::message_t part;
    do {
      if (!socket_.recv(part, zmq::recv_flags::none)) break;
      frames.emplace_back(static_cast<const char*>(part.data()), part.size());
    } while (part.more());
    std::string status = "400";
    std::string text = "unknown key";
    std::string user;
    if (frames.size() < 6) {
      text = "malformed ZAP request";
    } else if (frames[5] != "CURVE" || frames.size() < 7 || frames[6].size() != kKeyBytes) {
      text = "not a CURVE handshake";
      log_.log(fmt::format("a {} connection from {} (CURVE is required)", frames[5], frames[3]));
    } else {
      const std::string key = z85(reinterpret_cast<const uint8_t*>(frames[6].data()));
      if (allowed(key)) {
        status = "200";
        text = "OK";
        user = key;
      } else {
        log_.log(fmt::format("a connection from {}: key {} is not one it serves or works with", frames[3], key));
      }
    }
    const std::string request_id = frames.size() > 1 ? frames[1] : std::string();
    const std::vector<std::string> reply = {"1.0", request_id, status, text, user, ""};
    try {
      for (size_t i = 0; i < reply.size(); ++i) {
        socket_.send(zmq::buffer(reply[i]), i + 1 < reply.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
      }
    } catch (const zmq::error_t&) {
    }
  }
}

void secure_server(zmq::socket_t& socket, const Transport& transport) {
  if (transport.insecure) return;
  socket.set(zmq::sockopt::curve_server, true);
  socket.set(zmq::sockopt::curve_secretkey, transport.key.secret_key);
  socket.set(zmq::sockopt::zap_domain, kZapDomain);
}

void secure_client(zmq::socket_t& socket, const Transport& transport, const std::string& server_key) {
  if (transport.insecure) return;
  socket.set(zmq::sockopt::curve_serverkey, server_key);
  socket.set(zmq::sockopt::curve_publickey, transport.key.public_key);
  socket.set(zmq::sockopt::curve_secretkey, transport.key.secret_key);
}

HandshakeMonitor::HandshakeMonitor(zmq::context_t& ctx, zmq::socket_t& socket, std::string own_public_key)
    : pair_(ctx, zmq::socket_type::pair), own_public_key_(std::move(own_public_key)) {
  static std::atomic<uint64_t> counter{0};
  const std::string endpoint = fmt::format("inproc://adaptlink-monitor-{}", counter++);
  const int events = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                     ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
  if (zmq_socket_monitor(socket.handle(), endpoint.c_str(), events) != 0) {
    throw zmq::error_t();
  }
  pair_.set(zmq::sockopt::linger, 0);
  pair_.connect(endpoint);
}

std::string HandshakeMonitor::failure() {
  while (true) {
    zmq::message_t event;
    if (!pair_.recv(event, zmq::recv_flags::dontwait)) break;
    zmq::message_t address;
    if (event.more()) (void)pair_.recv(address, zmq::recv_flags::none);
    if (event.size() < 6) continue;
    uint16_t id = 0;
    uint32_t value = 0;
    std::memcpy(&id, event.data(), 2);
    std::memcpy(&value, static_cast<const char*>(event.data()) + 2, 4);
    if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH && auth_.empty()) {
      auth_ = fmt::format("it refused this coordinator's key (ZAP status {}): start it with --coordinator-key {}",
                          value, own_public_key_);
    } else if (!failed_since_) {
      failed_since_ = std::chrono::steady_clock::now();
    }
  }
  if (!auth_.empty()) return auth_;
  // A refusal can come with a protocol failure first: a key mismatch is named once no refusal followed it.
  if (failed_since_ && std::chrono::steady_clock::now() - *failed_since_ > std::chrono::milliseconds(300)) {
    return "the security handshake failed: its key is not the one given for it (scenario public_key, "
           "--worker-keys), or it does not speak CURVE (--insecure on one side only)";
  }
  return {};
}

}  // namespace detail

}  // namespace adaptlink::exec

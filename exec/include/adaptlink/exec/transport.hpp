// Who may talk to whom between the coordinator and its workers: ZeroMQ CURVE (authenticated, encrypted; Debian's
// libzmq built with libsodium) by default, plain TCP only when asked for with --insecure and only on this machine.
//
//   keys      a CURVE key pair: a 40-character Z85 public key and its secret key. `adaptlink-run keygen --out F`
//             writes F (JSON {"public_key", "secret_key"}, mode 0600) and F.pub (the public key, one line).
//   worker    listens as a CURVE server with its own key and lets in the coordinators it was started for
//             (--coordinator-key) and, for steps, the other workers of its current coordinator's run (the hello
//             lists their public keys). A worker belongs to one coordinator at a time (its lease); see worker.hpp.
//   coordinator  listens for results as a CURVE server with its key and lets in its workers' keys only (scenario
//             `public_key` per device, or --worker-keys); it connects to each worker knowing that worker's key,
//             so a process that answers at a worker's address without its secret key never gets the hello.
//   refused   a peer whose key is not let in never gets a connection (ZeroMQ's ZAP handler refuses it during the
//             handshake; the refusal is logged, rate-limited); nothing it sends arrives.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "adaptlink/error.hpp"

namespace adaptlink::exec {

struct KeyPair {
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;
};

// How a process's sockets are secured: CURVE with `key`, or plain TCP (`insecure`: loopback and ipc:// only).
struct Transport {
  bool insecure = false;
  KeyPair key;  // CURVE: this process's key pair (required)
};

// A fresh key pair (libzmq's zmq_curve_keypair).
Expected<KeyPair> generate_keypair();
// A 40-character Z85 string that decodes to 32 bytes; the error names `what` ("scenario device 'nx' public_key").
Status check_public_key(std::string_view key, std::string_view what);
// Reads a key file written by write_key_file: a regular file, not readable by group or others (as ssh requires of
// a private key), with a valid pair.
Expected<KeyPair> read_key_file(const std::filesystem::path& path);
// Writes `key` to `path` (mode 0600, refusing to replace an existing file) and its public key to path + ".pub".
Status write_key_file(const std::filesystem::path& path, const KeyPair& key);
// A public key given on the command line: the key itself, or a file holding it (a .pub file or a key file).
Expected<std::string> read_public_key(const std::string& text_or_path, std::string_view what);

// Whether plain TCP may be used for `endpoint`: tcp:// to a loopback address (127.x.x.x, ::1, localhost), ipc://,
// inproc://. The error says why not and what to do instead.
Status check_insecure_endpoint(const std::string& endpoint, std::string_view what);
// The checks of a Transport: a key pair unless insecure; every endpoint loopback when insecure.
Status check_transport(const Transport& transport, const std::vector<std::string>& endpoints, std::string_view what);

}  // namespace adaptlink::exec

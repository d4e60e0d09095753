// A pipeline worker (`adaptlink-run worker`): holds one or more stages of the model (its own and preloaded
// backups), runs the steps that reach it in the order of the hello's "schedule" (decode-first by default: a
// recovery's rebuilds, then decode steps, go before prefills, and a running prefill yields to them between its
// nodes; fifo: arrival order; see detail::next_message in exec/src/runtime.hpp) and sends each result straight to
// the next stage's worker (or the sampled token to the coordinator).
//
// Threads: the receiver owns the listening ROUTER socket (answers hello, ping and malformed messages at once,
// queues steps); the compute thread runs stages; the sender delivers results, applying the testbed's link
// emulation (latency + bytes / bandwidth, FIFO per destination) when the coordinator asked for one; a route message
// changes a link's shape from then on (a testbed link fault). A hello starts a new session: stages, logs, queued
// steps and unsent results of the old one are dropped (a worker that hung and came back starts clean).
//
// Who is obeyed (transport.hpp): the worker listens as a CURVE server and lets in only the coordinators it was
// started for (WorkerOptions::coordinator_keys) and the run's other workers (the hello's peer_keys). A worker
// belongs to one coordinator at a time, the lease: the hello names a lease id (the coordinator's ZeroMQ routing id
// too) and, once accepted, only that coordinator's connection (its key and routing id) may send hello, route, end,
// release and shutdown; steps come from it or from the peers. Another coordinator's hello is refused ("busy")
// until the owner releases the worker (the end of its run) or has been silent for lease_timeout_s (it died). A
// worker loads only its own --model, or a checkpoint under its --model-root that the hello names; its error
// replies name nothing of this machine (no fingerprint, no paths).
//
// Per request and stage the worker logs what it produced (and the step sequence numbers it has seen), so that
//   * a step that arrives again (the coordinator re-issues in-flight steps after a failover) is answered from
//     the log instead of being computed twice (idempotent replay);
//   * a step that arrives before its predecessor was rebuilt waits for it;
//   * a "rebuild" step (the KV cache of a replacement stage) passes through stages that have a log and is
//     computed as one prefill by the first stage that has none.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <string>

#include "adaptlink/error.hpp"
#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/transport.hpp"
#include "adaptlink/exec/wire.hpp"

namespace adaptlink::exec {

struct WorkerOptions {
  std::string listen = "tcp://127.0.0.1:*";  // "*" as the port: any free port (reported via on_listening)
  std::filesystem::path model;                // this machine's checkpoint copy
  std::filesystem::path model_root;           // without --model: a hello's model_dir must lie under it
  int threads = 0;                            // CPU threads for libtorch (0: its default)
  wire::Limits limits;
  Transport transport;                        // CURVE key (or insecure: loopback only)
  std::vector<std::string> coordinator_keys;  // public keys of the coordinators it serves (CURVE)
  double lease_timeout_s = 30;                // an owner silent this long has lost the worker
};

// Binds `listen`, calls on_listening with the bound endpoint, then serves until a shutdown message or until
// *stop becomes true. Errors: an endpoint that cannot be bound, a --model that is not a checkpoint, no model source
// (--model or --model-root), no key or no coordinator key (CURVE), --insecure on an address that is not loopback.
Status run_worker(const WorkerOptions& options, const std::function<void(const std::string&)>& on_listening,
                  const std::atomic<bool>* stop = nullptr);

// Identity of a checkpoint for the handshake: a hash of config.json and of every tensor's name, dtype and
// shape (not the weights: hashing gigabytes would dominate start-up). 16 hex digits.
std::string model_fingerprint(const Checkpoint& checkpoint);

}  // namespace adaptlink::exec

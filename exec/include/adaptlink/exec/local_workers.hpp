// Worker processes on this machine (`generate --stages K`, `testbed`, tests): each is `adaptlink-run worker
// --listen tcp://127.0.0.1:*` started with fork/exec; its first stdout line names the port it bound.
// Security (transport.hpp): by default each worker gets a fresh CURVE key pair (a key file in a private temporary
// folder, removed with this object) and serves only a coordinator key made for this set of workers (transport());
// insecure: every worker is started with --insecure.
// The destructor stops them (SIGCONT for a stopped one, SIGTERM, then SIGKILL) and reaps them; a worker also dies
// with this process (PR_SET_PDEATHSIG: with the thread that started it, so start and restart them on a thread that
// outlives them), so none is left behind, stopped or not.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/exec/coordinator.hpp"
#include "adaptlink/exec/transport.hpp"

namespace adaptlink::exec {

class LocalWorkers {
 public:
  explicit LocalWorkers(bool insecure = false) : insecure_(insecure) {}
  LocalWorkers(const LocalWorkers&) = delete;
  LocalWorkers& operator=(const LocalWorkers&) = delete;
  ~LocalWorkers();

  // Starts `count` workers of `binary` (the adaptlink-run executable) with extra arguments (e.g. --threads 2).
  // Waits up to timeout_s for each to report its endpoint.
  Status start(const std::filesystem::path& binary, int count, const std::vector<std::string>& extra_args,
               double timeout_s = 30);

  // Starts worker i again (after it exited: a rejoin); its new endpoint replaces the old one.
  Expected<std::string> restart(int i, double timeout_s = 30);

  [[nodiscard]] int size() const { return static_cast<int>(pids_.size()); }
  [[nodiscard]] const std::vector<std::string>& endpoints() const { return endpoints_; }
  // Worker i's CURVE public key ("" when insecure).
  [[nodiscard]] const std::vector<std::string>& public_keys() const { return public_keys_; }
  // What a coordinator of these workers uses: the coordinator key they serve, or insecure.
  [[nodiscard]] const Transport& transport() const { return transport_; }
  // Sends a signal to worker i (SIGKILL, SIGSTOP, SIGCONT, ...).
  void signal(int i, int sig);
  // Worker i's process id (e.g. to read its /proc entry).
  [[nodiscard]] pid_t pid(int i) const { return pids_[static_cast<size_t>(i)]; }
  // Whether worker i has exited (reaps it).
  bool exited(int i);
  // Whether worker i is stopped (SIGSTOP sent, no SIGCONT since) and has not exited.
  bool stopped(int i);
  void stop_all();

 private:
  // fork/exec of worker i; its endpoint once it reports it.
  Expected<std::pair<pid_t, std::string>> spawn(int i, double timeout_s);
  // The key pairs (CURVE): the coordinator's and one per worker, in key_dir_.
  Status make_keys(int count);
  [[nodiscard]] std::filesystem::path key_file(int i) const { return key_dir_ / fmt::format("worker-{}.key", i); }

  std::filesystem::path binary_;
  std::vector<std::string> extra_args_;
  std::vector<pid_t> pids_;
  std::vector<bool> reaped_;
  std::vector<bool> stopped_;
  std::vector<std::string> endpoints_;
  bool insecure_ = false;
  Transport transport_;
  std::filesystem::path key_dir_;
  std::vector<std::string> public_keys_;
};

// The coordinator's surroundings when it runs on LocalWorkers it started (generate --stages, tests): a worker
// whose process exited is lost at once. names[i] is worker i's name in the PipelineSpec.
class LocalWorkersEnvironment : public Environment {
 public:
  LocalWorkersEnvironment(LocalWorkers& workers, std::vector<std::string> names)
      : workers_(workers), names_(std::move(names)), reported_(names_.size(), false) {}
  std::vector<EnvEvent> poll(double now_s) override;

 protected:
  LocalWorkers& workers_;
  std::vector<std::string> names_;
  std::vector<bool> reported_;
};

// This process's executable (/proc/self/exe), to start workers of the same build.
std::filesystem::path self_executable();

}  // namespace adaptlink::exec

#include "adaptlink/exec/local_workers.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace adaptlink::exec {

namespace {

// Reads one line from fd within the deadline ("" on timeout or EOF).
std::string read_line(int fd, std::chrono::steady_clock::time_point deadline) {
  std::string line;
  while (std::chrono::steady_clock::now() < deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(1, left.count()))) <= 0) continue;
    char c = 0;
    const ssize_t n = ::read(fd, &c, 1);
    if (n <= 0) return "";
    if (c == '\n') return line;
    line.push_back(c);
  }
  return "";
}

}  // namespace

std::filesystem::path self_executable() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path() : p;
}

LocalWorkers::~LocalWorkers() {
  stop_all();
  if (!key_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(key_dir_, ec);
  }
}

Status LocalWorkers::make_keys(int count) {
  transport_.insecure = insecure_;
  if (insecure_) {
    public_keys_.assign(static_cast<size_t>(count), "");
    return Ok{};
  }
  auto coordinator = generate_keypair();
  if (!coordinator) return coordinator.error();
  transport_.key = *coordinator;
  if (key_dir_.empty()) {
    const auto tmp = std::filesystem::temp_directory_path() / "adaptlink-keys-XXXXXX";
    std::string templ = tmp.string();
    if (::mkdtemp(templ.data()) == nullptr) {
      return make_error("cannot create a folder for the workers' keys in {}", tmp.parent_path().string());
    }
    key_dir_ = templ;
  }
  for (int i = static_cast<int>(public_keys_.size()); i < count; ++i) {
    auto key = generate_keypair();
    if (!key) return key.error();
    if (auto st = write_key_file(key_file(i), *key); !st) return st;
    public_keys_.push_back(key->public_key);
  }
  return Ok{};
}

Expected<std::pair<pid_t, std::string>> LocalWorkers::spawn(int i, double timeout_s) {
  int fds[2];
  if (::pipe(fds) != 0) return make_error("cannot start a worker: pipe() failed");
  std::vector<std::string> args = {binary_.string(), "worker", "--listen", "tcp://127.0.0.1:*"};
  if (insecure_) {
    args.emplace_back("--insecure");
  } else {
    args.insert(args.end(), {"--key", key_file(i).string(), "--coordinator-key", transport_.key.public_key});
  }
  args.insert(args.end(), extra_args_.begin(), extra_args_.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return make_error("cannot start a worker: fork() failed");
  }
  if (pid == 0) {
    // Dies with this process, however it ends: a worker left stopped (SIGSTOP) would otherwise never exit.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // it ended before the prctl
    ::close(fds[0]);
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[1]);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                              std::chrono::duration<double>(timeout_s));
  // "adaptlink-run worker: listening on tcp://127.0.0.1:PORT"
  const std::string line = read_line(fds[0], deadline);
  ::close(fds[0]);
  const auto at = line.find("tcp://");
  if (at == std::string::npos) {
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return make_error("a worker (pid {}) did not report its endpoint within {:g} s", pid, timeout_s);
  }
  return std::make_pair(pid, line.substr(at));
}

Status LocalWorkers::start(const std::filesystem::path& binary, int count, const std::vector<std::string>& extra_args,
                           double timeout_s) {
  if (binary.empty() || ::access(binary.c_str(), X_OK) != 0) {
    return make_error("cannot start workers: '{}' is not an executable", binary.string());
  }
  binary_ = binary;
  extra_args_ = extra_args;
  if (auto st = make_keys(count); !st) return st;
  for (int i = 0; i < count; ++i) {
    auto w = spawn(i, timeout_s);
    if (!w) return w.error();
    pids_.push_back(w->first);
    reaped_.push_back(false);
    stopped_.push_back(false);
    endpoints_.push_back(w->second);
  }
  return Ok{};
}

Expected<std::string> LocalWorkers::restart(int i, double timeout_s) {
  if (i < 0 || i >= size()) return make_error("no worker {}", i);
  if (!exited(i)) return make_error("worker {} is still running", i);
  auto w = spawn(i, timeout_s);
  if (!w) return w.error();
  pids_[static_cast<size_t>(i)] = w->first;
  reaped_[static_cast<size_t>(i)] = false;
  stopped_[static_cast<size_t>(i)] = false;
  endpoints_[static_cast<size_t>(i)] = w->second;
  return w->second;
}

void LocalWorkers::signal(int i, int sig) {
  if (i < 0 || i >= size() || reaped_[static_cast<size_t>(i)]) return;
  if (::kill(pids_[static_cast<size_t>(i)], sig) != 0) return;
  if (sig == SIGSTOP) stopped_[static_cast<size_t>(i)] = true;
  if (sig == SIGCONT) stopped_[static_cast<size_t>(i)] = false;
}

bool LocalWorkers::stopped(int i) {
  return !exited(i) && stopped_[static_cast<size_t>(i)];
}

bool LocalWorkers::exited(int i) {
  if (i < 0 || i >= size()) return true;
  if (reaped_[static_cast<size_t>(i)]) return true;
  int status = 0;
  if (::waitpid(pids_[static_cast<size_t>(i)], &status, WNOHANG) == pids_[static_cast<size_t>(i)]) {
    reaped_[static_cast<size_t>(i)] = true;
  }
  return reaped_[static_cast<size_t>(i)];
}

void LocalWorkers::stop_all() {
  for (int i = 0; i < size(); ++i) {
    signal(i, SIGCONT);  // first: a stopped process keeps a SIGTERM pending until it continues
    signal(i, SIGTERM);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  for (int i = 0; i < size(); ++i) {
    while (!exited(i) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!exited(i)) {
      signal(i, SIGKILL);
      int status = 0;
      ::waitpid(pids_[static_cast<size_t>(i)], &status, 0);
      reaped_[static_cast<size_t>(i)] = true;
    }
  }
  pids_.clear();
  reaped_.clear();
  stopped_.clear();
  endpoints_.clear();
}

std::vector<EnvEvent> LocalWorkersEnvironment::poll(double now_s) {
  std::vector<EnvEvent> out;
  for (int w = 0; w < workers_.size() && static_cast<size_t>(w) < names_.size(); ++w) {
    if (reported_[static_cast<size_t>(w)] || !workers_.exited(w)) continue;
    reported_[static_cast<size_t>(w)] = true;
    out.push_back({EnvEvent::Kind::worker_lost, names_[static_cast<size_t>(w)], runtime::LossCause::process_exit, "", now_s});
  }
  return out;
}

}  // namespace adaptlink::exec

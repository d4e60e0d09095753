// A replicated plan (planner/replicas.hpp), served as the simulator runs it (sim/simulator.hpp): every replica its
// own pipeline on its own workers (those of its stages' devices) with its in_flight, serving its share of the
// requests (deal_requests), all replicas at once on their own threads and starting together (a gate that every
// replica's coordinator passes once its workers are loaded); the report merges them as the simulator does
// (runtime::merge_replicas).
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <mutex>
#include <numeric>
#include <regex>
#include <thread>

#include "adaptlink/planner/replicas.hpp"
#include "serve_internal.hpp"

namespace adaptlink::exec {

namespace {

// Replicated plans: request i of `n` goes to the replica whose share is least served so far ((given + 1/2) / share,
// the lowest index on a tie), so every replica gets exactly its share and the shares interleave in request order.
// The shares are partition::share_requests's (each at least its in_flight), trimmed to `n` (the largest, later
// replicas first) when the replicas' in_flight add up to more requests than there are.
std::vector<std::vector<size_t>> deal_requests(const std::vector<partition::Replica>& replicas, size_t n) {
  auto shares = partition::share_requests(replicas, static_cast<long long>(n));
  long long total = std::accumulate(shares.begin(), shares.end(), 0LL);
  while (total > static_cast<long long>(n)) {
    --*std::max_element(shares.rbegin(), shares.rend());  // the last of the largest: earlier replicas keep theirs
    --total;
  }
  std::vector<std::vector<size_t>> out(replicas.size());
  for (size_t i = 0; i < n; ++i) {
    size_t best = replicas.size();
    for (size_t r = 0; r < replicas.size(); ++r) {
      const auto given = static_cast<long long>(out[r].size());
      if (given >= shares[r]) continue;
      // (2 given_r + 1) / share_r < (2 given_b + 1) / share_b, in integers.
      if (best == replicas.size() ||
          (2 * given + 1) * shares[best] < (2 * static_cast<long long>(out[best].size()) + 1) * shares[r]) {
        best = r;
      }
    }
    out[best].push_back(i);
  }
  return out;
}

// Where replica r's coordinator listens: `listen` itself for replica 0 or a wildcard port (tcp://HOST:*), the port
// plus r for a numbered one, else `listen` with "-r" appended (an ipc:// path).
std::string replica_listen(const std::string& listen, size_t r) {
  if (r == 0 || listen.ends_with(":*")) return listen;
  static const std::regex numbered("^(.*):([0-9]+)$");
  std::smatch m;
  if (std::regex_match(listen, m, numbered)) return fmt::format("{}:{}", m[1].str(), std::stoi(m[2].str()) + static_cast<int>(r));
  return fmt::format("{}-{}", listen, r);
}

// Start gate (every replica handshaken) and cancellation (a replica failed), shared by the replicas' environments.
struct Gate {
  std::mutex mutex;
  std::condition_variable cv;
  size_t arrived = 0;
  size_t running = 0;
  std::atomic<bool> failed{false};
};

// A replica's surroundings: the testbed's exits and emulated links for its own workers (no faults are injected on
// replicated plans), and the start gate.
class ReplicaEnvironment final : public Environment {
 public:
  ReplicaEnvironment(Gate& gate, Testbed* testbed, std::vector<int> global, std::vector<std::string> names)
      : gate_(gate), testbed_(testbed), global_(std::move(global)), names_(std::move(names)),
        reported_(global_.size(), false) {}

  std::vector<EnvEvent> poll(double now_s) override {
    std::vector<EnvEvent> events;
    if (testbed_ == nullptr) return events;
    for (size_t w = 0; w < global_.size(); ++w) {
      if (reported_[w] || !testbed_->exited(global_[w])) continue;
      reported_[w] = true;
      events.push_back({EnvEvent::Kind::worker_lost, names_[w], runtime::LossCause::process_exit, "", now_s});
    }
    return events;
  }
  [[nodiscard]] LinkShape link(int from_worker, int to_worker) const override {
    if (testbed_ == nullptr) return {};
    return testbed_->link(global_[static_cast<size_t>(from_worker)], global_[static_cast<size_t>(to_worker)]);
  }
  [[nodiscard]] bool emulates_loads() const override { return testbed_ != nullptr; }
  Status ready() override {
    std::unique_lock lock(gate_.mutex);
    ++gate_.arrived;
    gate_.cv.notify_all();
    gate_.cv.wait(lock, [&] { return gate_.arrived == gate_.running || gate_.failed.load(); });
    if (gate_.failed) return make_error("cancelled");
    return Ok{};
  }
  bool cancelled() override { return gate_.failed.load(); }

 private:
  Gate& gate_;
  Testbed* testbed_;
  std::vector<int> global_;  // its workers' indices among all of the run's
  std::vector<std::string> names_;
  std::vector<bool> reported_;
};

}  // namespace

Expected<ServeOutcome> serve_replicated(const ServeOptions& options, ServedPlan& served, Testbed* testbed) {
  const auto& sc = served.scenario();
  const auto& cost = served.cost();
  const auto& plan = served.plan;
  const auto& replicas = plan.replicas;
  const auto& requests = served.requests;
  const auto dealt = deal_requests(replicas, requests.size());

  struct Part {
    size_t replica = 0;
    PipelineSpec spec;
    CoordinatorOptions co;
    std::vector<ExecRequest> requests;
    std::unique_ptr<ReplicaEnvironment> environment;
    std::optional<Expected<ExecRun>> run;
  };
  std::vector<Part> parts;
  parts.reserve(replicas.size());
  Gate gate;
  std::mutex progress_mutex;
  std::optional<size_t> first_failure;
  std::vector<size_t> done(replicas.size(), 0);

  for (size_t r = 0; r < replicas.size(); ++r) {
    if (dealt[r].empty()) continue;  // fewer requests than replicas
    const auto& rep = replicas[r];
    Part part;
    part.replica = r;
    // The replica's workers: those of its stages' devices, numbered from 0; the other devices have none.
    runtime::WorkerMap map;
    map.worker_of_device.assign(sc.devices.size(), -1);
    std::vector<WorkerSpec> workers;
    std::vector<int> global;
    std::vector<std::string> names;
    for (const auto& st : rep.stages) {
      const auto d = static_cast<size_t>(st.device);
      if (map.worker_of_device[d] >= 0) continue;
      map.worker_of_device[d] = static_cast<int>(workers.size());
      map.device_of_worker.push_back(st.device);
      const int all = served.map.worker(st.device);
      global.push_back(all);
      workers.push_back(served.spec.workers[static_cast<size_t>(all)]);
      names.push_back(workers.back().name);
    }
    part.spec = pipeline_of(rep.stages, {}, map, workers);
    part.spec.recovery = RecoverySpec{&cost, map, nullptr, false};  // moves within the replica, no re-planning
    for (size_t i : dealt[r]) part.requests.push_back(requests[i]);
    part.environment = std::make_unique<ReplicaEnvironment>(gate, testbed, global, names);

    auto& co = part.co;
    co = served.co;
    co.in_flight = rep.in_flight;
    co.listen = replica_listen(served.co.listen, r);
    co.environment = part.environment.get();
    co.progress = nullptr;
    if (options.progress) {
      co.progress = [&progress_mutex, &done, r, total = requests.size()](size_t d, size_t) {
        std::lock_guard lock(progress_mutex);
        done[r] = d;
        const size_t sum = std::accumulate(done.begin(), done.end(), size_t{0});
        std::fprintf(stderr, "\r%zu/%zu requests", sum, total);
        if (sum == total) std::fprintf(stderr, "\n");
        std::fflush(stderr);
      };
    }
    parts.push_back(std::move(part));
  }
  gate.running = parts.size();

  std::vector<std::thread> threads;
  for (auto& part : parts) {
    threads.emplace_back([&part, &gate, &first_failure] {
      Expected<ExecRun> run = make_error("no run");
      try {
        run = run_pipeline(part.spec, part.requests, part.co);
      } catch (const std::exception& e) {
        run = make_error("{}", e.what());
      }
      if (!run) {
        std::lock_guard lock(gate.mutex);
        if (!gate.failed) first_failure = part.replica;
        gate.failed = true;
        gate.cv.notify_all();
      }
      part.run = std::move(run);
    });
  }
  for (auto& t : threads) t.join();
  if (first_failure) {
    for (const auto& part : parts) {
      if (part.replica != *first_failure) continue;
      auto e = part.run->error();
      e.message = fmt::format("replica {} ({} stages): {}", part.replica, replicas[part.replica].stages.size(), e.message);
      return e;
    }
  }

  // One run from the replicas', times from the earliest start; each replica accounted on its own (on the merged
  // clock), then merged as the simulator merges them.
  std::vector<ExecRun> runs;
  std::vector<std::vector<size_t>> indices;
  for (auto& part : parts) {
    runs.push_back(std::move(**part.run));
    indices.push_back(dealt[part.replica]);
  }
  const ExecRun merged = merge_exec_runs(runs, indices, requests.size());
  std::vector<runtime::ReplicaRun> own(replicas.size());
  for (size_t p = 0; p < parts.size(); ++p) {
    const size_t r = parts[p].replica;
    ExecRun part = merged;
    part.results.clear();
    for (size_t i : indices[p]) part.results.push_back(merged.results[i]);
    part.faults.clear();
    const auto rec = record_exec_run(part, served.device_names, replicas[r].in_flight);
    own[r] = {rec.report(sc.name, "exec", plan.planner), rec.completions_s(), rec.latencies_ms(), rec.tokens(),
              rec.ttfts_ms(), rec.tpots_ms()};
  }
  ServeOutcome outcome;
  outcome.report = runtime::merge_replicas(sc, replicas, own, "exec", plan.planner);
  outcome.report.faults = merged.faults;
  outcome.predicted_rps = plan.predicted.throughput_rps;
  outcome.results = merged.results;
  for (const auto& r : requests) outcome.request_ids.push_back(r.id);
  if (!options.out.empty()) {
    auto st = write_outputs(options, merged.results, outcome.report, outcome.predicted_rps,
                            make_exec_trace(merged, served.device_names), partition::to_json(plan, cost));
    if (!st) return st.error();
  }
  outcome.plan = plan;
  return outcome;
}

}  // namespace adaptlink::exec

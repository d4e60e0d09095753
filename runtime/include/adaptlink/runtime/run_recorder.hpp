// How a run is accounted, once for every back-end: the simulator records into a RunRecorder as its actors run,
// the coordinator's run is recorded from its results and stage events, and a replicated run merges its replicas'
// recorders. The definitions (steady window, utilisation, bubble fraction) are report.hpp's.
//
// Times are seconds on the run's own clock; calls may come in any order (intervals are kept, contiguous ones
// merged).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "adaptlink/partition/plan.hpp"
#include "adaptlink/partition/scenario.hpp"
#include "adaptlink/runtime/report.hpp"

namespace adaptlink::runtime {

class RunRecorder {
 public:
  // `requests`: how many the run was to complete (the steady window is counted on them); `in_flight`: closed loop.
  RunRecorder(std::vector<std::string> device_names, long long requests, long long in_flight, bool closed_loop);

  void admit(double t_s);  // a request entered (a Poisson run's window starts at the first)
  void complete(double admitted_s, double done_s, long long tokens);
  // The same, with the time its first token was produced and the decode steps after it (time to first token, time
  // per output token = (done - first token) / steps).
  void complete(double admitted_s, double done_s, long long tokens, double first_token_s, long long steps);
  // A request that ended with an error record (exec): neither completed nor lost; the steady window is counted on
  // the requests that did not fail.
  void fail();
  void busy(int device, double start_s, double end_s);
  void holds_stage(int device);  // it held a stage at some time of the run (the bubble fraction's devices)
  void fault(FaultRecord record);
  std::vector<FaultRecord>& faults() { return faults_; }

  // The steady window (seconds) of the completions so far: [first_s, last_s], and whether it is one (else the
  // whole run counts: throughput = completed / time to the last completion).
  struct Window {
    double first_s = 0;
    double last_s = 0;
    long long completions = 0;  // inside it
    bool steady = false;
  };
  [[nodiscard]] Window window() const;
  // Busy time of a device inside [from_s, to_s].
  [[nodiscard]] double busy_in(int device, double from_s, double to_s) const;
  [[nodiscard]] long long completed() const { return static_cast<long long>(done_s_.size()); }
  [[nodiscard]] const std::vector<double>& completions_s() const { return done_s_; }
  [[nodiscard]] const std::vector<double>& latencies_ms() const { return latencies_ms_; }
  [[nodiscard]] const std::vector<double>& ttfts_ms() const { return ttft_ms_; }
  [[nodiscard]] const std::vector<double>& tpots_ms() const { return tpot_ms_; }
  [[nodiscard]] long long tokens() const { return tokens_; }

  [[nodiscard]] RunReport report(std::string scenario, std::string backend, std::string planner) const;

 private:
  std::vector<std::string> names_;
  long long requests_;
  long long failed_ = 0;
  long long in_flight_;
  bool closed_loop_;
  double first_admission_s_ = -1;
  std::vector<double> done_s_;  // completion order
  std::vector<double> latencies_ms_;
  std::vector<double> ttft_ms_, tpot_ms_;
  long long tokens_ = 0;
  std::vector<std::vector<std::pair<double, double>>> busy_;  // per device
  std::vector<bool> holders_;
  std::vector<FaultRecord> faults_;
};

// One replica's run, for merging: its own report and the raw numbers behind it (times on one clock for all).
struct ReplicaRun {
  RunReport report;
  std::vector<double> completions_s;
  std::vector<double> latencies_ms;
  long long tokens = 0;  // generated, over all its completed requests
  std::vector<double> ttft_ms, tpot_ms;  // per completed request that has them
};

// A replicated run (plan.replicas, every replica on its own devices) as one report: throughput over the steady
// window of every replica's completions as one closed loop of their summed in_flight, latency over every request,
// requests and faults summed; each device's utilisation is its own replica's (over that replica's steady window),
// and the bubble fraction is over the devices that hold a stage in some replica. The simulator and the workers
// merge their replicas with it.
RunReport merge_replicas(const partition::Scenario& scenario, const std::vector<partition::Replica>& replicas,
                         const std::vector<ReplicaRun>& runs, std::string backend, std::string planner);

}  // namespace adaptlink::runtime

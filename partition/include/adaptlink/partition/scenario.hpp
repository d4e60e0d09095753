// Scenario files (TOML, see DESIGN.md): the model, the devices, the network, the workload, the
// planner settings and the faults to inject. Parsing checks everything and names file, line and
// column of the first problem; unknown keys are errors.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/models/config.hpp"
#include "adaptlink/models/graph.hpp"

namespace adaptlink::partition {

enum class Role { active, standby };

struct Device {
  std::string name;
  std::string kind;  // catalogue entry it was built from ("" when fully explicit)
  double tflops = 0;        // effective dense TFLOP/s at the model dtype
  double mem_bytes = 0;     // memory available to the model
  double mem_bw_gbs = 0;    // memory bandwidth, GB/s (1e9 bytes/s)
  Role role = Role::active;
  std::string endpoint;     // adaptlink-run only
  std::string public_key;   // adaptlink-run only: its worker's CURVE public key (40 Z85 characters)
  double dropout_rate = 0;  // expected dropouts per hour
};

struct Link {
  double bandwidth_mbps = 0;  // 1e6 bit/s
  double latency_ms = 0;
};

enum class Topology { star, mesh };

// Name of the access point in a star topology; `[[links]] between = ["dev", "ap"]` sets a
// device's access link. A `between` of two devices adds a direct link (in a star it bypasses the AP).
inline constexpr std::string_view kAccessPoint = "ap";

struct Network {
  Topology topology = Topology::star;
  Link default_link{400, 2.0};
  std::map<int, Link> access;                    // star: device index -> its link to the AP
  std::map<std::pair<int, int>, Link> direct;    // (i < j) -> direct link

  // Link between device i and the AP (star): override or default.
  [[nodiscard]] Link access_link(int device) const;
  // Direct link between i and j if one is declared (mesh: every pair has one, default otherwise).
  [[nodiscard]] std::optional<Link> direct_link(int i, int j) const;
};

// closed    a closed loop of `in_flight` users: each sends its next request when its last one ends
// poisson   requests arrive at rate_per_s
// saturate  unlimited demand: a request waits for every admission slot that frees (the cluster's capacity)
enum class Arrival { closed, poisson, saturate };
// The names of the scenario's `arrival` key: "closed" | "poisson" | "saturate".
std::string_view arrival_name(Arrival arrival);

struct Workload {
  int requests = 100;
  Arrival arrival = Arrival::closed;
  // closed: the users (requests in the system); poisson: sizes the KV cache reservation. The planner admits at most
  // [planner] max_in_flight of them into the pipeline at once; the rest wait in front of it. saturate: the parser
  // sets it to the most the planner may admit (saturate_population).
  int in_flight = 4;
  double rate_per_s = 1;   // poisson only
  models::RequestShape shape;  // images_per_request, prompt_tokens, output_tokens
};

enum class Objective { throughput, latency };

// How a stage orders the steps waiting for it (every back-end: replay, simulator, workers).
//   decode_first  decode steps go before prefills, and a running prefill yields to a waiting decode
//                 step after each of its nodes (layer-level preemption: no request holds a stage for a
//                 whole prefill while the others' decode steps queue behind it)
//   fifo          arrival order; a prefill holds the stage for all of its nodes
enum class Schedule { decode_first, fifo };
// The names the scenario's `schedule` key (and the workers' hello) use: "decode-first" | "fifo".
std::string_view schedule_name(Schedule schedule);
std::optional<Schedule> parse_schedule(std::string_view name);

inline constexpr int kAutoBatch = 0;
inline constexpr int kAutoInFlight = 0;

struct PlannerSettings {
  std::string name = "adaptlink";
  Objective objective = Objective::throughput;
  bool backups = true;
  Schedule schedule = Schedule::decode_first;
  // adaptlink may serve the closed loop on several independent pipelines (replicas) on disjoint device
  // groups, each with its own share of the requests in flight, when that beats one pipeline (throughput
  // objective, no backups, no faults; see partition/src/replicas.cpp).
  bool replicas = true;
  // Up to how many waiting decode steps of one stage run as one forward (runtime::StageQueue::next_batch).
  // kAutoBatch ("auto"): as many as wait (every request in flight may join). 1: one step at a time.
  // "auto" (kAutoBatch) in a scenario: the planner chooses (make_plan, planner.hpp) and the plan carries its choice.
  int max_batch = kAutoBatch;
  // Admission limit: at most this many of the workload's requests are in the pipeline at once (each holds a KV
  // cache on every stage). kAutoInFlight ("auto", the default): the planner chooses it, up to the population.
  int max_in_flight = 0;
};
// The batch limit a stage applies: max_batch, or the requests in flight for "auto".
int effective_max_batch(const PlannerSettings& planner, int in_flight);

// Closed loop or saturation: a new request enters when one ends (every back-end runs saturate as a closed loop
// of the admission limit).
inline bool closed_loop(const Workload& w) { return w.arrival != Arrival::poisson; }
// saturate: the most requests the planner may admit at once: a third of `requests` (so the steady window of
// runtime/report.hpp forms), at most kMaxSaturateInFlight, or the fixed max_in_flight.
inline constexpr int kMaxSaturateInFlight = 1024;
int saturate_population(int requests, int max_in_flight);

enum class FaultKind { dropout, rejoin, slowdown, link };
// The names of the scenario's `kind` key and of report.json's faults[].kind: "dropout" | "rejoin" | ...
std::string_view fault_kind_name(FaultKind kind);
std::optional<FaultKind> parse_fault_kind(std::string_view name);

struct Fault {
  double at_s = 0;
  std::string device;
  FaultKind kind = FaultKind::dropout;
  double factor = 1;          // slowdown
  double bandwidth_mbps = 0;  // link
  // dropout: how the testbed makes it. kill: SIGKILL (the connection breaks); stop: SIGSTOP (the process hangs,
  // found by the heartbeat timeout; a later rejoin sends SIGCONT). The simulator treats both as a dropout
  // detected by the heartbeat timeout.
  enum class Signal { kill, stop } signal = Signal::kill;
};

// How devices are watched (both back-ends: the simulator's detection delays, the coordinator's heartbeats): every
// device answers a heartbeat each heartbeat_interval_s; one silent for heartbeat_timeout_s is lost (a dropout is
// detected that long after it happens, unless its process exit or a failed send shows it first); a device that
// comes back is seen at its first heartbeat. The scenario's [recovery] table; flags override it.
struct RecoverySettings {
  double heartbeat_interval_s = 0.5;
  double heartbeat_timeout_s = 1.5;
};

struct ModelSpec {
  std::string preset;  // preset name, or empty when `config` is used
  std::filesystem::path config;  // resolved path to a config.json
  models::Dtype dtype = models::Dtype::fp16;
  models::LlavaConfig llava;  // the loaded configuration
};

struct Scenario {
  std::string name;
  std::filesystem::path source;  // file it was read from
  ModelSpec model;
  std::vector<Device> devices;
  Network network;
  Workload workload;
  PlannerSettings planner;
  std::vector<Fault> faults;
  RecoverySettings recovery;

  [[nodiscard]] int device_index(std::string_view name) const;  // -1 when absent
};

// Whether the scenario's stages batch decode steps (effective_max_batch above 1). Then evaluate()'s closed form is an
// estimate rather than a bound (plan.cpp), and the replay decides.
inline bool batches_decode(const Scenario& scenario) {
  return effective_max_batch(scenario.planner, scenario.workload.in_flight) > 1;
}

// Devices that take part in planning (role == active), in scenario order.
std::vector<int> active_devices(const Scenario& scenario);

// A device catalogue entry (scenarios/devices.toml): defaults for `kind = "..."`.
struct CatalogueEntry {
  std::string kind;
  double tflops = 0;
  double mem_gb = 0;
  double mem_bw_gbs = 0;
  std::string description;
};

Expected<std::vector<CatalogueEntry>> load_catalogue(const std::filesystem::path& path);
// The catalogue compiled into the binary (a copy of scenarios/devices.toml).
const std::vector<CatalogueEntry>& builtin_catalogue();

// Parses a scenario file. Relative `model.config` paths resolve against the file's folder.
// Checks: types, unknown keys, ranges (positive speeds, bandwidths, memory; in_flight >= 1, ...),
// unique device names, known catalogue kinds, fault devices that exist. Whether the model fits is
// the planner's question (see partition/planner.hpp), reported the same way by `validate`.
Expected<Scenario> load_scenario(const std::filesystem::path& path);
Expected<Scenario> parse_scenario(std::string_view text, const std::filesystem::path& source);

// The resolved scenario as TOML (every default and catalogue value written out).
std::string to_toml(const Scenario& scenario);

}  // namespace adaptlink::partition

// The testbed (serve.hpp): local workers that emulate the scenario's devices, links and faults, as the coordinator's
// Environment.
#include <signal.h>

#include <cstdio>
#include <set>

#include "serve_internal.hpp"

namespace adaptlink::exec {

namespace {

// The links a link fault on `device` degrades: every link with the device at an end, as the simulator does. The cost
// model's route from the device to any other starts with such a link (the direct link between the two, or the
// device's access link of a star), and every such link starts one of those routes.
std::set<int> links_of(const partition::CostModel& cost, int device) {
  std::set<int> out;
  for (int other = 0; other < cost.num_devices(); ++other) {
    if (other != device && !cost.route(device, other).empty()) out.insert(cost.route(device, other).front().link);
  }
  return out;
}

// A fault applied at once (slowdown, link): its report entry has no detection or recovery.
runtime::FaultRecord applied_fault(double at_s, const std::string& device, partition::FaultKind kind) {
  runtime::FaultRecord rec;
  rec.at_s = at_s;
  rec.device = device;
  rec.kind = kind;
  return rec;
}

}  // namespace

Testbed::Testbed(const ServedPlan& served, const ServeOptions& options)
    : served_(served), options_(options), local_(options.transport.insecure),
      done_(served.scenario().faults.size(), false) {}

Status Testbed::start(const std::filesystem::path& binary, int workers, int threads) {
  std::vector<std::string> args = {"--model", options_.model.string()};
  if (threads > 0) args.insert(args.end(), {"--threads", std::to_string(threads)});
  auto st = local_.start(binary, workers, args);
  if (!st) return st.error();
  reported_exit_.assign(static_cast<size_t>(workers), false);
  return Ok{};
}

bool Testbed::exited(int w) {
  std::lock_guard lock(mutex_);
  return local_.exited(w);
}

void Testbed::stop_all() {
  std::lock_guard lock(mutex_);
  local_.stop_all();
}

LinkShape Testbed::link(int from_worker, int to_worker) const {
  LinkShape l;
  const auto& cost = served_.cost();
  for (const auto& hop : cost.route(served_.map.device(from_worker), served_.map.device(to_worker))) {
    auto shape = hop.spec;
    if (auto it = link_mbps_.find(hop.link); it != link_mbps_.end()) shape.bandwidth_mbps = it->second;
    l.latency_ms += shape.latency_ms;
    l.ms_per_byte += partition::hop_busy_ms(shape, 1.0);
  }
  return l;
}

std::vector<EnvEvent> Testbed::poll(double now_s) {
  std::vector<EnvEvent> events;
  if (now_s >= 0 && options_.inject_faults) {
    const auto& faults = served_.scenario().faults;
    for (size_t f = 0; f < faults.size(); ++f) {
      if (!done_[f] && now_s >= faults[f].at_s) inject(f, now_s, events);
    }
  }
  std::lock_guard lock(mutex_);
  for (int w = 0; w < local_.size(); ++w) {
    if (reported_exit_[static_cast<size_t>(w)] || !local_.exited(w)) continue;
    reported_exit_[static_cast<size_t>(w)] = true;
    events.push_back({EnvEvent::Kind::worker_lost, served_.spec.workers[static_cast<size_t>(w)].name,
                      runtime::LossCause::process_exit, "", now_s});
  }
  return events;
}

// Makes fault `f` happen: a dropout kills (SIGKILL) or stops (SIGSTOP) the device's worker; a rejoin restarts a
// killed one or continues a stopped one; a slowdown changes its factor; a link fault sets every link with the
// device at an end to the fault's bandwidth.
void Testbed::inject(size_t f, double now_s, std::vector<EnvEvent>& events) {
  const auto& fault = served_.scenario().faults[f];
  done_[f] = true;
  const int device = served_.scenario().device_index(fault.device);
  const int w = served_.map.worker(device);
  auto fired = [&] { events.push_back({EnvEvent::Kind::fault_injected, fault.device, {}, "", now_s}); };
  std::string what;  // what the testbed did, for the progress lines; empty: nothing applies
  std::lock_guard lock(mutex_);
  if (fault.kind == partition::FaultKind::dropout && w >= 0 && !local_.exited(w) && !local_.stopped(w)) {
    const bool stop = fault.signal == partition::Fault::Signal::stop;
    fired();
    local_.signal(w, stop ? SIGSTOP : SIGKILL);  // stopped: found by the heartbeat timeout
    what = stop ? "stopped (SIGSTOP)" : "killed (SIGKILL)";
  } else if (fault.kind == partition::FaultKind::rejoin && w >= 0 && local_.stopped(w)) {
    local_.signal(w, SIGCONT);  // it goes on with its old state; the coordinator's hello resets it
    fired();
    events.push_back({EnvEvent::Kind::worker_back, fault.device, {}, local_.endpoints()[static_cast<size_t>(w)], now_s});
    what = "continued (SIGCONT)";
  } else if (fault.kind == partition::FaultKind::rejoin && w >= 0 && local_.exited(w)) {
    auto endpoint = local_.restart(w);
    if (endpoint) {
      reported_exit_[static_cast<size_t>(w)] = false;
      fired();
      events.push_back({EnvEvent::Kind::worker_back, fault.device, {}, *endpoint, now_s});
    }
    what = endpoint ? "restarted" : "not restarted: " + endpoint.error().to_string();
  } else if (fault.kind == partition::FaultKind::slowdown && w >= 0 && !local_.exited(w) && !local_.stopped(w)) {
    // The coordinator, the worker's owner, tells it (a route with only the slowdown).
    EnvEvent e{EnvEvent::Kind::slowdown, fault.device, {}, "", now_s};
    e.factor = served_.spec.workers[static_cast<size_t>(w)].slowdown * fault.factor;
    events.push_back(e);
    applied_.push_back(applied_fault(now_s, fault.device, fault.kind));
    what = fmt::format("slowed by {:g}x", fault.factor);
  } else if (fault.kind == partition::FaultKind::link) {
    for (int link : links_of(served_.cost(), device)) link_mbps_[link] = fault.bandwidth_mbps;
    events.push_back({EnvEvent::Kind::links_changed, fault.device, {}, "", now_s});
    applied_.push_back(applied_fault(now_s, fault.device, fault.kind));
    what = fmt::format("links at {:g} Mbit/s", fault.bandwidth_mbps);
  }
  if (options_.progress) {
    std::fprintf(stderr, "\ntestbed: %.2f s: %s %s\n", now_s, fault.device.c_str(),
                 what.empty() ? "unchanged (this fault does not apply to its worker now)" : what.c_str());
  }
}

}  // namespace adaptlink::exec

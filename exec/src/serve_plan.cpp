// Planning a served run (adaptlink-run serve | testbed): the scenario for the checkpoint's model at the executor's
// dtype, the plan, which scenario device each worker is, and the coordinator's pipeline, recovery and options.
#include <algorithm>

#include <algorithm>

#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/generate.hpp"
#include "adaptlink/partition/profile.hpp"
#include "adaptlink/partition/testbed.hpp"
#include "adaptlink/planner/planner.hpp"
#include "adaptlink/read_file.hpp"
#include "adaptlink/read_file.hpp"
#include "serve_internal.hpp"

namespace adaptlink::exec {

models::Dtype model_dtype(const std::string& dtype) {
  if (dtype == "bf16") return models::Dtype::bf16;
  if (dtype == "fp16") return models::Dtype::fp16;
  return models::Dtype::fp32;
}

PipelineSpec pipeline_of(const std::vector<partition::Stage>& stages, const std::vector<partition::Backup>& backups,
                         const runtime::WorkerMap& map, const std::vector<WorkerSpec>& workers) {
  PipelineSpec spec;
  spec.workers = workers;
  for (auto& w : spec.workers) w.backups.clear();
  for (const auto& st : stages) spec.stages.push_back({st.first_node, st.last_node, map.worker(st.device)});
  for (const auto& b : backups) {
    for (int s : b.covers) {
      const auto& covered = stages[static_cast<size_t>(s)];
      spec.workers[static_cast<size_t>(map.worker(b.device))].backups.emplace_back(covered.first_node, covered.last_node);
    }
  }
  return spec;
}

namespace {

// The scenario for the checkpoint's model at the executor's dtype, on the scenario's devices and network.
Expected<partition::Scenario> scenario_for(const ServeOptions& options, const Checkpoint& ck) {
  auto scenario = partition::load_scenario(options.scenario);
  if (!scenario) return scenario.error();
  scenario->model.preset = options.model.filename().string();
  scenario->model.llava = ck.config();
  scenario->model.dtype = model_dtype(options.dtype);
  return scenario;
}

// --worker-keys FILE: {"device name": "public key", ...} for the scenario's workers (over their public_key).
Status apply_worker_keys(const ServeOptions& options, std::vector<WorkerSpec>& workers) {
  if (!options.worker_keys) return Ok{};
  const auto& path = *options.worker_keys;
  auto text = read_input_file(path, "worker keys file", 1 << 20);
  if (!text) return text.error();
  const auto j = nlohmann::json::parse(*text, nullptr, false);
  if (!j.is_object()) {
    return Error{"a worker keys file is a JSON object {\"device name\": \"public key\", ...}", path.string(), 0, 0};
  }
  for (const auto& [name, key] : j.items()) {
    auto it = std::find_if(workers.begin(), workers.end(), [&](const WorkerSpec& w) { return w.name == name; });
    if (it == workers.end()) {
      return Error{fmt::format("'{}' is not a device with a worker in this plan", name), path.string(), 0, 0};
    }
    if (!key.is_string()) return Error{fmt::format("'{}': the key must be a string", name), path.string(), 0, 0};
    if (auto st = check_public_key(key.get<std::string>(), fmt::format("'{}'", name)); !st) {
      return Error{st.error().message, path.string(), 0, 0};
    }
    it->public_key = key.get<std::string>();
  }
  return Ok{};
}

}  // namespace

Expected<std::vector<std::pair<std::string, std::pair<int, int>>>> plan_stages(const ServeOptions& options) {
  auto ck = Checkpoint::open(options.model);
  if (!ck) return ck.error();
  auto scenario = scenario_for(options, *ck);
  if (!scenario) return scenario.error();
  auto problem = partition::make_problem(std::move(*scenario));
  const auto& sc = problem->scenario;
  auto plan = partition::make_plan(*problem->cost, sc.planner.name, sc.planner.objective);
  if (!plan) return plan.error();
  std::vector<std::pair<std::string, std::pair<int, int>>> out;
  for (const auto& st : plan->stages) {
    out.push_back({sc.devices[static_cast<size_t>(st.device)].name, {st.first_node, st.last_node}});
  }
  return out;
}

Expected<ServedPlan> plan_served_run(const ServeOptions& options) {
  auto ck = Checkpoint::open(options.model);
  if (!ck) return ck.error();
  auto scenario = scenario_for(options, *ck);
  if (!scenario) return scenario.error();
  if (options.in_flight) scenario->workload.in_flight = *options.in_flight;
  if (options.max_batch) scenario->planner.max_batch = *options.max_batch;
  if (options.backups) scenario->planner.backups = *options.backups;
  if (options.planner) scenario->planner.name = *options.planner;
  if (options.heartbeat_interval_s) scenario->recovery.heartbeat_interval_s = *options.heartbeat_interval_s;
  if (options.heartbeat_timeout_s) scenario->recovery.heartbeat_timeout_s = *options.heartbeat_timeout_s;
  if (scenario->recovery.heartbeat_timeout_s < scenario->recovery.heartbeat_interval_s) {
    return make_error("the heartbeat timeout ({} s) must be at least the heartbeat interval ({} s)",
                      scenario->recovery.heartbeat_timeout_s, scenario->recovery.heartbeat_interval_s);
  }
  ServedPlan served;
  served.problem = partition::make_problem(std::move(scenario).value());
  auto applied = partition::apply_profiles(options.profiles, *served.problem->cost);
  if (!applied) return applied.error();
  {
    const auto& sc = served.scenario();
    auto plan = partition::make_plan(served.cost(), sc.planner.name, sc.planner.objective);
    if (!plan) return plan.error();
    served.plan = std::move(*plan);
  }
  // The run's scenario and cost model are the plan's: its admission limit (in flight) and batch limit, which the
  // coordinator and the workers take from them below, and recovery re-plans with.
  partition::adopt(*served.problem, served.plan);
  const auto& sc = served.scenario();
  const auto& cost = served.cost();
  if (!served.plan.replicas.empty() && options.testbed && options.inject_faults && !sc.faults.empty()) {
    return make_error(
        "faults are not injected on replicated plans ({} replicas): plan one pipeline to inject them (set [planner] "
        "replicas = false in the scenario), or run without faults (--no-faults)",
        served.plan.replicas.size());
  }

  // Requests.
  bool ignore_eos = options.ignore_eos;
  if (options.requests) {
    auto r = read_requests(*options.requests, options.model, sc.workload.shape.output_tokens);
    if (!r) return r.error();
    served.requests = std::move(r).value();
  } else {
    served.requests = synthetic_requests(ck->config(), sc.workload.shape,
                                         options.synthetic_requests.value_or(sc.workload.requests), options.seed);
    ignore_eos = true;  // synthetic requests generate exactly output_tokens, as the simulator assumes
  }

  // Workers: one per scenario device that holds a stage or a backup (testbed: every device).
  const int n = static_cast<int>(sc.devices.size());
  std::vector<bool> used(static_cast<size_t>(n), options.testbed);
  for (const auto& st : served.plan.stages) used[static_cast<size_t>(st.device)] = true;
  for (const auto& b : served.plan.backups) used[static_cast<size_t>(b.device)] = true;
  for (const auto& rep : served.plan.replicas) {
    for (const auto& st : rep.stages) used[static_cast<size_t>(st.device)] = true;
  }
  served.map.worker_of_device.assign(static_cast<size_t>(n), -1);
  std::vector<WorkerSpec> workers;
  for (int d = 0; d < n; ++d) {
    const auto& dev = sc.devices[static_cast<size_t>(d)];
    served.device_names.push_back(dev.name);
    if (!used[static_cast<size_t>(d)] && dev.endpoint.empty()) continue;
    if (!options.testbed && dev.endpoint.empty()) {
      return Error{fmt::format("device '{}' holds a stage or backup but has no endpoint (its worker's address)",
                               dev.name),
                   sc.source.string(), 0, 0};
    }
    served.map.worker_of_device[static_cast<size_t>(d)] = static_cast<int>(workers.size());
    served.map.device_of_worker.push_back(d);
    workers.push_back(
        {dev.name, dev.endpoint, options.testbed ? partition::testbed_slowdown(sc, d) : 1.0, {}, dev.public_key});
  }
  if (!options.testbed) {
    if (auto st = apply_worker_keys(options, workers); !st) return st.error();
  }
  served.spec = pipeline_of(served.plan.stages, served.plan.backups, served.map, workers);
  // Recovery decides on the scenario's devices, and re-plans with the scenario's planner (runtime/recovery.hpp).
  runtime::PlanFunction replan = [name = sc.planner.name, objective = sc.planner.objective](const partition::CostModel& c) {
    return partition::make_plan(c, name, objective);
  };
  served.spec.recovery = RecoverySpec{&cost, served.map, std::move(replan), !served.plan.backups.empty()};

  auto& co = served.co;
  co.model = options.model;
  co.dtype = options.dtype;
  co.exec_device = options.device;
  co.listen = options.listen;
  co.transport = options.transport;
  co.in_flight = sc.workload.in_flight;
  co.schedule = sc.planner.schedule;  // the workers order their steps as the plan's prediction assumed
  co.max_batch = partition::effective_max_batch(sc.planner, sc.workload.in_flight);  // and batch them so
  if (!ignore_eos) co.eos_ids = read_eos_ids(options.model, ck->config());
  co.hello_timeout_s = options.hello_timeout_s;
  co.heartbeat_interval_s = sc.recovery.heartbeat_interval_s;
  co.heartbeat_timeout_s = sc.recovery.heartbeat_timeout_s;
  return served;
}

}  // namespace adaptlink::exec

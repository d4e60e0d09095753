#include "adaptlink/exec/serve.hpp"

#include <ATen/ATen.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <fstream>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <regex>
#include <set>
#include <thread>
#include <utility>

#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/local_workers.hpp"
#include "adaptlink/exec/tensor_io.hpp"
#include "adaptlink/exec/tokenizer.hpp"
#include "adaptlink/planner/backup.hpp"
#include "adaptlink/planner/planner.hpp"
#include "adaptlink/partition/problem.hpp"
#include "adaptlink/partition/profile.hpp"
#include "adaptlink/planner/replicas.hpp"
#include "adaptlink/runtime/run_recorder.hpp"
#include "adaptlink/partition/testbed.hpp"
#include "runtime.hpp"

namespace adaptlink::exec {

namespace {

Error at_line(const std::filesystem::path& file, int line, std::string message) {
  return Error{std::move(message), file.string(), line, 0};
}

std::optional<Tokenizer> load_tokenizer(const std::filesystem::path& model) {
  const auto path = model / "tokenizer.model";
  if (!std::filesystem::exists(path)) return std::nullopt;
  auto t = Tokenizer::load(path);
  if (!t) return std::nullopt;
  return std::move(t).value();
}

// Synthetic requests of the scenario's shape: <bos>, the image tokens, random text ids; random pixels.
std::vector<ExecRequest> synthetic_requests(const models::LlavaConfig& config, const models::RequestShape& shape,
                                            int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t vocab = config.text.vocab_size;
  std::uniform_int_distribution<int64_t> token(3, vocab - 1);
  std::vector<ExecRequest> out;
  for (int i = 0; i < count; ++i) {
    ExecRequest r;
    r.id = fmt::format("r{}", i);
    r.input_ids.push_back(1);
    for (int k = 0; k < config.image_tokens_per_image() * shape.images; ++k) r.input_ids.push_back(config.image_token_index);
    for (int k = 1; k < shape.prompt_tokens; ++k) {
      int64_t t = token(rng);
      if (t == config.image_token_index) t = 2;
      r.input_ids.push_back(t);
    }
    if (shape.images > 0) {
      at::Tensor pixels = at::empty({shape.images, config.vision.num_channels, config.vision.image_size,
                                     config.vision.image_size});
      std::normal_distribution<float> normal(0.0F, 1.0F);
      auto* p = pixels.data_ptr<float>();
      for (int64_t k = 0; k < pixels.numel(); ++k) p[k] = normal(rng);
      r.pixel_values = pixels;
    }
    r.max_new_tokens = shape.output_tokens;
    out.push_back(std::move(r));
  }
  return out;
}

models::Dtype model_dtype(const std::string& dtype) {
  if (dtype == "bf16") return models::Dtype::bf16;
  if (dtype == "fp16") return models::Dtype::fp16;
  return models::Dtype::fp32;
}

Status write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) return make_error("cannot write {}", path.string());
  return Ok{};
}

// Testbed slowdown fault: tells a worker its new emulated slowdown (a route message with "slowdown").
Status set_worker_slowdown(const std::string& endpoint, double factor) {
  zmq::context_t ctx;
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  detail::configure_socket(s);
  s.set(zmq::sockopt::rcvtimeo, 5000);
  s.connect(endpoint);
  wire::Message m;
  m.type = wire::MsgType::route;
  m.meta = {{"slowdown", factor}};
  if (!detail::send_frames(s, wire::encode(m))) return make_error("cannot reach the worker at {}", endpoint);
  auto frames = detail::recv_frames(s, true);
  if (!frames) return make_error("the worker at {} did not answer", endpoint);
  auto reply = wire::decode(*frames);
  if (!reply) return reply.error();
  if (reply->type != wire::MsgType::ready) return make_error("{}", reply->meta.value("message", std::string("refused")));
  return Ok{};
}

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

// Stages and their backups in worker indices (worker_of: scenario device -> worker, -1 for none).
Placement placement_of(const std::vector<partition::Stage>& stages, const std::vector<partition::Backup>& backups,
                       const std::vector<int>& worker_of, size_t workers) {
  Placement placement;
  placement.backups.resize(workers);
  for (const auto& stage : stages) {
    placement.stages.push_back({stage.first_node, stage.last_node, worker_of[static_cast<size_t>(stage.device)]});
  }
  for (const auto& b : backups) {
    for (int s : b.covers) {
      const auto& covered = stages[static_cast<size_t>(s)];
      placement.backups[static_cast<size_t>(worker_of[static_cast<size_t>(b.device)])].emplace_back(
          covered.first_node, covered.last_node);
    }
  }
  return placement;
}

// A plan's stages and backups in worker indices (worker_of: scenario device -> worker, -1 for none).
Placement placement_of(const partition::Plan& plan, const std::vector<int>& worker_of, size_t workers) {
  return placement_of(plan.stages, plan.backups, worker_of, workers);
}

// The testbed's emulation of the scenario's network for a pipeline whose worker w runs scenario device
// device_of[w]: each link's shape from the cost model's route (a bandwidth in `link_mbps`, the testbed's link faults
// so far, replaces its hop's; read at every call), and a redeploy's emulated weight transfer.
void emulate_network(PipelineSpec& spec, const partition::CostModel& cost, std::vector<int> device_of,
                     const std::map<int, double>* link_mbps) {
  spec.link = [&cost, link_mbps, device_of](int from, int to) {
    LinkShape l;
    for (const auto& hop : cost.route(device_of[static_cast<size_t>(from)], device_of[static_cast<size_t>(to)])) {
      auto shape = hop.spec;
      if (link_mbps != nullptr) {
        if (auto it = link_mbps->find(hop.link); it != link_mbps->end()) shape.bandwidth_mbps = it->second;
      }
      l.latency_ms += shape.latency_ms;
      l.ms_per_byte += partition::hop_busy_ms(shape, 1.0);
    }
    return l;
  };
  spec.redeploy_ms = [&cost, device_of = std::move(device_of)](int to, int first, int last) {
    partition::Stage st;
    st.first_node = first;
    st.last_node = last;
    return partition::redeploy_ms(cost, st, device_of[static_cast<size_t>(to)]);
  };
}

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

// DIR/{outputs.jsonl, report.json, trace.json, plan.json}.
Status write_outputs(const ServeOptions& options, const std::vector<ExecResult>& results,
                     const runtime::RunReport& report, double predicted_rps, const nlohmann::json& trace,
                     const nlohmann::json& plan) {
  std::error_code ec;
  std::filesystem::create_directories(options.out, ec);
  if (ec) return make_error("cannot create {}: {}", options.out.string(), ec.message());
  auto tokenizer = load_tokenizer(options.model);
  std::string lines;
  for (const auto& r : results) {
    nlohmann::json j = {{"id", r.id}, {"generated", r.generated}, {"latency_ms", r.latency_ms}};
    if (tokenizer) j["text"] = tokenizer->decode(r.generated);
    lines += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  auto report_json = runtime::to_json(report);
  report_json["predicted_throughput_rps"] = predicted_rps;
  for (const auto& [file, text] :
       std::vector<std::pair<std::string, std::string>>{{"outputs.jsonl", lines},
                                                        {"report.json", report_json.dump(2) + "\n"},
                                                        {"trace.json", trace.dump() + "\n"},
                                                        {"plan.json", plan.dump(2) + "\n"}}) {
    auto st = write_text(options.out / file, text);
    if (!st) return st.error();
  }
  return Ok{};
}


// A replicated plan (partition/replicas.hpp), served as the simulator runs it (sim/simulator.hpp): every replica
// its own pipeline on its own workers (those of its stages' devices) with its in_flight, serving its share of the
// requests (deal_requests), all replicas at once on their own threads and starting together; the report merges
// them as the simulator does (throughput over the steady window of every completion with the summed in_flight,
// latency over every request, each device's utilisation from its replica's run).
Expected<ServeOutcome> serve_replicated(const ServeOptions& options, const partition::CostModel& cost,
                                        partition::Plan plan, const std::vector<ExecRequest>& requests,
                                        const PipelineSpec& all, const std::vector<int>& worker_of,
                                        const CoordinatorOptions& base,
                                        LocalWorkers* local, const std::vector<std::string>& names) {
  const auto& sc = cost.scenario();
  const auto& replicas = plan.replicas;
  const auto dealt = deal_requests(replicas, requests.size());

  struct Part {
    size_t replica = 0;
    PipelineSpec spec;
    CoordinatorOptions co;
    std::vector<ExecRequest> requests;
    std::vector<size_t> global;  // its workers' indices in `all`
    std::optional<Expected<ExecRun>> run;
  };
  std::vector<Part> parts;
  parts.reserve(replicas.size());
  // Start gate (every replica handshaken) and cancellation (a replica failed).
  std::mutex mutex;
  std::condition_variable cv;
  size_t arrived = 0;
  std::atomic<bool> failed{false};
  std::optional<size_t> first_failure;
  std::vector<size_t> done(replicas.size(), 0);
  std::mutex local_mutex;  // LocalWorkers is not thread-safe (exited() reaps)

  for (size_t r = 0; r < replicas.size(); ++r) {
    if (dealt[r].empty()) continue;  // fewer requests than replicas
    const auto& rep = replicas[r];
    Part part;
    part.replica = r;
    std::vector<int> rworker_of(worker_of.size(), -1);
    std::vector<int> rdevice_of;
    for (const auto& st : rep.stages) {
      const auto d = static_cast<size_t>(st.device);
      if (rworker_of[d] >= 0) continue;
      rworker_of[d] = static_cast<int>(part.spec.workers.size());
      rdevice_of.push_back(st.device);
      part.global.push_back(static_cast<size_t>(worker_of[d]));
      WorkerSpec w = all.workers[static_cast<size_t>(worker_of[d])];
      w.backups.clear();
      part.spec.workers.push_back(std::move(w));
    }
    part.spec.stages = placement_of(rep.stages, {}, rworker_of, part.spec.workers.size()).stages;
    if (options.testbed) emulate_network(part.spec, cost, rdevice_of, nullptr);  // no link faults on replicas
    for (size_t i : dealt[r]) part.requests.push_back(requests[i]);

    auto& co = part.co;
    co = base;
    co.in_flight = rep.in_flight;
    co.listen = replica_listen(base.listen, r);
    co.tick = nullptr;  // no faults on replicated plans
    co.fault_time = nullptr;
    co.poll_rejoined = nullptr;
    co.poll_relinked = nullptr;
    co.poll_lost = nullptr;
    if (local != nullptr) {
      co.poll_lost = [local, &local_mutex, global = part.global, ws = part.spec.workers](double) {
        std::lock_guard lock(local_mutex);
        std::vector<std::string> gone;
        for (size_t w = 0; w < global.size(); ++w) {
          if (local->exited(static_cast<int>(global[w]))) gone.push_back(ws[w].name);
        }
        return gone;
      };
    }
    co.progress = nullptr;
    if (options.progress) {
      co.progress = [&mutex, &done, r, total = requests.size()](size_t d, size_t) {
        std::lock_guard lock(mutex);
        done[r] = d;
        const size_t sum = std::accumulate(done.begin(), done.end(), size_t{0});
        std::fprintf(stderr, "\r%zu/%zu requests", sum, total);
        if (sum == total) std::fprintf(stderr, "\n");
        std::fflush(stderr);
      };
    }
    parts.push_back(std::move(part));
  }
  const size_t running = parts.size();
  for (auto& part : parts) {
    part.co.ready = [&]() -> Status {
      std::unique_lock lock(mutex);
      ++arrived;
      cv.notify_all();
      cv.wait(lock, [&] { return arrived == running || failed.load(); });
      if (failed) return make_error("cancelled");
      return Ok{};
    };
    part.co.cancelled = [&failed] { return failed.load(); };
  }

  std::vector<std::thread> threads;
  for (auto& part : parts) {
    threads.emplace_back([&part, &mutex, &cv, &failed, &first_failure] {
      Expected<ExecRun> run = make_error("no run");
      try {
        run = run_pipeline(part.spec, part.requests, part.co);
      } catch (const std::exception& e) {
        run = make_error("{}", e.what());
      }
      if (!run) {
        std::lock_guard lock(mutex);
        if (!failed) first_failure = part.replica;
        failed = true;
        cv.notify_all();
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

  // One run from the replicas', times from the earliest start; the report as the simulator merges it.
  std::vector<ExecRun> runs;
  std::vector<std::vector<size_t>> indices;
  int in_flight = 0;
  for (auto& part : parts) {
    runs.push_back(std::move(**part.run));
    indices.push_back(dealt[part.replica]);
    in_flight += replicas[part.replica].in_flight;
  }
  const ExecRun merged = merge_exec_runs(runs, indices, requests.size());
  ServeOutcome outcome;
  // Each replica accounted on its own (times on the merged clock), then merged as the simulator merges them.
  std::vector<runtime::ReplicaRun> own(replicas.size());
  for (size_t p = 0; p < parts.size(); ++p) {
    const size_t r = parts[p].replica;
    ExecRun part = merged;
    part.results.clear();
    for (size_t i : indices[p]) part.results.push_back(merged.results[i]);
    part.faults.clear();
    const auto rec = record_exec_run(part, names, replicas[r].in_flight);
    own[r] = {rec.report(sc.name, "exec", plan.planner), rec.completions_s(), rec.latencies_ms(), rec.tokens()};
  }
  outcome.report = runtime::merge_replicas(sc, replicas, own, "exec", plan.planner);
  outcome.report.faults = merged.faults;
  outcome.predicted_rps = plan.predicted.throughput_rps;
  outcome.results = merged.results;
  for (const auto& r : requests) outcome.request_ids.push_back(r.id);
  if (!options.out.empty()) {
    auto st = write_outputs(options, merged.results, outcome.report, outcome.predicted_rps,
                            make_exec_trace(merged, names), partition::to_json(plan, cost));
    if (!st) return st.error();
  }
  outcome.plan = std::move(plan);
  return outcome;
}
}  // namespace

Expected<std::vector<ExecRequest>> read_requests(const std::filesystem::path& file, const std::filesystem::path& model,
                                                 int default_max_new_tokens) {
  std::ifstream in(file);
  if (!in) return Error{"cannot open the requests file", file.string(), 0, 0};
  auto loaded = load_checkpoint_config(model);  // the config is all a request needs
  if (!loaded) return loaded.error();
  const auto& config = *loaded;
  std::optional<Tokenizer> tokenizer = load_tokenizer(model);
  std::optional<ImageProcessorConfig> processor;
  const auto base = file.parent_path();
  auto resolve = [&](const std::string& p) {
    std::filesystem::path path(p);
    return path.is_absolute() ? path : base / path;
  };
  std::vector<ExecRequest> out;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return at_line(file, number, "not a JSON object");
    for (const auto& [key, value] : j.items()) {
      if (key != "id" && key != "prompt" && key != "input_ids" && key != "image" && key != "pixel_values" &&
          key != "max_new_tokens") {
        return at_line(file, number, fmt::format("unknown key '{}'", key));
      }
    }
    ExecRequest r;
    if (j.contains("id")) {
      if (j["id"].is_string()) {
        r.id = j["id"].get<std::string>();
      } else if (j["id"].is_number_integer()) {
        r.id = std::to_string(j["id"].get<int64_t>());
      } else {
        return at_line(file, number, "'id' must be a string or an integer");
      }
    } else {
      r.id = std::to_string(out.size());
    }
    if (j.contains("image") && j.contains("pixel_values")) {
      return at_line(file, number, "give 'image' or 'pixel_values', not both");
    }
    if (j.contains("image")) {
      if (!j["image"].is_string()) return at_line(file, number, "'image' must be a path");
      if (!processor) {
        auto p = checkpoint_image_processor(model, config);
        if (!p) return p.error();
        processor = *p;
      }
      auto pv = pixel_values_for_image(resolve(j["image"].get<std::string>()), *processor);
      if (!pv) return at_line(file, number, pv.error().to_string());
      r.pixel_values = *pv;
    } else if (j.contains("pixel_values")) {
      if (!j["pixel_values"].is_string()) return at_line(file, number, "'pixel_values' must be a path");
      auto pv = read_safetensors_tensor(resolve(j["pixel_values"].get<std::string>()), "pixel_values");
      if (!pv) return at_line(file, number, pv.error().to_string());
      r.pixel_values = pv->dim() == 3 ? pv->unsqueeze(0) : *pv;
    }
    const bool has_image = r.pixel_values.defined();
    if (j.contains("prompt") == j.contains("input_ids")) {
      return at_line(file, number, "give exactly one of 'prompt' and 'input_ids'");
    }
    if (j.contains("input_ids")) {
      if (!j["input_ids"].is_array() || j["input_ids"].empty()) {
        return at_line(file, number, "'input_ids' must be a non-empty array of token ids");
      }
      for (const auto& id : j["input_ids"]) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= config.text.vocab_size) {
          return at_line(file, number, fmt::format("'input_ids' must be ids in [0, {})", config.text.vocab_size));
        }
        r.input_ids.push_back(id.get<int64_t>());
      }
    } else {
      if (!j["prompt"].is_string()) return at_line(file, number, "'prompt' must be a string");
      if (!tokenizer) {
        return at_line(file, number, fmt::format("{} has no tokenizer.model: use input_ids", model.string()));
      }
      const std::string text = llava_prompt_text(j["prompt"].get<std::string>(), has_image);
      r.input_ids = tokenize_with_images(*tokenizer, text, config.image_token_index,
                                         has_image ? config.image_tokens_per_image() * static_cast<int>(r.pixel_values.size(0)) : 0);
    }
    r.max_new_tokens = default_max_new_tokens;
    if (j.contains("max_new_tokens")) {
      if (!j["max_new_tokens"].is_number_integer() || j["max_new_tokens"].get<int64_t>() < 0) {
        return at_line(file, number, "'max_new_tokens' must be a non-negative integer");
      }
      r.max_new_tokens = j["max_new_tokens"].get<int>();
    }
    out.push_back(std::move(r));
  }
  if (out.empty()) return Error{"no requests in the file", file.string(), 0, 0};
  return out;
}

Expected<ServeOutcome> run_serve(const ServeOptions& options) {
  auto scenario = partition::load_scenario(options.scenario);
  if (!scenario) return scenario.error();
  auto ck = Checkpoint::open(options.model);
  if (!ck) return ck.error();
  // Plan for the checkpoint's model at the executor's dtype, on the scenario's devices and network.
  scenario->model.preset = options.model.filename().string();
  scenario->model.llava = ck->config();
  scenario->model.dtype = model_dtype(options.dtype);
  if (options.in_flight) scenario->workload.in_flight = *options.in_flight;
  if (options.backups) scenario->planner.backups = *options.backups;
  if (options.planner) scenario->planner.name = *options.planner;
  // Replicated plans (partition/replicas.hpp) are served as the simulator runs them: every replica its own
  // pipeline, all at once. The planner replicates only without backups and without [[faults]].
  auto problem = partition::make_problem(std::move(scenario).value());
  auto applied = partition::apply_profiles(options.profiles, *problem->cost);
  if (!applied) return applied.error();
  const auto& sc = problem->scenario;
  const auto& cost = *problem->cost;
  auto plan = partition::make_plan(cost, sc.planner.name, sc.planner.objective);
  if (!plan) return plan.error();
  if (!plan->replicas.empty() && options.testbed && options.inject_faults && !sc.faults.empty()) {
    return make_error(
        "faults are not injected on replicated plans ({} replicas): plan one pipeline to inject them (set [planner] "
        "replicas = false in the scenario), or run without faults (--no-faults)",
        plan->replicas.size());
  }

  // Requests.
  std::vector<ExecRequest> requests;
  bool ignore_eos = options.ignore_eos;
  if (options.requests) {
    auto r = read_requests(*options.requests, options.model, sc.workload.shape.output_tokens);
    if (!r) return r.error();
    requests = std::move(r).value();
  } else {
    requests = synthetic_requests(ck->config(), sc.workload.shape,
                                  options.synthetic_requests.value_or(sc.workload.requests), options.seed);
    ignore_eos = true;  // synthetic requests generate exactly output_tokens, as the simulator assumes
  }

  // Workers: one per scenario device that holds a stage or a backup (testbed: every device).
  const int n = static_cast<int>(sc.devices.size());
  std::vector<bool> used(static_cast<size_t>(n), options.testbed);
  for (const auto& st : plan->stages) used[static_cast<size_t>(st.device)] = true;
  for (const auto& b : plan->backups) used[static_cast<size_t>(b.device)] = true;
  for (const auto& rep : plan->replicas) {
    for (const auto& st : rep.stages) used[static_cast<size_t>(st.device)] = true;
  }
  PipelineSpec spec;
  std::vector<int> worker_of(static_cast<size_t>(n), -1);
  std::vector<int> device_of;
  for (int d = 0; d < n; ++d) {
    const auto& dev = sc.devices[static_cast<size_t>(d)];
    if (!used[static_cast<size_t>(d)] && dev.endpoint.empty()) continue;
    if (!options.testbed && dev.endpoint.empty()) {
      return Error{fmt::format("device '{}' holds a stage or backup but has no endpoint (its worker's address)",
                               dev.name),
                   sc.source.string(), 0, 0};
    }
    worker_of[static_cast<size_t>(d)] = static_cast<int>(spec.workers.size());
    device_of.push_back(d);
    WorkerSpec w;
    w.name = dev.name;
    w.endpoint = dev.endpoint;
    w.slowdown = options.testbed ? partition::testbed_slowdown(sc, d) : 1.0;
    spec.workers.push_back(w);
  }
  const Placement initial = placement_of(*plan, worker_of, spec.workers.size());
  spec.stages = initial.stages;
  for (size_t w = 0; w < spec.workers.size(); ++w) spec.workers[w].backups = initial.backups[w];
  // Re-planning on the workers that are up (a dropout without backup, a rejoin): every other device (down, or
  // without a worker) becomes a standby without memory, so the planner gives it nothing.
  spec.replan = [&](const std::vector<bool>& up) -> Expected<Placement> {
    partition::Scenario copy = sc;
    copy.faults.clear();
    copy.planner.replicas = false;  // the workers that are up serve one pipeline
    for (size_t d = 0; d < copy.devices.size(); ++d) {
      const int w = worker_of[d];
      if (w >= 0 && up[static_cast<size_t>(w)]) continue;
      copy.devices[d].role = partition::Role::standby;
      copy.devices[d].mem_bytes = 0;
    }
    auto replanned = partition::make_problem(std::move(copy));
    auto st = partition::apply_profiles(options.profiles, *replanned->cost);
    if (!st) return st.error();
    auto p = partition::make_plan(*replanned->cost, sc.planner.name, sc.planner.objective);
    if (!p) return p.error();
    return placement_of(*p, worker_of, spec.workers.size());
  };
  std::map<int, double> link_mbps;  // testbed link faults: the bandwidth of each degraded link, from then on
  if (options.testbed) {
    emulate_network(spec, cost, device_of, &link_mbps);
  }

  // Testbed: start the emulating workers and schedule the faults.
  LocalWorkers local;
  std::map<std::string, double> fired;  // device -> time its latest fault was injected
  std::vector<std::pair<std::string, std::string>> rejoined;  // restarted or continued workers not yet taken back
  std::vector<std::string> relinked;                          // devices whose links changed, not yet re-sent
  std::vector<runtime::FaultRecord> at_once;  // slowdown and link faults: applied at once (no detection, recovery)
  std::vector<bool> done_fault(sc.faults.size(), false);
  CoordinatorOptions co;
  co.model = options.model;
  co.dtype = options.dtype;
  co.exec_device = options.device;
  co.listen = options.listen;
  co.in_flight = sc.workload.in_flight;
  co.schedule = sc.planner.schedule;  // the workers order their steps as the plan's prediction assumed
  if (!ignore_eos) co.eos_ids = read_eos_ids(options.model, ck->config());
  co.hello_timeout_s = options.hello_timeout_s;
  co.heartbeat_interval_s = options.heartbeat_interval_s;
  co.heartbeat_timeout_s = options.heartbeat_timeout_s;
  if (options.testbed) {
    std::vector<std::string> args;
    if (options.worker_threads > 0) args = {"--threads", std::to_string(options.worker_threads)};
    auto st = local.start(options.worker_binary, static_cast<int>(spec.workers.size()), args);
    if (!st) return st.error();
    for (size_t w = 0; w < spec.workers.size(); ++w) spec.workers[w].endpoint = local.endpoints()[w];
  }
  std::vector<std::string> names;
  for (const auto& d : sc.devices) names.push_back(d.name);
  if (!plan->replicas.empty()) {
    auto outcome = serve_replicated(options, cost, std::move(plan).value(), requests, spec, worker_of, co,
                                    options.testbed ? &local : nullptr, names);
    local.stop_all();
    return outcome;
  }
  if (options.testbed) {
    co.poll_lost = [&local, &spec](double) {
      std::vector<std::string> gone;
      for (int w = 0; w < local.size(); ++w) {
        if (local.exited(w)) gone.push_back(spec.workers[static_cast<size_t>(w)].name);
      }
      return gone;
    };
    if (options.inject_faults) {
      co.tick = [&](double now_s) {
        for (size_t f = 0; f < sc.faults.size(); ++f) {
          const auto& fault = sc.faults[f];
          if (done_fault[f] || now_s < fault.at_s) continue;
          done_fault[f] = true;
          const int device = sc.device_index(fault.device);
          const int w = worker_of[static_cast<size_t>(device)];
          std::string done;  // what the testbed did, for --progress; empty: nothing applies
          if (fault.kind == partition::FaultKind::dropout && w >= 0 && !local.exited(w) && !local.stopped(w)) {
            const bool stop = fault.signal == partition::Fault::Signal::stop;
            local.signal(w, stop ? SIGSTOP : SIGKILL);  // stopped: found by the heartbeat timeout
            fired[fault.device] = now_s;
            done = stop ? "stopped (SIGSTOP)" : "killed (SIGKILL)";
          } else if (fault.kind == partition::FaultKind::rejoin && w >= 0 && local.stopped(w)) {
            local.signal(w, SIGCONT);  // it goes on with its old state; the coordinator's hello resets it
            fired[fault.device] = now_s;
            rejoined.emplace_back(fault.device, local.endpoints()[static_cast<size_t>(w)]);
            done = "continued (SIGCONT)";
          } else if (fault.kind == partition::FaultKind::rejoin && w >= 0 && local.exited(w)) {
            auto endpoint = local.restart(w);
            if (endpoint) {
              fired[fault.device] = now_s;
              rejoined.emplace_back(fault.device, *endpoint);
            }
            done = endpoint ? "restarted" : "not restarted: " + endpoint.error().to_string();
          } else if (fault.kind == partition::FaultKind::slowdown && w >= 0 && !local.exited(w) &&
                     !local.stopped(w)) {
            const double factor = spec.workers[static_cast<size_t>(w)].slowdown * fault.factor;
            auto st = set_worker_slowdown(local.endpoints()[static_cast<size_t>(w)], factor);
            at_once.push_back(applied_fault(now_s, fault.device, partition::FaultKind::slowdown));
            done = fmt::format("slowed by {:g}x{}", fault.factor, st ? "" : " (failed: " + st.error().message + ")");
          } else if (fault.kind == partition::FaultKind::link) {
            for (int link : links_of(cost, device)) link_mbps[link] = fault.bandwidth_mbps;
            relinked.push_back(fault.device);
            at_once.push_back(applied_fault(now_s, fault.device, partition::FaultKind::link));
            done = fmt::format("links at {:g} Mbit/s", fault.bandwidth_mbps);
          }
          if (options.progress) {
            std::fprintf(stderr, "\ntestbed: %.2f s: %s %s\n", now_s, fault.device.c_str(),
                         done.empty() ? "unchanged (this fault does not apply to its worker now)" : done.c_str());
          }
        }
      };
      co.poll_rejoined = [&rejoined](double) { return std::exchange(rejoined, {}); };
      co.poll_relinked = [&relinked](double) { return std::exchange(relinked, {}); };
      co.fault_time = [&fired](const std::string& device) -> std::optional<double> {
        auto it = fired.find(device);
        if (it == fired.end()) return std::nullopt;
        return it->second;
      };
    }
  }
  if (options.progress) {
    co.progress = [](size_t done, size_t total) {
      std::fprintf(stderr, "\r%zu/%zu requests", done, total);
      if (done == total) std::fprintf(stderr, "\n");
      std::fflush(stderr);
    };
  }
  auto run = run_pipeline(spec, requests, co);
  local.stop_all();
  if (!run) return run.error();

  ServeOutcome outcome;
  outcome.report = make_exec_report(*run, sc.name, plan->planner, names, sc.workload.in_flight);
  auto& faults = outcome.report.faults;
  faults.insert(faults.end(), at_once.begin(), at_once.end());
  std::stable_sort(faults.begin(), faults.end(), [](const auto& a, const auto& b) { return a.at_s < b.at_s; });
  outcome.predicted_rps = plan->predicted.throughput_rps;
  outcome.results = run->results;
  for (const auto& r : requests) outcome.request_ids.push_back(r.id);

  if (!options.out.empty()) {
    auto st = write_outputs(options, run->results, outcome.report, outcome.predicted_rps, make_exec_trace(*run, names),
                            partition::to_json(*plan, cost));
    if (!st) return st.error();
  }
  outcome.plan = std::move(plan).value();
  return outcome;
}

}  // namespace adaptlink::exec

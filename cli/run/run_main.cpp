// adaptlink-run: LLaVA inference with libtorch, in one process or as a pipeline of worker processes.
//
//   adaptlink-run generate --model DIR (--prompt TEXT | --input-ids 1,2,3) [--image FILE | --pixel-values FILE]
//                          [--max-new-tokens N] [--dtype fp32|bf16|fp16] [--device cpu|cuda] [--format text|json]
//                          [--dump-logits FILE.safetensors] [--stages K | --plan plan.json | --scenario FILE]
//                          [--threads N]
//   adaptlink-run keygen   --out FILE                       (a CURVE key pair: FILE, FILE.pub)
//   adaptlink-run worker   --listen tcp://HOST:PORT (--model DIR | --model-root DIR) (--key FILE --coordinator-key
//                          KEY | --insecure) [--threads N]
//   adaptlink-run serve    --scenario FILE --model DIR --requests FILE.jsonl (--key FILE | --insecure) [--out DIR]
//   adaptlink-run testbed  --scenario FILE --model DIR [--requests FILE.jsonl] [--out DIR] ...
//   adaptlink-run profile  --model DIR (--scenario FILE | --device NAME) ...
//
// Exit status: 0 ok; 1 the run failed (a worker lost beyond recovery, unreachable, stuck, interrupted); 2 bad input (flags, files,
// checkpoints, requests), with one line "adaptlink-run: error: ..." on stderr.
#include <ATen/Parallel.h>
#include <ATen/ops/tensor.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "adaptlink/exec/blas.hpp"
#include "adaptlink/exec/coordinator.hpp"
#include "adaptlink/exec/generate.hpp"
#include "adaptlink/exec/local_workers.hpp"
#include "adaptlink/exec/serve.hpp"
#include "adaptlink/exec/tensor_io.hpp"
#include "adaptlink/exec/tokenizer.hpp"
#include "adaptlink/exec/transport.hpp"
#include "adaptlink/exec/worker.hpp"
#include "commands.hpp"
#include "common.hpp"

namespace {

using namespace adaptlink;
using namespace adaptlink::exec;
using adaptlink::run::fail;

Expected<std::vector<int64_t>> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    // trim
    while (!item.empty() && std::isspace(static_cast<unsigned char>(item.front()))) item.erase(item.begin());
    while (!item.empty() && std::isspace(static_cast<unsigned char>(item.back()))) item.pop_back();
    if (item.empty()) return make_error("--input-ids: empty item in '{}' (expected e.g. 1,2,3)", text);
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < 0) return make_error("--input-ids: '{}' is not a non-negative integer", item);
    ids.push_back(v);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return ids;
}

struct GenerateArgs {
  std::string model;
  std::optional<std::string> prompt;
  std::optional<std::string> input_ids;
  std::optional<std::string> image;
  std::optional<std::string> pixel_values;
  int max_new_tokens = 32;
  int stages = 1;
  std::optional<std::string> plan;      // the stages of a plan JSON (adaptlink-sim plan --format json)
  std::optional<std::string> scenario;  // the stages the scenario's planner gives for this checkpoint
  int local_stages = 1;
  std::string dtype = "fp32";
  std::string device = "cpu";
  std::string format = "text";
  std::optional<std::string> dump_logits;
  int threads = 0;
};

// A pipeline's stages: names and node ranges.
struct NamedStages {
  std::vector<std::string> names;
  std::vector<std::pair<int, int>> ranges;
};

// --stages K: ranges of about equal weight bytes. --plan: a plan JSON's stages (adaptlink-sim plan --format json;
// layer indices are DAG nodes). --scenario: the scenario's planner on this checkpoint's model (serve's planning).
Expected<NamedStages> pipeline_stages(const GenerateArgs& args, const models::LayerGraph& graph) {
  NamedStages out;
  if (args.plan) {
    std::ifstream in(*args.plan);
    if (!in) return Error{"cannot read the plan", *args.plan, 0, 0};
    const auto j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("stages") || !j["stages"].is_array() || j["stages"].empty()) {
      return Error{
          "not a plan: expected a JSON object with a non-empty \"stages\" array (adaptlink-sim plan "
          "--format json)",
          *args.plan, 0, 0};
    }
    int next = 0;
    for (const auto& st : j["stages"]) {
      if (!st.is_object() || !st.value("device", nlohmann::json()).is_string() ||
          !st.value("first_layer", nlohmann::json()).is_number_integer() ||
          !st.value("last_layer", nlohmann::json()).is_number_integer()) {
        return Error{"each stage needs \"device\", \"first_layer\" and \"last_layer\"", *args.plan, 0, 0};
      }
      const int first = st["first_layer"].get<int>(), last = st["last_layer"].get<int>();
      if (first != next || last < first || last >= graph.size()) {
        return Error{fmt::format("stage [{}, {}] does not continue the pipeline at node {} (the model has nodes 0..{})",
                                 first, last, next, graph.size() - 1),
                     *args.plan, 0, 0};
      }
      out.names.push_back(st["device"].get<std::string>());
      out.ranges.emplace_back(first, last);
      next = last + 1;
    }
    if (next != graph.size()) {
      return Error{fmt::format("the stages end at node {}, the model has nodes 0..{}", next - 1, graph.size() - 1),
                   *args.plan, 0, 0};
    }
    return out;
  }
  if (args.scenario) {
    ServeOptions so;
    so.scenario = *args.scenario;
    so.model = args.model;
    so.dtype = args.dtype;
    so.synthetic_requests = 0;
    auto served = plan_stages(so);
    if (!served) return served.error();
    for (const auto& [name, range] : *served) {
      out.names.push_back(name);
      out.ranges.push_back(range);
    }
    return out;
  }
  out.ranges = split_even(graph, args.stages);
  for (size_t i = 0; i < out.ranges.size(); ++i) out.names.push_back(fmt::format("stage{}", i));
  return out;
}

// Runs one request through local worker processes, one per stage.
Expected<GenerateResult> generate_distributed(const GenerateArgs& args, const NamedStages& stages,
                                              const std::vector<int64_t>& ids, const at::Tensor& pixels,
                                              const std::vector<int64_t>& eos) {
  LocalWorkers workers;
  std::vector<std::string> extra = {"--model", args.model};
  if (args.threads > 0) extra.insert(extra.end(), {"--threads", std::to_string(args.threads)});
  auto st = workers.start(self_executable(), static_cast<int>(stages.ranges.size()), extra);
  if (!st) return st.error();
  PipelineSpec spec;
  for (size_t i = 0; i < stages.ranges.size(); ++i) {
    spec.workers.push_back({stages.names[i], workers.endpoints()[i], 1.0, {}, workers.public_keys()[i]});
    spec.stages.push_back({stages.ranges[i].first, stages.ranges[i].second, static_cast<int>(i)});
  }
  CoordinatorOptions co;
  co.transport = workers.transport();
  co.model = args.model;
  co.dtype = args.dtype;
  co.exec_device = args.device;
  co.in_flight = 1;
  co.eos_ids = eos;
  co.keep_prefill_logits = args.dump_logits.has_value();
  std::vector<std::string> names;
  for (const auto& w : spec.workers) names.push_back(w.name);
  LocalWorkersEnvironment environment(workers, names);
  co.environment = &environment;
  co.recover = false;
  ExecRequest request{"0", ids, pixels, args.max_new_tokens};
  const auto start = std::chrono::steady_clock::now();
  auto run = run_pipeline(spec, {request}, co);
  if (!run) return run.error();
  if (!run->results[0].error.empty()) return as_failure(make_error("{}", run->results[0].error));
  GenerateResult result;
  result.generated = run->results[0].generated;
  result.prefill_logits = run->results[0].prefill_logits;
  result.prompt_tokens = static_cast<int>(ids.size());
  result.decode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return result;
}

int run_generate(const GenerateArgs& args) {
  if (args.stages < 1) return fail("--stages must be >= 1");
  if (args.max_new_tokens < 0) return fail("--max-new-tokens must be >= 0");
  if (args.threads > 0) at::set_num_threads(args.threads);
  auto options = parse_exec_options(args.dtype, args.device);
  if (!options) return fail(options.error());

  const auto load_start = std::chrono::steady_clock::now();
  // LLaVA-NeXT runs in this process only so far: the workers' wire does not carry image sizes yet.
  const bool distributed = args.stages > 1 || args.plan || args.scenario;
  auto probe = Checkpoint::open(args.model, distributed ? NextCheckpoints::refuse : NextCheckpoints::accept);
  if (!probe) return fail(probe.error());
  auto graph = models::LayerGraph::build(probe->config(), models::Dtype::fp32);
  if (args.stages > graph.size()) {
    return fail(fmt::format("--stages {}: the model has {} nodes, so at most {} stages", args.stages, graph.size(),
                            graph.size()));
  }
  NamedStages stages;
  if (distributed) {
    auto made = pipeline_stages(args, graph);
    if (!made) return fail(made.error());
    stages = std::move(*made);
  }
  std::unique_ptr<LlavaRunner> runner;
  if (!distributed) {
    auto loaded =
        LlavaRunner::load(args.model, *options, split_even(graph, args.local_stages), NextCheckpoints::accept);
    if (!loaded) return fail(loaded.error());
    runner = std::move(loaded).value();
  }
  const double load_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - load_start).count();
  const auto& config = probe->config();

  // Image. LLaVA-NeXT: anyres crops, and the image's size (it sets how the crops' features are laid out).
  const bool next = config.model_type == "llava_next";
  at::Tensor pixels;
  std::vector<std::array<int, 2>> image_sizes;
  if (args.image) {
    auto processor = checkpoint_image_processor(args.model, config);
    if (!processor) return fail(processor.error());
    auto px = image_pixels_for(*args.image, *processor, config);
    if (!px) return fail(px.error());
    pixels = px->pixel_values;
    image_sizes = px->image_sizes;
  } else if (args.pixel_values && next) {
    return fail(
        "--pixel-values: a LLaVA-NeXT checkpoint needs --image (the image's size sets how its crops are laid "
        "out)");
  } else if (args.pixel_values) {
    auto pv = read_safetensors_tensor(*args.pixel_values, "pixel_values");
    if (!pv) return fail(pv.error());
    pixels = *pv;
    if (pixels.dim() == 3) pixels = pixels.unsqueeze(0);
    if (pixels.dim() != 4) {
      return fail(fmt::format("{}: pixel_values has {} dimensions, expected [crops, 3, H, W]", *args.pixel_values,
                              pixels.dim()));
    }
  }

  // Prompt.
  std::optional<Tokenizer> tokenizer;
  const auto tok_path = std::filesystem::path(args.model) / "tokenizer.model";
  if (std::filesystem::exists(tok_path)) {
    auto tok = Tokenizer::load(tok_path);
    if (!tok) return fail(tok.error());
    tokenizer = std::move(tok).value();
  }
  std::vector<int64_t> ids;
  if (args.input_ids) {
    auto parsed = parse_ids(*args.input_ids);
    if (!parsed) return fail(parsed.error());
    ids = *parsed;
  } else {
    if (!tokenizer) {
      return fail(fmt::format("{} has no tokenizer.model: use --input-ids instead of --prompt", args.model));
    }
    const std::string text = llava_prompt_text(*args.prompt, pixels.defined());
    const int image_tokens = !pixels.defined() ? 0
                             : next            ? config.image_tokens_for(image_sizes[0][1], image_sizes[0][0])
                                               : config.image_tokens_per_image() * static_cast<int>(pixels.size(0));
    ids = tokenize_with_images(*tokenizer, text, config.image_token_index, image_tokens);
  }

  if (auto fits = check_context(config, ids.size(), args.max_new_tokens); !fits) return fail(fits.error());
  if (auto images = check_image_tokens(config, ids, pixels.defined()); !images) return fail(images.error());

  GenerateOptions gen;
  gen.max_new_tokens = args.max_new_tokens;
  gen.keep_prefill_logits = args.dump_logits.has_value();
  Expected<GenerateResult> result = make_error("not run");
  if (runner) {
    auto one = runner->generate_batch({GenerateRequest{ids, pixels, image_sizes}}, gen, 1);
    result = one ? Expected<GenerateResult>(std::move(one->front())) : Expected<GenerateResult>(one.error());
  } else {
    result = generate_distributed(args, stages, ids, pixels, read_eos_ids(args.model, config));
  }
  if (!result) return fail(result.error());
  // Which BLAS the fp32 matmuls ran on: in the JSON (the warning for the reference one on stderr too), else a line
  // on stderr (after the run: bad input stays one line).
  const BlasInfo blas = blas_info();
  if (args.format != "json" || blas.reference) std::fprintf(stderr, "adaptlink-run: %s\n", blas_line().c_str());

  if (args.dump_logits) {
    auto st = write_safetensors(*args.dump_logits, {{"logits", result->prefill_logits}});
    if (!st) return fail(st.error());
  }
  std::string text;
  if (tokenizer) text = tokenizer->decode(result->generated);
  const double decode_steps = std::max<double>(1.0, static_cast<double>(result->generated.size()) - 1.0);
  if (args.format == "json") {
    nlohmann::json out = {
        {"model", args.model},
        {"blas", {{"name", blas.name}, {"path", blas.path}, {"reference", blas.reference}}},
        {"dtype", args.dtype},
        {"device", args.device},
        {"prompt_tokens", result->prompt_tokens},
        {"input_ids", ids},
        {"generated", result->generated},
        {"timings",
         {{"load_ms", load_ms},
          {"prefill_ms", result->prefill_ms},
          {"decode_ms", result->decode_ms},
          {"decode_tokens_per_s", result->generated.size() > 1 ? decode_steps / (result->decode_ms / 1000.0) : 0.0}}},
    };
    if (tokenizer) out["text"] = text;
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else if (tokenizer) {
    std::cout << text << "\n";
  } else {
    std::string joined;
    for (size_t i = 0; i < result->generated.size(); ++i)
      joined += fmt::format("{}{}", i ? "," : "", result->generated[i]);
    std::cout << joined << "\n";
  }
  return 0;
}

std::atomic<bool> g_stop{false};
extern "C" void on_stop_signal(int) { g_stop = true; }

int run_worker_command(const WorkerOptions& options) {
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  auto st = run_worker(
      options,
      [](const std::string& endpoint) {
        std::printf("adaptlink-run worker: listening on %s\n", endpoint.c_str());
        std::fflush(stdout);
        // Only the warning: a testbed starts one worker per device, and says which BLAS itself.
        if (adaptlink::exec::blas_info().reference) std::fprintf(stderr, "adaptlink-run worker: %s\n", adaptlink::exec::blas_line().c_str());
      },
      &g_stop);
  if (!st) return fail(st.error());
  return 0;
}

int run_keygen_command(const std::string& out) {
  auto key = generate_keypair();
  if (!key) return fail(key.error());
  if (auto st = write_key_file(out, *key); !st) return fail(st.error());
  std::printf("%s\n", key->public_key.c_str());
  std::fprintf(stderr, "adaptlink-run keygen: wrote %s (secret, mode 600) and %s.pub\n", out.c_str(), out.c_str());
  return 0;
}

// --key FILE / --insecure of worker and serve: the Transport (an error when neither or both is given).
Expected<Transport> transport_of(const std::optional<std::string>& key_file, bool insecure) {
  Transport t;
  t.insecure = insecure;
  if (insecure && key_file) return make_error("--key and --insecure exclude each other");
  if (insecure) return t;
  if (!key_file) {
    return make_error("--key FILE is required (a key pair from adaptlink-run keygen; --insecure for plain TCP on "
                      "this machine only)");
  }
  auto key = read_key_file(*key_file);
  if (!key) return key.error();
  t.key = *key;
  return t;
}

struct WorkerArgs {
  WorkerOptions options;
  std::string model, model_root;
  std::optional<std::string> key;
  std::vector<std::string> coordinator_keys;
  bool insecure = false;
};

int run_worker_args(WorkerArgs& a) {
  auto transport = transport_of(a.key, a.insecure);
  if (!transport) return fail(transport.error());
  a.options.transport = *transport;
  a.options.model = a.model;
  a.options.model_root = a.model_root;
  for (const auto& k : a.coordinator_keys) {
    auto key = read_public_key(k, "--coordinator-key");
    if (!key) return fail(key.error());
    a.options.coordinator_keys.push_back(*key);
  }
  return run_worker_command(a.options);
}

struct ServeArgs {
  ServeOptions options;
  std::string scenario, model, out;
  std::optional<std::string> key, worker_keys;
  bool insecure = false;
  std::optional<std::string> requests;
  std::string format = "text";
  bool no_faults = false;
  bool no_backups = false;
  std::optional<std::string> max_batch;
};

void add_serve_options(CLI::App* cmd, ServeArgs& a, bool testbed) {
  cmd->add_option("--scenario", a.scenario, "scenario TOML (devices, network, workload, planner)")->required();
  cmd->add_option("--model", a.model, "checkpoint directory (the model that is planned and run)")->required();
  auto* req = cmd->add_option("--requests", a.requests,
                              "JSONL requests {id, prompt|input_ids, image|pixel_values, max_new_tokens}");
  if (!testbed) req->required();
  cmd->add_option("--out", a.out, "write DIR/{plan.json, outputs.jsonl, report.json, trace.json}");
  cmd->add_option("--planner", a.options.planner,
                  "override the scenario's planner: " + adaptlink::cli::planner_choices());
  cmd->add_option("--profile", a.options.profiles, "measured per-node times for the planner (repeatable)");
  cmd->add_option("--dtype", a.options.dtype, "fp32 | bf16 | fp16")->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  cmd->add_option("--device", a.options.device, "cpu | cuda[:N] (where workers run their stages)");
  cmd->add_option("--in-flight", a.options.in_flight, "requests in the pipeline at once (default: the scenario's)")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--max-batch", a.max_batch,
                  "N | auto: up to N waiting decode steps of a stage run as one forward; auto: every request in "
                  "flight (default: the scenario's planner.max_batch)")
      ->check([](const std::string& v) -> std::string {
        if (v == "auto") return "";
        try {
          size_t used = 0;
          const int n = std::stoi(v, &used);
          if (used == v.size() && n >= 1 && n <= 1024) return "";
        } catch (const std::exception&) {
        }
        return "expected an integer from 1 to 1024 or auto, got " + v;
      });
  cmd->add_option("--listen", a.options.listen,
                  "where the coordinator receives tokens (reachable by the workers; a replicated plan's replica r "
                  "listens on the port + r, or on another free port with port *)");
  adaptlink::cli::add_heartbeat_options(cmd, a.options.heartbeat_interval_s, a.options.heartbeat_timeout_s);
  if (!testbed) {
    cmd->add_option("--key", a.key, "this coordinator's CURVE key file (adaptlink-run keygen)");
    cmd->add_option("--worker-keys", a.worker_keys,
                    "JSON {\"device\": \"public key\"} of the workers (instead of the scenario's public_key)");
  }
  cmd->add_flag("--insecure", a.insecure,
                testbed ? "plain TCP between the local workers (default: CURVE with keys made for the run)"
                        : "plain TCP, no authentication: only with loopback or ipc:// endpoints");
  cmd->add_option("--hello-timeout-s", a.options.hello_timeout_s, "per worker: answer the handshake and load")
      ->check(adaptlink::cli::positive_seconds());
  cmd->add_flag("--ignore-eos", a.options.ignore_eos, "generate max_new_tokens for every request");
  cmd->add_flag("--no-backups", a.no_backups, "plan without backup sub-blocks (recovery by redeploy)");
  cmd->add_option("--format", a.format, "text | json (the summary on stdout)")->check(CLI::IsMember({"text", "json"}));
  cmd->add_flag(
      "--quiet", [&a](int64_t) { a.options.progress = false; }, "no progress on stderr");
  if (testbed) {
    cmd->add_option("--threads", a.options.worker_threads, "CPU threads per emulating worker")
        ->check(adaptlink::cli::thread_count());
    cmd->add_option("--synthetic", a.options.synthetic_requests,
                    "without --requests: this many requests of the scenario's shape (default: workload.requests)")
        ->check(CLI::Range(1, 10000000));
    cmd->add_option("--seed", a.options.seed, "seed of the synthetic requests");
    cmd->add_flag("--no-faults", a.no_faults, "ignore the scenario's [[faults]]");
  }
}

std::atomic<int> g_interrupt{0};
// The first SIGINT/SIGTERM stops the run cleanly (workers stopped, what ended on disk); a second one kills.
extern "C" void on_interrupt_signal(int sig) {
  g_interrupt = sig;
  std::signal(sig, SIG_DFL);
}

int run_serve_command(ServeArgs& a, bool testbed) {
  std::signal(SIGTERM, on_interrupt_signal);
  std::signal(SIGINT, on_interrupt_signal);
  auto& o = a.options;
  o.interrupt = &g_interrupt;
  o.scenario = a.scenario;
  o.model = a.model;
  o.out = a.out;
  if (a.requests) o.requests = *a.requests;
  o.testbed = testbed;
  o.inject_faults = !a.no_faults;
  if (a.no_backups) o.backups = false;
  if (a.max_batch) o.max_batch = *a.max_batch == "auto" ? adaptlink::partition::kAutoBatch : std::stoi(*a.max_batch);
  o.worker_binary = self_executable();
  if (testbed) {
    o.transport.insecure = a.insecure;
  } else {
    auto transport = transport_of(a.key, a.insecure);
    if (!transport) return fail(transport.error());
    o.transport = *transport;
    if (a.worker_keys) o.worker_keys = *a.worker_keys;
  }
  if (testbed) std::fprintf(stderr, "adaptlink-run: %s\n", blas_line().c_str());  // its local workers' BLAS
  auto outcome = run_serve(o);
  if (!outcome) return fail(outcome.error());
  const auto& r = outcome->report;
  if (a.format == "json") {
    auto j = runtime::to_json(r);
    j["predicted_throughput_rps"] = outcome->predicted_rps;
    if (!a.out.empty()) j["out"] = a.out;
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::string shape = fmt::format("{} stages", outcome->plan.stages.size());
  if (!outcome->plan.replicas
           .empty()) {  // a replicated plan: its pipelines' stage counts, e.g. "2 replicas: 1+2 stages"
    std::vector<std::string> counts;
    for (const auto& rep : outcome->plan.replicas) counts.push_back(std::to_string(rep.stages.size()));
    shape = fmt::format("{} replicas: {} stages", outcome->plan.replicas.size(), fmt::join(counts, "+"));
  }
  std::printf("%s on %s (%s, %s plan, %s)\n", testbed ? "testbed" : "serve", r.scenario.c_str(), a.model.c_str(),
              r.planner.c_str(), shape.c_str());
  std::printf("  requests      %lld completed, %lld failed, %lld lost\n", r.requests_completed, r.requests_failed,
              r.requests_lost);
  for (size_t i = 0; i < outcome->results.size(); ++i) {
    const auto& res = outcome->results[i];
    if (!res.error.empty()) std::printf("  failed        %s: %s\n", res.id.c_str(), res.error.c_str());
  }
  std::printf("  throughput    %.4f req/s measured, %.4f predicted (%.1f tokens/s)\n", r.throughput_rps,
              outcome->predicted_rps, r.tokens_per_s);
  std::printf("  latency       p50 %.0f ms, p95 %.0f ms, p99 %.0f ms\n", r.latency_ms.p50, r.latency_ms.p95,
              r.latency_ms.p99);
  for (const auto& f : r.faults) {
    if (!f.detected_s || !f.recovery_ms) {
      std::printf("  fault         %s %s at %.2f s\n", std::string(partition::fault_kind_name(f.kind)).c_str(),
                  f.device.c_str(), f.at_s);
      continue;
    }
    std::printf("  fault         %s %s at %.2f s: detected %.2f s, recovered in %.0f ms, %lld positions recomputed\n",
                std::string(partition::fault_kind_name(f.kind)).c_str(), f.device.c_str(), f.at_s, *f.detected_s,
                *f.recovery_ms, f.recomputed_tokens);
  }
  if (!a.out.empty())
    std::printf("  wrote         %s/{plan.json, outputs.jsonl, report.json, trace.json}\n", a.out.c_str());
  return 0;
}

}  // namespace

namespace {
int run_main(int argc, char** argv);
}  // namespace

int main(int argc, char** argv) { return adaptlink::cli::flush_output(run_main(argc, argv), "adaptlink-run"); }

namespace {
int run_main(int argc, char** argv) {
  CLI::App app{"adaptlink-run: LLaVA inference with libtorch"};
  app.require_subcommand(1);
  app.footer(
      "Exit status: 0 ok (requests that failed alone have their error in outputs.jsonl), 1 the run failed (a "
      "worker lost beyond recovery, unreachable, stuck, interrupted), 2 bad input (flags, files, checkpoints, "
      "a malformed requests file).");
  GenerateArgs g;
  auto* gen = app.add_subcommand("generate", "Greedy generation from a Hugging Face LLaVA checkpoint");
  gen->add_option("--model", g.model, "checkpoint directory (config.json, *.safetensors, ...)")->required();
  auto* prompt = gen->add_option("--prompt", g.prompt, "user prompt (LLaVA-1.5 template, needs tokenizer.model)");
  auto* ids = gen->add_option("--input-ids", g.input_ids, "comma-separated token ids (bypasses the tokenizer)");
  prompt->excludes(ids);
  auto* image = gen->add_option("--image", g.image, "image file (PNG, JPEG, ...)");
  auto* pv = gen->add_option("--pixel-values", g.pixel_values, "safetensors file with a 'pixel_values' tensor");
  image->excludes(pv);
  gen->add_option("--max-new-tokens", g.max_new_tokens, "tokens to generate at most (default 32)");
  auto* stages = gen->add_option("--stages", g.stages,
                                 "K > 1: run the pipeline through K local worker processes over ZeroMQ (even split)")
                     ->check(CLI::Range(1, 64));
  auto* plan_file = gen->add_option("--plan", g.plan,
                                    "run the stages of this plan JSON (adaptlink-sim plan --format json), one local "
                                    "worker process each");
  auto* scenario = gen->add_option("--scenario", g.scenario,
                                   "run the stages the scenario's planner gives for this checkpoint, one local "
                                   "worker process each");
  stages->excludes(plan_file)->excludes(scenario);
  plan_file->excludes(scenario);
  gen->add_option("--local-stages", g.local_stages, "run the model as K in-process stages (testing)")->group("");
  gen->add_option("--dtype", g.dtype, "fp32 | bf16 | fp16 (cuda)")->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  gen->add_option("--device", g.device, "cpu | cuda[:N]");
  gen->add_option("--format", g.format, "text | json")->check(CLI::IsMember({"text", "json"}));
  gen->add_option("--dump-logits", g.dump_logits, "write the prefill logits [tokens, vocab] to this safetensors file");
  gen->add_option("--threads", g.threads, "CPU threads (default: libtorch's)")->check(adaptlink::cli::thread_count());
  std::string keygen_out;
  auto* keygen = app.add_subcommand("keygen", "Make a CURVE key pair for a worker or a coordinator");
  keygen->add_option("--out", keygen_out, "key file to write (mode 600; its public key also goes to FILE.pub and stdout)")
      ->required();
  WorkerArgs wa;
  auto& wo = wa.options;
  auto* worker = app.add_subcommand("worker", "Serve pipeline stages to a coordinator over ZeroMQ");
  worker->add_option("--listen", wo.listen, "endpoint to bind, e.g. tcp://0.0.0.0:5555 (port * = any free port)")
      ->required();
  auto* wmodel = worker->add_option("--model", wa.model, "this machine's checkpoint (the only model it opens)");
  auto* wroot = worker->add_option("--model-root", wa.model_root,
                                   "without --model: open the checkpoint a coordinator names if it lies under DIR");
  wmodel->excludes(wroot);
  worker->add_option("--key", wa.key, "this worker's CURVE key file (adaptlink-run keygen)");
  worker->add_option("--coordinator-key", wa.coordinator_keys,
                     "public key (or .pub file) of a coordinator it serves (repeatable)");
  worker->add_flag("--insecure", wa.insecure, "plain TCP, no authentication: only on a loopback or ipc:// endpoint");
  worker->add_option("--lease-timeout-s", wo.lease_timeout_s,
                     "a coordinator silent this long loses this worker to the next (default 30)")
      ->check(adaptlink::cli::positive_seconds());
  worker->add_option("--threads", wo.threads, "CPU threads (default: libtorch's)")
      ->check(adaptlink::cli::thread_count());
  ServeArgs serve_args;
  auto* serve = app.add_subcommand("serve", "Plan a scenario and run requests through its devices' workers");
  add_serve_options(serve, serve_args, false);
  ServeArgs testbed_args;
  auto* testbed = app.add_subcommand(
      "testbed", "Like serve, with local workers that emulate the scenario's devices, links and faults");
  add_serve_options(testbed, testbed_args, true);
  adaptlink::run::ProfileArgs profile_args;
  auto* profile = adaptlink::run::add_profile_command(app, profile_args);
  if (auto done = adaptlink::cli::parse_args(app, argc, argv, "adaptlink-run")) return *done;
  try {
    if (profile->parsed()) return adaptlink::run::run_profile_command(profile_args);
    if (keygen->parsed()) return run_keygen_command(keygen_out);
    if (worker->parsed()) return run_worker_args(wa);
    if (serve->parsed()) return run_serve_command(serve_args, false);
    if (testbed->parsed()) return run_serve_command(testbed_args, true);
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  if (gen->parsed()) {
    if (!g.prompt && !g.input_ids) return fail("generate needs --prompt or --input-ids");
    try {
      return run_generate(g);
    } catch (const std::exception& e) {
      // libtorch reports some input problems (e.g. out of memory) by exception.
      return fail(e.what());
    }
  }
  return 0;
}
}  // namespace

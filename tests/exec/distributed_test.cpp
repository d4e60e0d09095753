// The multi-process pipeline (worker processes over ZeroMQ, the coordinator) against the single-process model:
// identical greedy tokens and prefill logits for every fixture with 2, 3 and 4 stages and several requests in
// flight, under both step schedules (and a decode step overtaking a running prefill under decode-first only); the
// wire protocol's checks; a coordinator that names an unreachable, refusing, lost or stopped worker.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <atomic>
#include <map>
#include <set>
#include <tuple>
#include <thread>
#include <zmq.hpp>

#include "adaptlink/exec/coordinator.hpp"
#include "adaptlink/exec/generate.hpp"
#include "adaptlink/exec/local_workers.hpp"
#include "adaptlink/exec/tensor_io.hpp"
#include "adaptlink/exec/transport.hpp"
#include "adaptlink/exec/wire.hpp"
#include "adaptlink/exec/worker.hpp"
#include "exec_test_util.hpp"

namespace adaptlink::exec {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the tests' helpers

const std::vector<std::string> kNames = {"llava_llama_mha_tied", "llava_mistral_gqa_full", "llava_llama_gqa_sharded",
                                         "llava_llama_tied_full_l1"};

nlohmann::json expected(const std::string& name) {
  std::ifstream in(kFixtures / name / "expected.json");
  return nlohmann::json::parse(in);
}

// Three requests per fixture: the fixture's image prompt, the same text without the image, a shorter one.
std::vector<ExecRequest> requests_for(const std::string& name) {
  const auto e = expected(name);
  auto ref = read_safetensors(kFixtures / name / "reference.safetensors");
  EXPECT_TRUE(ref.has_value());
  const auto ids = e["input_ids"].get<std::vector<int64_t>>();
  std::vector<int64_t> text_only;
  const auto config = load_checkpoint_config(kFixtures / name);
  EXPECT_TRUE(config.has_value());
  for (int64_t id : ids) {
    if (id != config->image_token_index) text_only.push_back(id);
  }
  std::vector<int64_t> short_ids(text_only.begin(), text_only.begin() + std::min<size_t>(4, text_only.size()));
  return {ExecRequest{"image", ids, ref->at("pixel_values"), 10}, ExecRequest{"text", text_only, at::Tensor(), 7},
          ExecRequest{"short", short_ids, at::Tensor(), 9}};
}

// `n` copies of the fixture's text-only request, `tokens` tokens each: enough work to still be in flight when a
// test stops or kills a worker.
std::vector<ExecRequest> copies_of_text_request(int n, int tokens) {
  std::vector<ExecRequest> out;
  for (int i = 0; i < n; ++i) {
    auto r = requests_for("llava_llama_mha_tied")[1];
    r.id = std::to_string(i);
    r.max_new_tokens = tokens;
    out.push_back(r);
  }
  return out;
}

// Two stages, the fixture's halves, on `own`'s first two workers "agx" and "nx" (nx emulated `nx_slowdown` times
// slower).
PipelineSpec agx_nx_spec(const std::filesystem::path& fixture, const LocalWorkers& own, double nx_slowdown) {
  auto ck = Checkpoint::open(fixture);
  EXPECT_TRUE(ck.has_value());
  auto graph = models::LayerGraph::build(ck->config(), models::Dtype::fp32);
  const auto ranges = split_even(graph, 2);
  PipelineSpec spec;
  spec.workers = {{"agx", own.endpoints()[0], 1.0, {}, ""}, {"nx", own.endpoints()[1], nx_slowdown, {}, ""}};
  spec.stages = {{ranges[0].first, ranges[0].second, 0}, {ranges[1].first, ranges[1].second, 1}};
  return spec;
}

// The tests' surroundings: `own`'s workers, lost when their process exits; `signal` sent to worker `victim` once
// `at_s` seconds have passed (the time goes to fired_at); every hop emulated as `hop`.
class TestEnvironment : public LocalWorkersEnvironment {
 public:
  TestEnvironment(LocalWorkers& own, std::vector<std::string> names) : LocalWorkersEnvironment(own, std::move(names)) {}
  std::vector<EnvEvent> poll(double now_s) override {
    if (signal != 0 && fired_at < 0 && now_s > at_s) {
      workers_.signal(victim, signal);
      fired_at = now_s;
    }
    return LocalWorkersEnvironment::poll(now_s);
  }
  [[nodiscard]] LinkShape link(int, int) const override { return hop; }

  int signal = 0;
  int victim = 1;
  double at_s = 0;
  double fired_at = -1;
  LinkShape hop;
};

// Options for a run without recovery on agx_nx_spec() whose environment sends `signal` to nx (worker 1) once `at_s`
// seconds have passed and reports nx lost when its process has exited.
CoordinatorOptions without_recovery(const std::filesystem::path& fixture, TestEnvironment& env, int signal, double at_s,
                                    double heartbeat_timeout_s) {
  CoordinatorOptions co;
  co.model = fixture;
  co.recover = false;
  co.heartbeat_timeout_s = heartbeat_timeout_s;
  env.signal = signal;
  env.at_s = at_s;
  co.environment = &env;
  return co;
}

// Each request's tokens equal the single process's greedy run of the same length (no end-of-sequence stop).
void expect_tokens_of_one_process(LlavaRunner& runner, const std::vector<ExecRequest>& requests, const ExecRun& run) {
  ASSERT_EQ(run.results.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    GenerateOptions opt;
    opt.max_new_tokens = requests[i].max_new_tokens;
    opt.eos_ids = std::vector<int64_t>{};
    auto want = runner.generate(requests[i].input_ids, requests[i].pixel_values, opt);
    ASSERT_TRUE(want.has_value());
    EXPECT_EQ(run.results[i].generated, want->generated) << "request " << requests[i].id;
  }
}

class Distributed : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    workers_ = new LocalWorkers();
    auto st = workers_->start(kRun, 4, {"--threads", "1", "--model-root", kFixtures.string()});
    ASSERT_TRUE(st.has_value()) << st.error().to_string();
  }
  static void TearDownTestSuite() {
    delete workers_;
    workers_ = nullptr;
  }
  static PipelineSpec spec_for(const models::LayerGraph& graph, int stages) {
    PipelineSpec spec;
    const auto ranges = split_even(graph, stages);
    for (size_t i = 0; i < ranges.size(); ++i) {
      spec.workers.push_back({fmt::format("w{}", i), workers_->endpoints()[i], 1.0, {}, ""});
      spec.stages.push_back({ranges[i].first, ranges[i].second, static_cast<int>(i)});
    }
    return spec;
  }
  static LocalWorkers* workers_;
};
LocalWorkers* Distributed::workers_ = nullptr;

std::string schedule_name(const ::testing::TestParamInfo<partition::Schedule>& info) {
  return info.param == partition::Schedule::decode_first ? "DecodeFirst" : "Fifo";
}
const auto kSchedules = ::testing::Values(partition::Schedule::decode_first, partition::Schedule::fifo);

class DistributedSchedule : public Distributed, public ::testing::WithParamInterface<partition::Schedule> {};

// What one process gives each request: greedy tokens (EOS 2) and prefill logits.
std::vector<GenerateResult> one_process(LlavaRunner& runner, const std::vector<ExecRequest>& requests) {
  std::vector<GenerateResult> want;
  for (const auto& r : requests) {
    GenerateOptions opt;
    opt.max_new_tokens = r.max_new_tokens;
    opt.eos_ids = std::vector<int64_t>{2};
    opt.keep_prefill_logits = true;
    auto g = runner.generate(r.input_ids, r.pixel_values, opt);
    EXPECT_TRUE(g.has_value()) << g.error().to_string();
    if (g) want.push_back(*g);
  }
  return want;
}

// Every request of the run got the tokens and (within 1e-5 of the logit scale) the prefill logits of one process.
void expect_one_process_results(const ExecRun& run, const std::vector<ExecRequest>& requests,
                                const std::vector<GenerateResult>& want, const std::string& where) {
  ASSERT_EQ(run.results.size(), requests.size()) << where;
  ASSERT_EQ(want.size(), requests.size()) << where;
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto& got = run.results[i];
    EXPECT_EQ(got.id, requests[i].id);
    EXPECT_EQ(got.generated, want[i].generated) << where << ", request " << got.id;
    ASSERT_TRUE(got.prefill_logits.defined()) << where;
    ASSERT_EQ(got.prefill_logits.sizes(), want[i].prefill_logits.sizes()) << where;
    const double err = (got.prefill_logits - want[i].prefill_logits).abs().max().item<double>();
    EXPECT_LE(err, 1e-5 * want[i].prefill_logits.abs().max().item<double>()) << where << ", request " << got.id;
  }
}

TEST_P(DistributedSchedule, SameTokensAndLogitsAsOneProcessForEveryFixtureWith2To4StagesAndRequestsInFlight) {
  at::set_num_threads(1);
  for (const auto& name : kNames) {
    auto runner = LlavaRunner::load(kFixtures / name, *parse_exec_options("fp32", "cpu"));
    ASSERT_TRUE(runner.has_value()) << runner.error().to_string();
    const auto requests = requests_for(name);
    const auto want = one_process(**runner, requests);
    for (int stages = 2; stages <= 4; ++stages) {
      CoordinatorOptions co;
      co.model = kFixtures / name;
      co.in_flight = 3;
      co.eos_ids = {2};
      co.keep_prefill_logits = true;
      co.hello_timeout_s = 30;
      co.schedule = GetParam();
      auto run = run_on(*workers_, spec_for((*runner)->graph(), stages), requests, co);
      ASSERT_TRUE(run.has_value()) << name << " with " << stages << " stages: " << run.error().to_string();
      expect_one_process_results(*run, requests, want, fmt::format("{}, {} stages", name, stages));
      // Every stage ran: events from each worker of the pipeline.
      std::set<std::string> devices;
      for (const auto& ev : run->events) devices.insert(ev.device);
      EXPECT_EQ(static_cast<int>(devices.size()), stages);
    }
  }
}

// Batched stages through real workers: 8 requests in flight (images, text, short prompts, different lengths) over 3
// stages, each worker running up to 8 waiting decode steps as one forward and passing them on as one batch message.
// Every request gets its single-process tokens and prefill logits, and batches did form (decode events of several
// requests with one start on one worker).
TEST_P(DistributedSchedule, BatchedStagesGiveOneProcessTokensWith8RequestsInFlight) {
  at::set_num_threads(1);
  const std::string name = "llava_llama_gqa_sharded";
  auto runner = LlavaRunner::load(kFixtures / name, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(runner.has_value()) << runner.error().to_string();
  const auto base = requests_for(name);
  std::vector<ExecRequest> requests;
  for (int i = 0; i < 8; ++i) {
    auto r = base[static_cast<size_t>(i) % base.size()];
    r.id = fmt::format("{}-{}", r.id, i);
    r.max_new_tokens = 6 + i;
    requests.push_back(r);
  }
  const auto want = one_process(**runner, requests);
  CoordinatorOptions co;
  co.model = kFixtures / name;
  co.in_flight = 8;
  co.max_batch = 8;
  co.eos_ids = {2};
  co.keep_prefill_logits = true;
  co.hello_timeout_s = 30;
  co.schedule = GetParam();
  auto run = run_on(*workers_, spec_for((*runner)->graph(), 3), requests, co);
  ASSERT_TRUE(run.has_value()) << run.error().to_string();
  expect_one_process_results(*run, requests, want, "3 batched stages");
  std::map<std::tuple<std::string, std::string, double>, std::set<int64_t>> starts;  // (device, what, start) -> requests
  for (const auto& ev : run->events) starts[std::make_tuple(ev.device, ev.name, ev.start_s)].insert(ev.request);
  size_t largest = 0;
  for (const auto& [key, members] : starts) {
    if (std::get<1>(key).rfind("decode", 0) == 0) largest = std::max(largest, members.size());
  }
  EXPECT_GE(largest, 2u) << "no decode batch formed";
  std::printf("largest decode batch: %zu requests\n", largest);
}

// A worker's trace event "what [a, b]".
struct NodeRun {
  std::string what;
  int first = 0;
  int last = 0;
};
NodeRun node_run(const std::string& name) {
  std::smatch m;
  static const std::regex pattern(R"((\w+) \[(\d+), (\d+)\])");
  EXPECT_TRUE(std::regex_match(name, m, pattern)) << name;
  if (m.empty()) return {};
  return {m[1].str(), std::stoi(m[2].str()), std::stoi(m[3].str())};
}

// A long prefill (request A: the image prompt on a slowed first worker) while request B decodes. The first worker
// holds the text embedding, so B's decode steps enter there. B's prefill goes first, so A's prefill is running
// before B's first decode step exists. Decode-first: B's decode steps run between pieces of A's prefill (whose
// events name the nodes of each piece and together cover the stage once); fifo: A's prefill is one event that no
// decode step of B interrupts. Either way every token is the single-process one.
TEST_P(DistributedSchedule, ADecodeStepOvertakesARunningPrefillOnlyUnderDecodeFirst) {
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  auto runner = LlavaRunner::load(fixture, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(runner.has_value()) << runner.error().to_string();
  const auto& graph = (*runner)->graph();
  const int split = graph.text_embed_index() + 1;  // the first decoder layer ends the first stage
  PipelineSpec spec;
  // The slowdown stretches every node of the first worker (A's prefill: about 0.3 s); the second one answers at
  // full speed, so B's next decode step is back (about 20 ms) long before A's prefill is done, even on a loaded
  // machine.
  spec.workers = {{"first", workers_->endpoints()[0], 200.0, {}, ""}, {"second", workers_->endpoints()[1], 1.0, {}, ""}};
  spec.stages = {{0, split, 0}, {split + 1, graph.size() - 1, 1}};
  const auto base = requests_for("llava_llama_mha_tied");
  auto b = base[1];  // text only
  b.max_new_tokens = 8;
  auto a = base[0];  // image
  a.max_new_tokens = 2;
  const std::vector<ExecRequest> requests = {b, a};
  CoordinatorOptions co;
  co.model = fixture;
  co.in_flight = 2;
  co.hello_timeout_s = 30;
  co.schedule = GetParam();
  auto run = run_on(*workers_, spec, requests, co);
  ASSERT_TRUE(run.has_value()) << run.error().to_string();
  expect_tokens_of_one_process(**runner, requests, *run);
  const int64_t request_b = 1;
  const int64_t request_a = 2;
  std::vector<StageTiming> prefill_a;
  std::vector<StageTiming> decode_b;
  int covered = 0;
  for (const auto& e : run->events) {
    if (e.device != "first") continue;
    const auto r = node_run(e.name);
    if (e.request == request_a && r.what == "prefill") {
      EXPECT_EQ(r.first, covered) << e.name << ": the pieces of a prefill follow each other";
      covered = r.last + 1;
      prefill_a.push_back(e);
    }
    if (e.request == request_b && r.what == "decode") decode_b.push_back(e);
  }
  EXPECT_EQ(covered, split + 1) << "A's prefill pieces cover the first stage";
  ASSERT_FALSE(prefill_a.empty());
  ASSERT_FALSE(decode_b.empty());
  const double a_start = prefill_a.front().start_s;
  const double a_end = prefill_a.back().end_s;
  int overtaking = 0;
  for (const auto& d : decode_b) overtaking += d.start_s > a_start && d.end_s < a_end ? 1 : 0;
  if (GetParam() == partition::Schedule::decode_first) {
    EXPECT_GT(prefill_a.size(), 1U) << "A's prefill never yielded";
    EXPECT_GT(overtaking, 0) << "no decode step of B ran between two pieces of A's prefill";
  } else {
    EXPECT_EQ(prefill_a.size(), 1U);
    EXPECT_EQ(overtaking, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Schedules, DistributedSchedule, kSchedules, schedule_name);

// --- protocol checks against a live worker ---

// A coordinator made by hand: a CURVE client of worker i of `own` with the coordinator key it serves, its routing id
// the lease its hellos name.
TEST_F(Distributed, WorkerAnswersBadMessagesWithErrorsAndKeepsServing) {
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  auto ck = Checkpoint::open(fixture);
  ASSERT_TRUE(ck.has_value());
  RawClient c(*workers_, 0);
  wire::Message hello;
  hello.type = wire::MsgType::hello;
  hello.meta = {{"protocol", wire::kProtocolVersion}, {"fingerprint", model_fingerprint(*ck)},
                {"model_dir", fixture.string()}, {"stages", nlohmann::json::array()}, {"lease", RawClient::kLease}};

  // Wrong protocol version in the header.
  auto frames = wire::encode(hello);
  wire::Header h;
  std::memcpy(&h, frames[0].data(), sizeof h);
  h.version = 99;
  std::memcpy(frames[0].data(), &h, sizeof h);
  c.send(frames);
  EXPECT_NE(reply_error(c).find("protocol version 99"), std::string::npos);

  // Wrong model fingerprint.
  auto bad = hello;
  bad.meta["fingerprint"] = "0123456789abcdef";
  c.send(wire::encode(bad));
  EXPECT_NE(reply_error(c).find("fingerprint mismatch"), std::string::npos);

  // Malformed: bad magic, truncated header, frame count, meta length, tensor bytes, oversized tensor shape.
  frames = wire::encode(hello);
  frames[0][0] = 'X';
  c.send(frames);
  EXPECT_NE(reply_error(c).find("bad magic"), std::string::npos);
  c.send({std::string("short")});
  EXPECT_NE(reply_error(c).find("header frame has 5 bytes"), std::string::npos);
  frames = wire::encode(hello);
  frames.push_back("extra");
  c.send(frames);
  EXPECT_NE(reply_error(c).find("frames"), std::string::npos);
  wire::Message step;
  step.type = wire::MsgType::step;
  step.tensors.push_back({"f32", {1, 4}, std::string(16, '\0')});
  frames = wire::encode(step);
  frames[2].resize(12);
  c.send(frames);
  EXPECT_NE(reply_error(c).find("tensor 0: 12 bytes"), std::string::npos);
  step.tensors[0] = {"f32", {1000000, 1000000, 1000000}, std::string(16, '\0')};
  c.send(wire::encode(step));
  EXPECT_NE(reply_error(c).find("too large"), std::string::npos);
  step.tensors[0] = {"q4", {1, 4}, std::string(16, '\0')};
  c.send(wire::encode(step));
  EXPECT_NE(reply_error(c).find("unknown dtype"), std::string::npos);

  // Still serving: a correct hello is answered with ready, and a pipeline run through the worker works.
  c.send(wire::encode(hello));
  auto ready = c.reply();
  ASSERT_TRUE(ready.has_value()) << ready.error().message;
  EXPECT_EQ(ready->type, wire::MsgType::ready) << ready->meta.dump();
  c.release();
  auto graph = models::LayerGraph::build(ck->config(), models::Dtype::fp32);
  CoordinatorOptions co;
  co.model = fixture;
  co.eos_ids = {2};
  auto run = run_on(*workers_, spec_for(graph, 2), requests_for("llava_llama_mha_tied"), co);
  ASSERT_TRUE(run.has_value()) << run.error().to_string();
  EXPECT_EQ(run->results.size(), 3U);
}

// Every message a worker takes, its meta typed at the boundary (wire::parse_*): each field given a value of the wrong
// type, each required field left out, and an unknown field added are each answered with an error reply naming the
// field, and change nothing: the worker then serves a full pipeline run. (One hello whose "protocol" is the string
// "1" used to end a worker with "terminate called".)
TEST_F(Distributed, EveryFieldOfEveryMessageWithAWrongTypeMissingOrExtraGetsAnErrorAndTheWorkerKeepsServing) {
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  auto ck = Checkpoint::open(fixture);
  ASSERT_TRUE(ck.has_value());
  auto graph = models::LayerGraph::build(ck->config(), models::Dtype::fp32);
  const int n = graph.size();
  RawClient c(*workers_, 1);
  const nlohmann::json link = {{"latency_ms", 1.0}, {"ms_per_byte", 0.0}};
  const nlohmann::json stage = {{"first", 0}, {"last", n - 1}, {"active", true}, {"next", ""}, {"link", link}};
  const nlohmann::json event = {{"device", "d"}, {"name", "prefill [0, 1]"}, {"request", 1}, {"ts_us", 5}, {"dur_us", 2}};
  struct Case {
    wire::MsgType type;
    nlohmann::json meta;
    std::vector<std::string> required;
  };
  const std::vector<Case> cases = {
      {wire::MsgType::hello,
       {{"protocol", wire::kProtocolVersion}, {"fingerprint", model_fingerprint(*ck)}, {"model_dir", fixture.string()},
        {"device", "probe"}, {"dtype", "fp32"}, {"exec_device", "cpu"}, {"coordinator", "tcp://127.0.0.1:9"},
        {"schedule", "fifo"}, {"epoch", 0}, {"slowdown", 1.0}, {"return_link", link},
        {"stages", nlohmann::json::array({stage})}, {"lease", RawClient::kLease},
        {"peer_keys", nlohmann::json::array({workers_->public_keys()[0]})}},
       {"protocol", "fingerprint", "stages", "lease"}},
      {wire::MsgType::route,
       {{"stages", nlohmann::json::array({stage})}, {"load_delay_ms", 0.0}, {"epoch", 0}, {"slowdown", 1.0},
        {"return_link", link}},
       {}},
      {wire::MsgType::step,
       {{"first", 0}, {"epoch", 0}, {"prefill", true}, {"input_ids", {1, 5, 6}}, {"kind", "none"},
        {"all_logits", false}, {"want_logits", false}, {"rebuild", false}, {"steps", 1}, {"full", false},
        {"rebuilt_positions", 0}, {"events", nlohmann::json::array({event})}},
       {"first", "epoch", "prefill", "input_ids", "kind"}},
      {wire::MsgType::end, nlohmann::json::object(), {}},
      {wire::MsgType::ping, nlohmann::json::object(), {}},
      {wire::MsgType::shutdown, nlohmann::json::object(), {}},
      {wire::MsgType::release, nlohmann::json::object(), {}},
  };
  // The lease first: the worker obeys only its owner (a stranger's route, step or shutdown is refused as such).
  {
    wire::Message hello;
    hello.type = wire::MsgType::hello;
    hello.meta = cases[0].meta;
    hello.meta["stages"] = nlohmann::json::array();
    c.send(wire::encode(hello));
    auto ready = c.reply();
    ASSERT_TRUE(ready.has_value()) << ready.error().message;
    ASSERT_EQ(ready->type, wire::MsgType::ready) << ready->meta.dump();
  }
  auto wrong = [](const nlohmann::json& v) -> nlohmann::json {
    if (v.is_string()) return 7;
    if (v.is_boolean()) return "yes";
    if (v.is_number()) return "1";
    if (v.is_array()) return {{"a", 1}};
    return nlohmann::json::array({1});
  };
  auto expect_error = [&](wire::MsgType type, const nlohmann::json& meta, const std::string& field) {
    wire::Message m;
    m.type = type;
    m.request = 1;
    m.meta = meta;
    c.send(wire::encode(m));
    const std::string text = reply_error(c);
    EXPECT_NE(text.find(field), std::string::npos)
        << wire::to_string(type) << " " << meta.dump() << ": the error should name '" << field << "': " << text;
  };
  int probes = 0;
  for (const auto& k : cases) {
    for (const auto& [key, value] : k.meta.items()) {
      auto bad = k.meta;
      bad[key] = wrong(value);
      expect_error(k.type, bad, key);
      ++probes;
      if (value.is_object()) {  // a nested field of the wrong type
        for (const auto& [inner, inner_value] : value.items()) {
          auto nested = k.meta;
          nested[key][inner] = wrong(inner_value);
          expect_error(k.type, nested, inner);
          ++probes;
        }
      }
      if (value.is_array() && !value.empty() && value[0].is_object()) {  // a field of a list element
        for (const auto& [inner, inner_value] : value[0].items()) {
          auto nested = k.meta;
          nested[key][0][inner] = wrong(inner_value);
          expect_error(k.type, nested, inner);
          ++probes;
        }
      }
    }
    for (const auto& key : k.required) {
      auto missing = k.meta;
      missing.erase(key);
      expect_error(k.type, missing, key);
      ++probes;
    }
    auto extra = k.meta;
    extra["surprise"] = 1;
    expect_error(k.type, extra, "surprise");
    ++probes;
  }
  EXPECT_GT(probes, 60);
  // Still serving (the shutdowns with extra fields were refused): a ping gets a pong, and a pipeline run through the
  // worker completes.
  wire::Message ping;
  ping.type = wire::MsgType::ping;
  c.send(wire::encode(ping));
  auto pong = c.reply();
  ASSERT_TRUE(pong.has_value()) << pong.error().message;
  EXPECT_EQ(pong->type, wire::MsgType::pong);
  c.release();
  CoordinatorOptions co;
  co.model = fixture;
  co.eos_ids = {2};
  auto run = run_on(*workers_, spec_for(graph, 2), requests_for("llava_llama_mha_tied"), co);
  ASSERT_TRUE(run.has_value()) << run.error().to_string();
  EXPECT_EQ(run->results.size(), 3U);
}

// Replicated serving: the replicas' runs as one, every time from the earliest replica's start, results back in
// request order.
TEST(MergeExecRuns, ShiftsTimesToTheEarliestStartAndRestoresRequestOrder) {
  ExecRun first;
  first.start_wall_us = 2'000'000;
  first.results = {{"r0", {5}, 0.0, 1.0, 1000.0, {}}, {"r2", {6}, 1.0, 2.0, 1000.0, {}}};
  first.events = {{"a", "stage", 1, 0.5, 0.75}};
  first.wall_s = 2.0;
  ExecRun second;
  second.start_wall_us = 1'500'000;  // started half a second earlier
  second.results = {{"r1", {7}, 0.0, 3.0, 3000.0, {}}};
  second.events = {{"b", "stage", 1, 0.25, 0.5}};
  second.wall_s = 3.0;
  const auto merged = merge_exec_runs({first, second}, {{0, 2}, {1}}, 3);
  EXPECT_EQ(merged.start_wall_us, 1'500'000);
  ASSERT_EQ(merged.results.size(), 3U);
  EXPECT_EQ(merged.results[0].id, "r0");
  EXPECT_EQ(merged.results[1].id, "r1");
  EXPECT_EQ(merged.results[2].id, "r2");
  EXPECT_DOUBLE_EQ(merged.results[0].admitted_s, 0.5);
  EXPECT_DOUBLE_EQ(merged.results[2].done_s, 2.5);
  EXPECT_DOUBLE_EQ(merged.results[1].done_s, 3.0);
  EXPECT_DOUBLE_EQ(merged.results[2].latency_ms, 1000.0);
  EXPECT_EQ(merged.results[1].generated, std::vector<int64_t>{7});
  ASSERT_EQ(merged.events.size(), 2U);
  EXPECT_EQ(merged.events[0].device, "b");  // in start order
  EXPECT_DOUBLE_EQ(merged.events[1].start_s, 1.0);
  EXPECT_DOUBLE_EQ(merged.wall_s, 3.0);
  // The report over the merged run counts the summed in_flight's steady window, as the simulator merges replicas.
  const auto report = make_exec_report(merged, "s", "adaptlink", {"a", "b"}, 2);
  EXPECT_EQ(report.requests_completed, 3);
  EXPECT_GT(report.throughput_rps, 0.0);
}

TEST(Wire, EncodeDecodeRoundTripAndLimits) {
  wire::Message m;
  m.type = wire::MsgType::step;
  m.request = 42;
  m.seq = 7;
  m.meta = {{"prefill", true}, {"input_ids", {1, 2, 3}}};
  m.tensors.push_back({"bf16", {2, 3}, std::string(12, 'a')});
  auto d = wire::decode(wire::encode(m));
  ASSERT_TRUE(d.has_value()) << d.error().message;
  EXPECT_EQ(d->type, wire::MsgType::step);
  EXPECT_EQ(d->request, 42);
  EXPECT_EQ(d->seq, 7);
  EXPECT_EQ(d->meta["input_ids"].size(), 3U);
  EXPECT_FALSE(d->meta.contains("tensors"));
  ASSERT_EQ(d->tensors.size(), 1U);
  EXPECT_EQ(d->tensors[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(d->tensors[0].data, std::string(12, 'a'));

  wire::Limits small;
  small.max_message_bytes = 64;
  auto big = wire::decode(wire::encode(m), small);
  ASSERT_FALSE(big.has_value());
  EXPECT_NE(big.error().message.find("exceeds the limit"), std::string::npos);

  auto frames = wire::encode(m);
  frames[1] = "{not json";
  wire::Header h;
  std::memcpy(&h, frames[0].data(), sizeof h);
  h.meta_bytes = static_cast<uint32_t>(frames[1].size());
  std::memcpy(frames[0].data(), &h, sizeof h);
  auto bad_meta = wire::decode(frames);
  ASSERT_FALSE(bad_meta.has_value());
  EXPECT_NE(bad_meta.error().message.find("not a JSON object"), std::string::npos);

  frames = wire::encode(m);
  h.type = 999;
  h.meta_bytes = static_cast<uint32_t>(frames[1].size());
  std::memcpy(frames[0].data(), &h, sizeof h);
  auto bad_type = wire::decode(frames);
  ASSERT_FALSE(bad_type.has_value());
  EXPECT_NE(bad_type.error().message.find("unknown message type 999"), std::string::npos);
}

// A batch message: its members back as they were sent; every malformed envelope an error that says what is wrong.
TEST(Wire, BatchMessagesRoundTripAndMalformedOnesAreRefused) {
  std::vector<wire::Message> members;
  for (int i = 0; i < 3; ++i) {
    wire::Message m;
    m.type = wire::MsgType::step;
    m.request = 10 + i;
    m.seq = 4;
    m.meta = {{"first", 5}};
    if (i != 1) m.tensors.push_back({"f32", {1, 1, 2}, std::string(8, static_cast<char>('a' + i))});
    members.push_back(m);
  }
  const auto frames = wire::encode_batch(members);
  EXPECT_TRUE(wire::is_batch(frames));
  EXPECT_FALSE(wire::is_batch(wire::encode(members[0])));
  auto back = wire::decode_batch(frames);
  ASSERT_TRUE(back.has_value()) << back.error().message;
  ASSERT_EQ(back->size(), 3U);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ((*back)[static_cast<size_t>(i)].request, 10 + i);
    EXPECT_EQ((*back)[static_cast<size_t>(i)].tensors.size(), i == 1 ? 0U : 1U);
  }
  EXPECT_EQ((*back)[2].tensors[0].data, std::string(8, 'c'));
  auto refused = [](const std::vector<std::string>& f, const std::string& says) {
    auto r = wire::decode_batch(f);
    ASSERT_FALSE(r.has_value()) << says;
    EXPECT_NE(r.error().message.find(says), std::string::npos) << r.error().message;
  };
  refused(wire::encode_batch({members[0]}), "1 members (2 to 1024)");
  auto truncated = frames;
  truncated.pop_back();
  refused(truncated, "member 2 announces 3 frames, 2 remain");
  auto extra = frames;
  extra.push_back("x");
  refused(extra, "1 frames after its last member");
  const auto inner = wire::encode_batch({members[0], members[1]});
  std::vector<std::string> outer = wire::encode_batch({members[0], members[0]});
  // Member 1 replaced by a batch of two (its frame count updated in the envelope's meta).
  wire::Message head;
  head.type = wire::MsgType::batch;
  head.meta["frames"] = {3, inner.size()};
  auto forged = wire::encode(head);
  for (size_t i = 2; i < 5; ++i) forged.push_back(outer[i]);
  for (const auto& f : inner) forged.push_back(f);
  refused(forged, "member 1: ");
  wire::Limits small;
  small.max_message_bytes = 100;
  auto big = wire::decode_batch(frames, small);
  ASSERT_FALSE(big.has_value());
  EXPECT_NE(big.error().message.find("exceeds the limit"), std::string::npos);
}

TEST_F(Distributed, CoordinatorNamesAnUnreachableWorkerAndDoesNotHang) {
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  auto ck = Checkpoint::open(fixture);
  auto graph = models::LayerGraph::build(ck->config(), models::Dtype::fp32);
  auto spec = spec_for(graph, 2);
  // Nothing listens there: bind a socket to learn a free port, then close it.
  std::string dead;
  {
    zmq::context_t ctx;
    zmq::socket_t s(ctx, zmq::socket_type::router);
    s.bind("tcp://127.0.0.1:*");
    dead = s.get(zmq::sockopt::last_endpoint);
  }
  spec.workers[1].name = "nano";
  spec.workers[1].endpoint = dead;
  spec.workers[1].public_key = generate_keypair()->public_key;
  CoordinatorOptions co;
  co.model = fixture;
  co.hello_timeout_s = 1.5;
  const auto start = std::chrono::steady_clock::now();
  auto run = run_on(*workers_, spec, requests_for("llava_llama_mha_tied"), co);
  ASSERT_FALSE(run.has_value());
  EXPECT_NE(run.error().message.find("worker 'nano'"), std::string::npos) << run.error().message;
  EXPECT_NE(run.error().message.find("did not answer"), std::string::npos) << run.error().message;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
}

TEST_F(Distributed, CoordinatorNamesAWorkerThatRefusesTheModel) {
  // The worker is told to load another fixture than the coordinator's: the fingerprints differ.
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  LocalWorkers own;
  auto st = own.start(kRun, 1, {"--model", (kFixtures / "llava_mistral_gqa_full").string()});
  ASSERT_TRUE(st.has_value()) << st.error().to_string();
  auto ck = Checkpoint::open(fixture);
  auto graph = models::LayerGraph::build(ck->config(), models::Dtype::fp32);
  auto spec = spec_for(graph, 2);
  spec.workers[0].name = "agx";
  spec.workers[0].endpoint = own.endpoints()[0];
  spec.workers.resize(1);  // both stages on it
  for (auto& st : spec.stages) st.worker = 0;
  CoordinatorOptions co;
  co.model = fixture;
  auto run = run_on(own, spec, requests_for("llava_llama_mha_tied"), co);
  ASSERT_FALSE(run.has_value());
  EXPECT_NE(run.error().message.find("worker 'agx'"), std::string::npos) << run.error().message;
  EXPECT_NE(run.error().message.find("fingerprint mismatch"), std::string::npos) << run.error().message;
}

TEST_F(Distributed, CoordinatorReportsALostWorkerWithoutRecoveryInsteadOfHanging) {
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  LocalWorkers own;
  ASSERT_TRUE(own.start(kRun, 2, {"--model-root", kFixtures.string()}).has_value());
  const PipelineSpec spec = agx_nx_spec(fixture, own, 30.0);  // nx is slow
  const auto many = copies_of_text_request(6, 40);
  TestEnvironment env(own, {"agx", "nx"});
  const auto co = without_recovery(fixture, env, SIGKILL, 0.3, 2);
  const auto start = std::chrono::steady_clock::now();
  auto run = run_on(own, spec, many, co);
  ASSERT_FALSE(run.has_value());
  EXPECT_NE(run.error().message.find("worker 'nx'"), std::string::npos) << run.error().message;
  EXPECT_NE(run.error().message.find("lost"), std::string::npos) << run.error().message;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 15.0);
}

// A worker stopped with SIGSTOP (the testbed's signal = "stop") neither exits nor answers: the coordinator finds it
// lost by the heartbeat timeout instead of hanging, and stop_all continues it before SIGTERM, so it ends at once
// (a SIGTERM stays pending while a process is stopped: it would wait for the 3 s SIGKILL fallback).
TEST_F(Distributed, AStoppedWorkerIsLostByTheHeartbeatTimeoutAndStopAllEndsIt) {
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  LocalWorkers own;
  ASSERT_TRUE(own.start(kRun, 2, {"--threads", "1", "--model-root", kFixtures.string()}).has_value());
  PipelineSpec spec = agx_nx_spec(fixture, own, 1.0);
  const auto many = copies_of_text_request(6, 40);
  TestEnvironment env(own, {"agx", "nx"});
  env.hop = LinkShape{4.0, 0.0};  // requests stay in flight at the stop
  const auto co = without_recovery(fixture, env, SIGSTOP, 0.2, 1);
  const auto start = std::chrono::steady_clock::now();
  auto run = run_on(own, spec, many, co);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(run.has_value());
  EXPECT_NE(run.error().message.find("worker 'nx'"), std::string::npos) << run.error().message;
  EXPECT_NE(run.error().message.find("no heartbeat for 1 s"), std::string::npos) << run.error().message;
  EXPECT_GT(took, env.fired_at + 0.5);  // not before the timeout (the handshake is not counted in fired_at)
  EXPECT_LT(took, 15.0);
  EXPECT_TRUE(own.stopped(1));
  EXPECT_FALSE(own.exited(1));
  const auto stop_start = std::chrono::steady_clock::now();
  own.stop_all();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - stop_start).count(), 2.5);
  EXPECT_EQ(own.size(), 0);
}

// Failover when the first stage holds only vision nodes (decode steps skip it, so its log has only the prefill):
// the middle stage's worker is killed with requests in flight; its backup takes over and every request gets the
// single-process tokens.
TEST(DistributedFailover, BackupTakesOverBehindAVisionOnlyStageWithIdenticalOutputs) {
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  LocalWorkers own;
  ASSERT_TRUE(own.start(kRun, 4, {"--threads", "1", "--model-root", kFixtures.string()}).has_value());
  auto runner = LlavaRunner::load(fixture, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(runner.has_value()) << runner.error().to_string();
  const auto& graph = (*runner)->graph();
  const int n = graph.size();
  ASSERT_TRUE(graph.node(1).is_vision());
  PipelineSpec spec;
  spec.workers = {{"vision", own.endpoints()[0], 1.0, {}, ""},
                  {"middle", own.endpoints()[1], 1.0, {}, ""},
                  {"tail", own.endpoints()[2], 1.0, {}, ""},
                  {"spare", own.endpoints()[3], 1.0, {{2, n - 3}}, ""}};
  spec.stages = {{0, 1, 0}, {2, n - 3, 1}, {n - 2, n - 1, 2}};
  auto base = requests_for("llava_llama_mha_tied")[0];
  std::vector<ExecRequest> requests;
  for (int i = 0; i < 6; ++i) {
    auto r = base;
    r.id = std::to_string(i);
    r.input_ids.back() = 3 + i;  // different prompts
    r.max_new_tokens = 40;
    requests.push_back(r);
  }
  CoordinatorOptions co;
  co.model = fixture;
  co.in_flight = 4;
  co.heartbeat_timeout_s = 3;
  co.step_timeout_s = 20;  // a request stuck after the failover fails the test instead of hanging it
  TestEnvironment env(own, {"vision", "middle", "tail", "spare"});
  env.hop = LinkShape{4.0, 0.0};  // 4 ms a hop: requests stay in flight long enough
  env.signal = SIGKILL;
  env.at_s = 0.12;  // the first four requests are decoding (about 8 ms a token)
  co.environment = &env;
  auto run = run_on(own, spec, requests, co);
  ASSERT_TRUE(run.has_value()) << run.error().to_string();
  ASSERT_GE(env.fired_at, 0);
  ASSERT_EQ(run->faults.size(), 1U);
  EXPECT_EQ(run->faults[0].device, "middle");
  // Rebuilt positions: each request's prompt (with its image tokens) and more than one generated token.
  EXPECT_GT(run->faults[0].recomputed_tokens, static_cast<long long>(4 * (base.input_ids.size() + 1)))
      << "no request was decoding at the kill";
  EXPECT_TRUE(run->faults[0].recovered_s.has_value());
  expect_tokens_of_one_process(**runner, requests, *run);
}

// --- who is obeyed (transport.hpp): CURVE keys, the lease ---

// A free TCP port on the loopback (bound, then closed).
// A process that is not one of the run's workers floods the coordinator's return port with tokens for every step of
// every request, with a key of its own and without CURVE: no connection is let in, so nothing changes: every
// request gets the single-process tokens.
TEST_F(Distributed, ForgedTokensFromAStrangerChangeNothing) {
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  auto runner = LlavaRunner::load(fixture, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(runner.has_value());
  const auto requests = copies_of_text_request(4, 20);
  CoordinatorOptions co;
  co.model = fixture;
  co.in_flight = 2;
  co.listen = free_endpoint();
  std::atomic<bool> stop{false};
  std::atomic<long> sent{0};
  std::thread forger([&] {
    RawClient curve(co.listen, workers_->transport().key.public_key, stranger_key(), "forger", 10);
    RawClient plain(co.listen, "", KeyPair{}, "forger-plain", 10);
    while (!stop) {
      for (int64_t r = 1; r <= 4; ++r) {
        for (int seq = 0; seq < 20; ++seq) {
          const auto m = wire::make_message(wire::MsgType::token, wire::Token{7, {}}, r, seq);
          curve.send(wire::encode(m));
          plain.send(wire::encode(m));
          sent += 2;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  auto run = run_on(*workers_, spec_for((*runner)->graph(), 2), requests, co);
  stop = true;
  forger.join();
  ASSERT_TRUE(run.has_value()) << run.error().to_string();
  EXPECT_GT(sent.load(), 100);
  expect_tokens_of_one_process(**runner, requests, *run);
}

// A stranger's key is refused during the handshake: its hello, route and shutdown get no answer at all, and the
// worker goes on serving (a run through it completes).
TEST_F(Distributed, AStrangerIsNeverAnsweredNorObeyed) {
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  auto ck = Checkpoint::open(fixture);
  ASSERT_TRUE(ck.has_value());
  RawClient c(workers_->endpoints()[0], workers_->public_keys()[0], stranger_key(), "stranger", 1000);
  wire::Message hello;
  hello.type = wire::MsgType::hello;
  hello.meta = {{"protocol", wire::kProtocolVersion}, {"fingerprint", ""}, {"model_dir", fixture.string()},
                {"stages", nlohmann::json::array()}, {"lease", "stranger"}};
  c.send(wire::encode(hello));
  auto reply = c.reply();
  EXPECT_FALSE(reply.has_value()) << "a stranger got an answer: " << reply->meta.dump();
  wire::Message shutdown;
  shutdown.type = wire::MsgType::shutdown;
  c.send(wire::encode(shutdown));
  auto graph = models::LayerGraph::build(ck->config(), models::Dtype::fp32);
  CoordinatorOptions co;
  co.model = fixture;
  auto run = run_on(*workers_, spec_for(graph, 2), requests_for("llava_llama_mha_tied"), co);
  ASSERT_TRUE(run.has_value()) << run.error().to_string();
  EXPECT_EQ(run->results.size(), 3U);
}

// The coordinator key a worker serves, but not its lease: a shutdown, route or step from it is refused by name and
// changes nothing; a hello with a wrong fingerprint names neither the worker's model path nor its fingerprint; a
// model_dir outside the worker's --model-root is refused.
TEST_F(Distributed, OnlyTheLeaseOwnerIsObeyedAndErrorsNameNothingOfTheWorker) {
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  auto ck = Checkpoint::open(fixture);
  ASSERT_TRUE(ck.has_value());
  RawClient c(*workers_, 2);
  for (auto type : {wire::MsgType::shutdown, wire::MsgType::route, wire::MsgType::end, wire::MsgType::release}) {
    wire::Message m;
    m.type = type;
    m.request = 1;
    if (type == wire::MsgType::route) m.meta = {{"slowdown", 1000.0}};
    c.send(wire::encode(m));
    EXPECT_NE(reply_error(c).find("only the coordinator that holds this worker's lease"), std::string::npos)
        << wire::to_string(type);
  }
  wire::Message hello;
  hello.type = wire::MsgType::hello;
  hello.meta = {{"protocol", wire::kProtocolVersion}, {"fingerprint", "0123456789abcdef"},
                {"model_dir", fixture.string()}, {"stages", nlohmann::json::array()}, {"lease", RawClient::kLease}};
  c.send(wire::encode(hello));
  const std::string mismatch = reply_error(c);
  EXPECT_NE(mismatch.find("fingerprint mismatch"), std::string::npos) << mismatch;
  EXPECT_EQ(mismatch.find(fixture.string()), std::string::npos) << mismatch;
  EXPECT_EQ(mismatch.find(model_fingerprint(*ck)), std::string::npos) << mismatch;
  hello.meta["fingerprint"] = model_fingerprint(*ck);
  hello.meta["model_dir"] = "/etc";
  c.send(wire::encode(hello));
  EXPECT_NE(reply_error(c).find("not under this worker's --model-root"), std::string::npos);
  hello.meta["model_dir"] = (kFixtures / ".." / "..").string();
  c.send(wire::encode(hello));
  EXPECT_NE(reply_error(c).find("not under this worker's --model-root"), std::string::npos);
  // Nothing was obeyed: the worker runs a pipeline at full speed (the route's slowdown of 1000 was refused).
  auto graph = models::LayerGraph::build(ck->config(), models::Dtype::fp32);
  auto spec = spec_for(graph, 3);
  CoordinatorOptions co;
  co.model = fixture;
  co.step_timeout_s = 20;
  auto run = run_on(*workers_, spec, requests_for("llava_llama_mha_tied"), co);
  ASSERT_TRUE(run.has_value()) << run.error().to_string();
  EXPECT_LT(run->wall_s, 10.0);
}

// A second coordinator (a key the workers serve, another run) while the first runs: its hello is refused with
// "busy"; the first run completes with the single-process tokens.
TEST_F(Distributed, ASecondCoordinatorIsRefusedWhileTheFirstRuns) {
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  auto runner = LlavaRunner::load(fixture, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(runner.has_value());
  const auto requests = copies_of_text_request(6, 40);
  const auto spec = spec_for((*runner)->graph(), 2);
  TestEnvironment env(*workers_, {"w0", "w1"});
  env.hop = LinkShape{4.0, 0.0};  // the first run lasts a second or more
  CoordinatorOptions first;
  first.model = fixture;
  first.in_flight = 2;
  first.environment = &env;
  Expected<ExecRun> run = make_error("not run");
  std::thread a([&] { run = run_on(*workers_, spec, requests, first); });
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  CoordinatorOptions second;
  second.model = fixture;
  second.hello_timeout_s = 5;
  auto refused = run_on(*workers_, spec, requests_for("llava_llama_mha_tied"), second);
  a.join();
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message.find("busy: owned by coordinator key"), std::string::npos)
      << refused.error().message;
  ASSERT_TRUE(run.has_value()) << run.error().to_string();
  expect_tokens_of_one_process(**runner, requests, *run);
}

// Keys that do not match are named at once, not after the hello timeout: a worker whose key is not the one given for
// it, and a coordinator key the workers do not serve.
TEST_F(Distributed, AKeyMismatchIsNamedAtOnce) {
  const auto fixture = kFixtures / "llava_llama_mha_tied";
  auto ck = Checkpoint::open(fixture);
  auto graph = models::LayerGraph::build(ck->config(), models::Dtype::fp32);
  CoordinatorOptions co;
  co.model = fixture;
  co.transport = workers_->transport();
  co.hello_timeout_s = 30;
  auto spec = spec_for(graph, 2);
  spec.workers[0].public_key = workers_->public_keys()[0];
  spec.workers[1].public_key = stranger_key().public_key;  // not worker 1's
  const auto start = std::chrono::steady_clock::now();
  auto wrong_worker_key = run_pipeline(spec, requests_for("llava_llama_mha_tied"), co);
  ASSERT_FALSE(wrong_worker_key.has_value());
  EXPECT_NE(wrong_worker_key.error().message.find("worker 'w1'"), std::string::npos) << wrong_worker_key.error().message;
  EXPECT_NE(wrong_worker_key.error().message.find("security handshake failed"), std::string::npos)
      << wrong_worker_key.error().message;
  spec.workers[1].public_key = workers_->public_keys()[1];
  co.transport.key = stranger_key();  // a coordinator the workers were not started for
  auto wrong_coordinator = run_pipeline(spec, requests_for("llava_llama_mha_tied"), co);
  ASSERT_FALSE(wrong_coordinator.has_value());
  EXPECT_NE(wrong_coordinator.error().message.find("refused this coordinator's key"), std::string::npos)
      << wrong_coordinator.error().message;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 15.0);
  // Without keys at all: refused before anything is sent.
  co.transport = Transport{};
  auto no_key = run_pipeline(spec, requests_for("llava_llama_mha_tied"), co);
  ASSERT_FALSE(no_key.has_value());
  EXPECT_NE(no_key.error().message.find("no CURVE key"), std::string::npos) << no_key.error().message;
}

TEST(Transport, InsecureOnlyOnThisMachine) {
  for (const char* ok : {"tcp://127.0.0.1:5555", "tcp://127.0.0.2:*", "tcp://localhost:9", "tcp://[::1]:5",
                         "ipc:///tmp/a", "inproc://x"}) {
    EXPECT_TRUE(check_insecure_endpoint(ok, "worker").has_value()) << ok;
  }
  for (const char* bad : {"tcp://0.0.0.0:5555", "tcp://10.0.0.7:5555", "tcp://eth0:5555", "tcp://[::]:5",
                          "tcp://lo;10.0.0.1:5", "udp://127.0.0.1:5"}) {
    auto st = check_insecure_endpoint(bad, "worker");
    ASSERT_FALSE(st.has_value()) << bad;
    EXPECT_NE(st.error().message.find("only allowed on this machine"), std::string::npos);
  }
  WorkerOptions w;
  w.listen = "tcp://0.0.0.0:*";
  w.transport.insecure = true;
  w.model = kFixtures / "llava_llama_mha_tied";
  auto st = run_worker(w, nullptr);
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message.find("--insecure"), std::string::npos);
  w.listen = "tcp://127.0.0.1:*";
  w.model.clear();
  st = run_worker(w, nullptr);
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message.find("--model-root"), std::string::npos);
  w.transport.insecure = false;
  w.transport.key = stranger_key();
  w.model = kFixtures / "llava_llama_mha_tied";
  st = run_worker(w, nullptr);
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message.find("--coordinator-key"), std::string::npos);
}

TEST(Transport, KeyFilesRoundTripAndAreRefusedWhenReadableOrMismatched) {
  const auto dir = std::filesystem::path(ADAPTLINK_BINARY_DIR) / "tests" / "transport_keys";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const auto key = stranger_key();
  ASSERT_TRUE(write_key_file(dir / "a.key", key).has_value());
  EXPECT_FALSE(write_key_file(dir / "a.key", key).has_value());  // never replaced
  auto back = read_key_file(dir / "a.key");
  ASSERT_TRUE(back.has_value()) << back.error().to_string();
  EXPECT_EQ(back->public_key, key.public_key);
  EXPECT_EQ(back->secret_key, key.secret_key);
  auto pub = read_public_key((dir / "a.key.pub").string(), "--coordinator-key");
  ASSERT_TRUE(pub.has_value()) << pub.error().to_string();
  EXPECT_EQ(*pub, key.public_key);
  EXPECT_EQ(*read_public_key(key.public_key, "k"), key.public_key);
  EXPECT_FALSE(read_public_key("not-a-key", "k").has_value());
  std::filesystem::permissions(dir / "a.key", std::filesystem::perms::others_read, std::filesystem::perm_options::add);
  auto readable = read_key_file(dir / "a.key");
  ASSERT_FALSE(readable.has_value());
  EXPECT_NE(readable.error().message.find("readable by others"), std::string::npos);
  // A pair whose public key is another's.
  const auto other = stranger_key();
  ASSERT_TRUE(write_key_file(dir / "b.key", KeyPair{other.public_key, key.secret_key}).has_value());
  auto mixed = read_key_file(dir / "b.key");
  ASSERT_FALSE(mixed.has_value());
  EXPECT_NE(mixed.error().message.find("not its secret key's"), std::string::npos);
  EXPECT_FALSE(check_public_key(std::string(40, '"'), "k").has_value());
}

}  // namespace
}  // namespace adaptlink::exec

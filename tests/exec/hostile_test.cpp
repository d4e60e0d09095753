// The executor against hostile input (the rows of the robustness probe that concern workers, the coordinator and
// request files): every bad request, step, frame and signal is refused or survived with a clear error, no process
// dies, every other request gets the tokens of a clean single-process run, and the memory cases stay under stated
// peak-RSS caps, measured here from /proc (VmHWM: each test case runs in a process of its own).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <tuple>
#include <zmq.hpp>

#include "adaptlink/exec/coordinator.hpp"
#include "adaptlink/exec/generate.hpp"
#include "adaptlink/exec/local_workers.hpp"
#include "adaptlink/exec/serve.hpp"
#include "adaptlink/exec/tensor_io.hpp"
#include "adaptlink/exec/worker.hpp"
#include "exec_test_util.hpp"

namespace adaptlink::exec {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the tests' helpers
using Clock = std::chrono::steady_clock;

const auto kFixture = kFixtures / "llava_llama_mha_tied";  // context 256, vocab 416, 28 px images, image token 400

// Peak resident memory of a process in MiB (VmHWM of /proc/PID/status; "self" for this one).
double peak_rss_mib(const std::string& pid = "self") {
  std::ifstream in("/proc/" + pid + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  ADD_FAILURE() << "no VmHWM for process " << pid;
  return 0;
}

// Caps for the memory cases. The fixture's model is a few MB; what a process holds beyond libtorch's own footprint
// is the input it was given. The probe's figures for the same inputs before they were refused: /dev/zero as an image
// 15.5 GB, a 16384^2 PNG 2.5 GB, a 60,001-token request a 57.6 GB allocation, four 1 GB frames 5.06 GB.
constexpr double kCoordinatorCapMib = 512;  // measured: 169 MiB (2-core VM)
constexpr double kWorkerCapMib = 384;       // measured: 164 MiB
constexpr double kWorkerGrowthCapMib = 64;  // what 512 MiB of frames above the model's limit may add to a worker

std::vector<int64_t> fixture_ids() {
  std::ifstream in(kFixture / "expected.json");
  return nlohmann::json::parse(in)["input_ids"].get<std::vector<int64_t>>();
}

at::Tensor fixture_pixels() {
  auto ref = read_safetensors(kFixture / "reference.safetensors");
  EXPECT_TRUE(ref.has_value());
  return ref->at("pixel_values");
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// A PNG header claiming 16384 x 16384 RGB pixels: a decompression bomb as far as a header scan can tell.
std::string png_bomb() {
  std::string png = "\x89PNG\r\n\x1a\n";
  png += std::string("\0\0\0\x0d", 4) + "IHDR";
  png += std::string("\0\0\x40\0\0\0\x40\0", 8);
  png += std::string("\x08\x02\0\0\0", 5);
  png += std::string("\0\0\0\0", 4);
  return png;
}

// Two stages, the model's halves, on own's workers 0 and 1; every worker of `own` is in the spec ("a", "b", "c", ...),
// the others idle.
PipelineSpec two_stages_on(const LocalWorkers& own, const models::LayerGraph& graph) {
  const auto ranges = split_even(graph, 2);
  PipelineSpec spec;
  for (int w = 0; w < own.size(); ++w) {
    spec.workers.push_back({std::string(1, static_cast<char>('a' + w)), own.endpoints()[static_cast<size_t>(w)], 1.0,
                            {}, ""});
  }
  spec.stages = {{ranges[0].first, ranges[0].second, 0}, {ranges[1].first, ranges[1].second, 1}};
  return spec;
}

// Requests from[i], from[i+1], ... have the single process's greedy tokens (no end-of-sequence stop).
void expect_tokens_of_one_process(LlavaRunner& runner, const std::vector<ExecRequest>& requests, const ExecRun& run,
                                  size_t from = 0) {
  ASSERT_EQ(run.results.size(), requests.size());
  for (size_t i = from; i < requests.size(); ++i) {
    EXPECT_EQ(run.results[i].error, "") << requests[i].id;
    GenerateOptions opt;
    opt.max_new_tokens = requests[i].max_new_tokens;
    opt.eos_ids = std::vector<int64_t>{};
    auto clean = runner.generate(requests[i].input_ids, requests[i].pixel_values, opt);
    ASSERT_TRUE(clean.has_value());
    EXPECT_EQ(run.results[i].generated, clean->generated) << requests[i].id;
  }
}

// Every kind of bad request at once, between good ones, through two CURVE workers: each bad one ends with its own
// error (refused before any worker sees it, or refused by the worker at run time), the good ones complete with the
// tokens of one process, every request is reported once as it ends, and neither the coordinator (this process) nor
// a worker grows past its cap.
TEST(HostileInput, EveryBadRequestFailsAloneAndTheOthersMatchOneProcess) {
  LocalWorkers own;
  ASSERT_TRUE(own.start(kRun, 2, {"--threads", "1", "--model", kFixture.string()}).has_value());
  auto runner = LlavaRunner::load(kFixture, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(runner.has_value());
  const auto image_ids = fixture_ids();
  std::vector<int64_t> text_ids;
  for (int64_t id : image_ids) {
    if (id != 400) text_ids.push_back(id);
  }

  // Bad requests from a requests file: an image that is /dev/zero, a PNG bomb, a folder; each names its line.
  const auto dir = std::filesystem::path(ADAPTLINK_BINARY_DIR) / "hostile_requests";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir / "folder.png");
  write_file(dir / "bomb.png", png_bomb());
  write_file(dir / "requests.jsonl",
             "{\"id\": \"zero\", \"input_ids\": [1, 5], \"image\": \"/dev/zero\"}\n"
             "{\"id\": \"bomb\", \"input_ids\": [1, 5], \"image\": \"bomb.png\"}\n"
             "{\"id\": \"folder\", \"input_ids\": [1, 5], \"image\": \"folder.png\"}\n"
             "{\"id\": \"typo\", \"input_ids\": [1, 5], \"max_tokens\": 3}\n");
  auto from_file = read_requests(dir / "requests.jsonl", kFixture, 4);
  ASSERT_TRUE(from_file.has_value()) << from_file.error().to_string();

  std::vector<ExecRequest> requests;
  requests.push_back({"good-image", image_ids, fixture_pixels(), 6});
  requests.push_back({"long", std::vector<int64_t>(60001, 5), at::Tensor(), 3});  // probe #4
  requests.push_back({"past-context", {1, 5, 6}, at::Tensor(), 1000});             // probe #9
  requests.push_back({"good-text", text_ids, at::Tensor(), 8});
  requests.push_back({"outside-vocab", {1, 1000000000}, at::Tensor(), 2});
  requests.push_back({"image-tokens-without-image", image_ids, at::Tensor(), 2});  // probe #18
  requests.push_back({"no-ids", {}, at::Tensor(), 2});
  requests.push_back({"56px-pixels", image_ids, at::zeros({1, 3, 56, 56}), 2});  // probe #12: the worker refuses it
  requests.push_back({"too-many-crops", image_ids, at::zeros({66, 3, 28, 28}), 2});
  for (auto& r : *from_file) requests.push_back(std::move(r));
  requests.push_back({"good-short", {1, 5, 6}, at::Tensor(), 5});
  const std::map<std::string, std::string> want_error = {
      {"long", "refused: the prompt is 60001 tokens (image tokens included), the model's context is 256"},
      {"past-context", "at most 253 new tokens fit"},
      {"outside-vocab", "input id 1000000000 is outside the vocabulary [0, 416)"},
      {"image-tokens-without-image", "image token(s) (id 400) but no image was given"},
      {"no-ids", "refused: it has no input ids"},
      {"56px-pixels", "pixel_values have shape [1, 3, 56, 56], expected [crops, 3, 28, 28]"},
      {"too-many-crops", "pixel_values hold 66 crops: a request fits 1 to 65"},
      {"zero", "requests.jsonl:1: /dev/zero: cannot read the image file: not a regular file"},
      {"bomb", "requests.jsonl:2: "},
      {"folder", "requests.jsonl:3: "},
      {"typo", "requests.jsonl:4: unknown key 'max_tokens'"},
  };

  const auto spec = two_stages_on(own, (*runner)->graph());
  CoordinatorOptions co;
  co.model = kFixture;
  co.in_flight = 3;
  std::vector<std::string> reported;
  co.on_result = [&](const ExecResult& r) { reported.push_back(r.id); };
  auto run = run_on(own, spec, requests, co);
  ASSERT_TRUE(run.has_value()) << run.error().to_string();

  ASSERT_EQ(run->results.size(), requests.size());
  EXPECT_EQ(reported.size(), requests.size()) << "each request is reported once as it ends";
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto& r = run->results[i];
    SCOPED_TRACE(r.id);
    EXPECT_EQ(r.id, requests[i].id);
    if (auto it = want_error.find(r.id); it != want_error.end()) {
      EXPECT_NE(r.error.find(it->second), std::string::npos) << r.error;
      continue;
    }
    EXPECT_EQ(r.error, "");
    GenerateOptions opt;
    opt.max_new_tokens = requests[i].max_new_tokens;
    opt.eos_ids = std::vector<int64_t>{};
    auto clean = (*runner)->generate(requests[i].input_ids, requests[i].pixel_values, opt);
    ASSERT_TRUE(clean.has_value());
    EXPECT_EQ(r.generated, clean->generated);
  }
  const auto report = make_exec_report(*run, "hostile", "uniform", {"a", "b"}, 3);
  EXPECT_EQ(report.requests_completed, 3);
  EXPECT_EQ(report.requests_failed, static_cast<long long>(want_error.size()));
  EXPECT_EQ(report.requests_lost, 0);

  const double coordinator = peak_rss_mib();
  const double worker_a = peak_rss_mib(std::to_string(own.pid(0)));
  const double worker_b = peak_rss_mib(std::to_string(own.pid(1)));
  std::printf("peak RSS: coordinator %.0f MiB (cap %.0f), workers %.0f and %.0f MiB (cap %.0f)\n", coordinator,
              kCoordinatorCapMib, worker_a, worker_b, kWorkerCapMib);
  EXPECT_LT(coordinator, kCoordinatorCapMib);
  EXPECT_LT(worker_a, kWorkerCapMib);
  EXPECT_LT(worker_b, kWorkerCapMib);
  std::filesystem::remove_all(dir);
}

// A ROUTER of this process standing in for the coordinator's return port (a CURVE server with the coordinator's
// key, as the worker expects): what the worker sends back for the steps it was given.
struct ReturnPort {
  zmq::context_t ctx;
  zmq::socket_t s{ctx, zmq::socket_type::router};
  std::string endpoint;
  explicit ReturnPort(const KeyPair& key) {
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::rcvtimeo, 20000);
    s.set(zmq::sockopt::curve_server, true);
    s.set(zmq::sockopt::curve_secretkey, key.secret_key);
    s.bind("tcp://127.0.0.1:*");
    endpoint = s.get(zmq::sockopt::last_endpoint);
  }
  Expected<wire::Message> next() {
    std::vector<std::string> frames;
    zmq::message_t part;
    if (!s.recv(part)) return make_error("nothing came back");
    while (part.more()) {
      (void)s.recv(part);
      frames.emplace_back(static_cast<const char*>(part.data()), part.size());
    }
    return wire::decode(frames);
  }
};

wire::Message step_message(const std::vector<int64_t>& ids, int64_t request, const at::Tensor& pixels = {}) {
  wire::Step step;
  step.first = 0;
  step.prefill = true;
  step.input_ids = ids;
  if (pixels.defined()) step.kind = "pixels";
  auto m = wire::make_message(wire::MsgType::step, step, request, 0);
  if (pixels.defined()) {
    wire::TensorBlob blob{"f32", pixels.sizes().vec(), std::string(reinterpret_cast<const char*>(pixels.data_ptr()),
                                                                  static_cast<size_t>(pixels.nbytes()))};
    m.tensors.push_back(std::move(blob));
  }
  return m;
}

// Straight to a worker, past every check of a coordinator, as its lease owner: a step of 100,000 ids (probe #19),
// pixels of more crops than the context holds, four frames of 128 MiB from authenticated peers (probe #10), a route
// with load_delay_ms 1e9 (probe #11): each is refused with an error or dropped before it is buffered; a good step
// still gets its token, a ping its pong, and the worker's peak memory stays under its cap. Then a long emulated load
// (50 min) is cut short by SIGTERM: the worker exits within seconds (probe #11: only SIGKILL ended it).
TEST(HostileInput, AWorkerRefusesHostileStepsFramesAndDelaysAndKeepsServing) {
  LocalWorkers own;
  ASSERT_TRUE(own.start(kRun, 1, {"--threads", "1", "--model", kFixture.string()}).has_value());
  auto ck = Checkpoint::open(kFixture);
  ASSERT_TRUE(ck.has_value());
  const int nodes = models::LayerGraph::build(ck->config(), models::Dtype::fp32).size();
  ReturnPort port(own.transport().key);
  RawClient c(own, 0);
  wire::Message hello;
  hello.type = wire::MsgType::hello;
  hello.meta = {{"protocol", wire::kProtocolVersion}, {"fingerprint", model_fingerprint(*ck)},
                {"model_dir", kFixture.string()},       {"coordinator", port.endpoint},
                {"lease", RawClient::kLease},           {"stages", {{{"first", 0}, {"last", nodes - 1}, {"active", true}}}}};
  // Numbers that do not fit their field are refused, not truncated (probe #22: "last": 2^40 became [0, 0],
  // "protocol": 1.5 was taken as 1).
  for (const auto& [key, value, why] :
       {std::tuple{"protocol", nlohmann::json(1.5), "'protocol' must be an integer, not a number"},
        std::tuple{"stages", nlohmann::json{{{"first", 0}, {"last", int64_t{1} << 40}}}, "1099511627776 is out of range"},
        std::tuple{"epoch", nlohmann::json(-1), "'epoch' must be >= 0"}}) {
    auto bad = hello;
    bad.meta[key] = value;
    c.send(wire::encode(bad));
    EXPECT_NE(reply_error(c).find(why), std::string::npos) << key;
  }
  c.send(wire::encode(hello));
  auto ready = c.reply();
  ASSERT_TRUE(ready.has_value()) << ready.error().message;
  ASSERT_EQ(ready->type, wire::MsgType::ready) << ready->meta.dump();

  auto error_of = [&](const wire::Message& step) -> std::string {
    c.send(wire::encode(step));
    auto m = port.next();
    if (!m) return "no reply: " + m.error().message;
    if (m->type != wire::MsgType::error) return std::string("a ") + std::string(wire::to_string(m->type));
    return m->meta.value("message", std::string());
  };
  EXPECT_NE(error_of(step_message(std::vector<int64_t>(100000, 5), 1)).find(
                "past the model's context of 256 (max_position_embeddings)"),
            std::string::npos);
  auto ids = fixture_ids();
  EXPECT_NE(error_of(step_message(ids, 2, at::zeros({66, 3, 28, 28}))).find("pixel_values hold 66 crops"),
            std::string::npos);

  const double before = peak_rss_mib(std::to_string(own.pid(0)));
  {
    const std::string big(size_t{128} << 20, 'x');
    std::vector<std::unique_ptr<RawClient>> peers;
    for (int i = 0; i < 4; ++i) {
      peers.push_back(std::make_unique<RawClient>(own.endpoints()[0], own.public_keys()[0], own.transport().key,
                                                  fmt::format("peer-{}", i), 5000));
      peers.back()->s.send(zmq::buffer(big), zmq::send_flags::none);
    }
    std::this_thread::sleep_for(std::chrono::seconds(2));  // the frames arrive (and are dropped) meanwhile
  }
  const double after = peak_rss_mib(std::to_string(own.pid(0)));
  std::printf("worker peak RSS %.0f MiB before 4 x 128 MiB frames, %.0f MiB after (growth cap %.0f, cap %.0f)\n",
              before, after, kWorkerGrowthCapMib, kWorkerCapMib);
  EXPECT_LT(after - before, kWorkerGrowthCapMib);
  EXPECT_LT(after, kWorkerCapMib);

  // Still serving: a good step's token, a ping's pong.
  c.send(wire::encode(step_message({1, 5, 6}, 3)));
  auto token = port.next();
  ASSERT_TRUE(token.has_value()) << token.error().message;
  EXPECT_EQ(token->type, wire::MsgType::token) << token->meta.dump();
  wire::Message ping;
  ping.type = wire::MsgType::ping;
  c.send(wire::encode(ping));
  auto pong = c.reply();
  ASSERT_TRUE(pong.has_value());
  EXPECT_EQ(pong->type, wire::MsgType::pong);

  wire::Message route;
  route.type = wire::MsgType::route;
  route.meta = {{"stages", nlohmann::json::array()}, {"load_delay_ms", 1e9}};
  c.send(wire::encode(route));
  EXPECT_NE(reply_error(c).find("'load_delay_ms' must be 0 to 3.6e+06 (an hour)"), std::string::npos);

  route.meta["load_delay_ms"] = 3e6;  // 50 minutes
  c.send(wire::encode(route));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto signalled = Clock::now();
  own.signal(0, SIGTERM);
  while (!own.exited(0) && Clock::now() - signalled < std::chrono::seconds(10)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(own.exited(0)) << "SIGTERM during an emulated load did not end the worker within 10 s";
}

// Frames that do not decode, arriving on the coordinator's return port mid-run (plain TCP, loopback: the insecure
// transport lets anyone connect): each is logged and dropped, never answered, and the run completes with the tokens
// of one process (probe #5: one garbage frame ended the run).
TEST(HostileInput, GarbageOnTheCoordinatorsPortIsDroppedAndTheRunCompletes) {
  LocalWorkers own(/*insecure=*/true);
  ASSERT_TRUE(own.start(kRun, 2, {"--threads", "1", "--model", kFixture.string()}).has_value());
  auto runner = LlavaRunner::load(kFixture, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(runner.has_value());
  const auto spec = two_stages_on(own, (*runner)->graph());
  std::vector<ExecRequest> requests;
  // Long enough that the garbage thread sends well over 30 frames during the run, however fast the machine.
  for (int i = 0; i < 4; ++i) requests.push_back({fmt::format("r{}", i), {1, 5, static_cast<int64_t>(6 + i)}, {}, 80});
  CoordinatorOptions co;
  co.model = kFixture;
  co.in_flight = 2;
  co.listen = free_endpoint();
  co.transport = own.transport();
  std::atomic<bool> stop{false};
  std::atomic<long> sent{0};
  std::atomic<long> answered{0};
  std::thread garbage([&] {
    RawClient plain(co.listen, "", KeyPair{}, "garbage", 5);
    const std::vector<std::vector<std::string>> junk = {
        {"x"}, {std::string(sizeof(wire::Header), '\0')}, {std::string(sizeof(wire::Header), '\xff'), "{"}};
    while (!stop) {
      for (const auto& frames : junk) {
        plain.send(frames);
        ++sent;
      }
      if (plain.reply().has_value()) ++answered;
    }
  });
  auto run = run_pipeline(spec, requests, co);
  stop = true;
  garbage.join();
  ASSERT_TRUE(run.has_value()) << run.error().to_string();
  EXPECT_GT(sent.load(), 30);
  EXPECT_EQ(answered.load(), 0) << "a malformed frame was answered";
  expect_tokens_of_one_process(**runner, requests, *run);
}

// Workers that die by no doing of the environment (no fault is reported injected: as if a request crashed them),
// `kills[k].second` at `kills[k].first` seconds; every hop `latency_ms` long so that a request stays in flight.
class CrashingWorkers : public LocalWorkersEnvironment {
 public:
  CrashingWorkers(LocalWorkers& own, std::vector<std::string> names, std::vector<std::pair<double, int>> kills,
                  int signal = SIGKILL)
      : LocalWorkersEnvironment(own, std::move(names)), kills_(std::move(kills)), signal_(signal) {}
  std::vector<EnvEvent> poll(double now_s) override {
    while (next_ < kills_.size() && now_s >= kills_[next_].first) {
      workers_.signal(kills_[next_].second, signal_);
      fired_at.push_back(now_s);
      ++next_;
    }
    return LocalWorkersEnvironment::poll(now_s);
  }
  std::vector<double> fired_at;
  [[nodiscard]] LinkShape link(int, int) const override { return {5.0, 0.0}; }

 private:
  std::vector<std::pair<double, int>> kills_;
  int signal_;
  size_t next_ = 0;
};

// A worker stopped from outside (SIGSTOP, not by the environment) is found by the heartbeat timeout; its fault is
// dated when it last answered, not when it was found (probe #24: at_s = detected_s, "recovered in 15 ms"). The run
// completes with the tokens of one process.
TEST(HostileInput, AnExternallyStoppedWorkerIsDatedWhenItWentSilent) {
  LocalWorkers own;
  ASSERT_TRUE(own.start(kRun, 3, {"--threads", "1", "--model", kFixture.string()}).has_value());
  auto runner = LlavaRunner::load(kFixture, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(runner.has_value());
  const auto spec = two_stages_on(own, (*runner)->graph());
  CrashingWorkers env(own, {"a", "b", "c"}, {{0.5, 1}}, SIGSTOP);
  std::vector<ExecRequest> requests = {{"r0", {1, 5, 6}, {}, 150}, {"r1", {1, 7, 8}, {}, 150}};
  CoordinatorOptions co;
  co.model = kFixture;
  co.in_flight = 2;
  co.heartbeat_interval_s = 0.2;
  co.heartbeat_timeout_s = 1.5;
  co.environment = &env;
  auto run = run_on(own, spec, requests, co);
  own.signal(1, SIGCONT);
  ASSERT_TRUE(run.has_value()) << run.error().to_string();
  ASSERT_EQ(run->faults.size(), 1U);
  const auto& f = run->faults[0];
  ASSERT_EQ(env.fired_at.size(), 1U);
  ASSERT_TRUE(f.detected_s.has_value() && f.recovery_ms.has_value());
  std::printf("stopped at %.2f s, fault at_s %.2f, detected %.2f s, recovered in %.0f ms\n", env.fired_at[0], f.at_s,
              *f.detected_s, *f.recovery_ms);
  EXPECT_LE(f.at_s, env.fired_at[0] + 0.05);  // its last pong came before the stop
  EXPECT_GE(f.at_s, env.fired_at[0] - co.heartbeat_interval_s - 0.25);
  EXPECT_GE(*f.detected_s - f.at_s, co.heartbeat_timeout_s - 0.05);
  EXPECT_GE(*f.recovery_ms, co.heartbeat_timeout_s * 1e3 - 50);
  expect_tokens_of_one_process(**runner, requests, *run);
}

// A request in flight while two workers in turn die unexplained (probe #4: a request that makes every worker abort
// as failover replays it onto the next) is given up at the second loss instead of being replayed onto a third
// worker; the cluster keeps its last worker, and the requests after it complete with the tokens of one process.
TEST(HostileInput, ARequestInFlightAtTwoUnexplainedWorkerLossesIsGivenUpAndTheRestComplete) {
  LocalWorkers own;
  ASSERT_TRUE(own.start(kRun, 3, {"--threads", "1", "--model", kFixture.string()}).has_value());
  auto runner = LlavaRunner::load(kFixture, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(runner.has_value());
  const auto spec = two_stages_on(own, (*runner)->graph());
  // b holds stage 1 and dies; c (idle) takes it over and dies too; a is left with both stages.
  CrashingWorkers env(own, {"a", "b", "c"}, {{0.4, 1}, {1.2, 2}});
  std::vector<ExecRequest> requests = {{"suspect", {1, 5, 6}, {}, 240}, {"after-1", {1, 7, 8}, {}, 12},
                                       {"after-2", {1, 9}, {}, 12}};
  CoordinatorOptions co;
  co.model = kFixture;
  co.in_flight = 1;
  co.environment = &env;
  auto run = run_on(own, spec, requests, co);
  ASSERT_TRUE(run.has_value()) << run.error().to_string();
  EXPECT_NE(run->results[0].error.find("in flight at 2 worker losses"), std::string::npos) << run->results[0].error;
  EXPECT_FALSE(own.exited(0)) << "the last worker was lost too";
  ASSERT_EQ(run->faults.size(), 2U);
  expect_tokens_of_one_process(**runner, requests, *run, /*from=*/1);
}

// `adaptlink-run testbed ... --out DIR` as a child process (stdout and stderr to files in DIR's parent).
pid_t start_testbed(const std::filesystem::path& out, int requests) {
  const std::string scenario = (kFixtures / ".." / "data" / "testbed" / "dropout.toml").string();
  std::vector<std::string> args = {kRun.string(), "testbed", "--scenario", scenario, "--model", kFixture.string(),
                                   "--no-faults", "--quiet", "--synthetic", std::to_string(requests), "--seed", "3",
                                   "--out", out.string()};
  const std::string log = out.string() + ".log";
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::FILE* f = std::freopen(log.c_str(), "w", stdout);
    (void)f;
    ::dup2(STDOUT_FILENO, STDERR_FILENO);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

// The complete lines of DIR/outputs.jsonl (a line still being written, without its newline, is not one).
std::vector<nlohmann::json> output_lines(const std::filesystem::path& out) {
  std::ifstream in(out / "outputs.jsonl");
  std::stringstream text;
  text << in.rdbuf();
  std::vector<nlohmann::json> lines;
  std::string all = text.str();
  size_t start = 0;
  for (size_t nl = all.find('\n'); nl != std::string::npos; nl = all.find('\n', start)) {
    lines.push_back(nlohmann::json::parse(all.substr(start, nl - start)));
    start = nl + 1;
  }
  return lines;
}

// Waits until DIR/outputs.jsonl holds `count` complete lines (or 120 s pass).
bool wait_for_lines(const std::filesystem::path& out, size_t count) {
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (Clock::now() < deadline) {
    if (output_lines(out).size() >= count) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// The coordinator killed with SIGKILL midway: every request that completed before is in outputs.jsonl, each line
// whole, with the tokens a run that was not killed gives it. SIGTERM midway: the run stops cleanly (exit 1) with a
// report.json that says it failed, why, and which requests completed, and their outputs.
TEST(HostileInput, ACoordinatorKilledMidwayLeavesEveryCompletedRequestOnDisk) {
  const auto base = std::filesystem::path(ADAPTLINK_BINARY_DIR) / "hostile_killed";
  std::filesystem::remove_all(base);
  std::filesystem::create_directories(base);
  constexpr int kRequests = 40;

  const pid_t clean = start_testbed(base / "clean", kRequests);
  int status = 0;
  ASSERT_EQ(::waitpid(clean, &status, 0), clean);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the clean run failed: see " << base / "clean.log";
  std::map<std::string, nlohmann::json> want;
  for (const auto& line : output_lines(base / "clean")) want[line["id"].get<std::string>()] = line["generated"];
  ASSERT_EQ(want.size(), static_cast<size_t>(kRequests));

  const pid_t killed = start_testbed(base / "killed", kRequests);
  ASSERT_TRUE(wait_for_lines(base / "killed", 4)) << "see " << base / "killed.log";
  ::kill(killed, SIGKILL);
  ASSERT_EQ(::waitpid(killed, &status, 0), killed);
  ASSERT_TRUE(WIFSIGNALED(status));
  const auto survived = output_lines(base / "killed");
  EXPECT_GE(survived.size(), 4U);
  EXPECT_LT(survived.size(), static_cast<size_t>(kRequests)) << "it was killed after the end, not midway";
  for (const auto& line : survived) {
    const auto id = line["id"].get<std::string>();
    ASSERT_TRUE(want.count(id)) << id;
    EXPECT_EQ(line["generated"], want[id]) << id;
  }

  const pid_t stopped = start_testbed(base / "stopped", kRequests);
  ASSERT_TRUE(wait_for_lines(base / "stopped", 2)) << "see " << base / "stopped.log";
  ::kill(stopped, SIGTERM);
  ASSERT_EQ(::waitpid(stopped, &status, 0), stopped);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << "status " << status;
  std::ifstream report_file(base / "stopped" / "report.json");
  const auto report = nlohmann::json::parse(report_file);
  EXPECT_EQ(report["status"], "failed");
  EXPECT_NE(report["error"].get<std::string>().find("interrupted by signal 15"), std::string::npos) << report.dump();
  const auto ended = output_lines(base / "stopped");
  EXPECT_EQ(report["completed"].size(), ended.size());
  EXPECT_EQ(report["requests_completed"], ended.size());
  for (const auto& line : ended) {
    const auto id = line["id"].get<std::string>();
    ASSERT_TRUE(want.count(id)) << id;
    EXPECT_EQ(line["generated"], want[id]) << id;
  }
  std::filesystem::remove_all(base);
}

}  // namespace
}  // namespace adaptlink::exec

// Per-hop overhead of the executor's transport on loopback: a 4 KiB activation (float32 [1, 1, 1024]) sent as a
// wire step message to a live worker (run in this process on its own threads, exactly as `adaptlink-run worker`
// runs them) and answered through the worker's whole message path: receiver thread (decode, checks) -> work
// queue -> compute thread -> sender thread -> a DEALER to the coordinator's ROUTER. The step names a stage the
// worker does not hold, so the answer is the error message and no model compute is timed. The round trip thus
// holds one 4 KiB hop, one small hop and the worker's thread hand-offs: its p50 bounds the per-hop overhead
// from above. It is timed with CURVE (the default transport) and with plain TCP (--insecure), in alternating
// rounds of one run, and a raw ZeroMQ echo of the same frames (no worker, no CURVE) for comparison.
//
//   bench_exec_hop [--model DIR] [--iterations N] [--out FILE.json]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include <nlohmann/json.hpp>

#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/transport.hpp"
#include "adaptlink/exec/wire.hpp"
#include "adaptlink/exec/worker.hpp"

namespace {

using adaptlink::exec::wire::Message;
using adaptlink::exec::wire::MsgType;
using Clock = std::chrono::steady_clock;

void send(zmq::socket_t& s, const std::vector<std::string>& frames) {
  for (size_t i = 0; i < frames.size(); ++i) {
    s.send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }
}

std::vector<std::string> recv(zmq::socket_t& s) {
  std::vector<std::string> frames;
  zmq::message_t part;
  do {
    if (!s.recv(part)) throw std::runtime_error("receive timed out");
    frames.emplace_back(static_cast<const char*>(part.data()), part.size());
  } while (part.more());
  return frames;
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

nlohmann::json summary(const std::vector<double>& us) {
  return {{"p50_us", percentile(us, 0.5)}, {"p90_us", percentile(us, 0.9)}, {"p99_us", percentile(us, 0.99)},
          {"samples", us.size()}};
}


// One live worker (its own threads, as `adaptlink-run worker` runs them) and `iterations` step round trips through it
// after 200 of warm-up; with CURVE (the default transport: keys made here, the worker serving this coordinator key)
// or plain TCP (--insecure).
std::optional<std::vector<double>> worker_round_trips(const std::string& model, const adaptlink::exec::Checkpoint& ck,
                                                      Message step, int iterations, bool curve) {
  adaptlink::exec::Transport coordinator;
  adaptlink::exec::WorkerOptions wo;
  wo.model = model;
  if (curve) {
    coordinator.key = *adaptlink::exec::generate_keypair();
    wo.transport.key = *adaptlink::exec::generate_keypair();
    wo.coordinator_keys = {coordinator.key.public_key};
  } else {
    coordinator.insecure = wo.transport.insecure = true;
  }
  std::atomic<bool> stop{false};
  std::string endpoint;
  std::atomic<bool> listening{false};
  std::thread worker([&] {
    auto st = adaptlink::exec::run_worker(
        wo,
        [&](const std::string& e) {
          endpoint = e;
          listening = true;
        },
        &stop);
    if (!st) std::fprintf(stderr, "bench_exec_hop: worker: %s\n", st.error().to_string().c_str());
  });
  while (!listening) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  zmq::context_t ctx;
  zmq::socket_t ret(ctx, zmq::socket_type::router);
  ret.set(zmq::sockopt::linger, 0);
  ret.set(zmq::sockopt::rcvtimeo, 5000);
  if (curve) {
    ret.set(zmq::sockopt::curve_server, true);
    ret.set(zmq::sockopt::curve_secretkey, coordinator.key.secret_key);
  }
  ret.bind("tcp://127.0.0.1:*");
  const std::string ret_endpoint = ret.get(zmq::sockopt::last_endpoint);
  zmq::socket_t to_worker(ctx, zmq::socket_type::dealer);
  to_worker.set(zmq::sockopt::linger, 0);
  to_worker.set(zmq::sockopt::rcvtimeo, 30000);
  to_worker.set(zmq::sockopt::routing_id, std::string("bench-lease"));
  if (curve) {
    to_worker.set(zmq::sockopt::curve_serverkey, wo.transport.key.public_key);
    to_worker.set(zmq::sockopt::curve_publickey, coordinator.key.public_key);
    to_worker.set(zmq::sockopt::curve_secretkey, coordinator.key.secret_key);
  }
  to_worker.connect(endpoint);

  auto finish = [&] {
    stop = true;
    worker.join();
  };
  Message hello;
  hello.type = MsgType::hello;
  hello.meta = {{"protocol", adaptlink::exec::wire::kProtocolVersion},
                {"fingerprint", adaptlink::exec::model_fingerprint(ck)},
                {"model_dir", model},
                {"device", "bench"},
                {"coordinator", ret_endpoint},
                {"stages", nlohmann::json::array()},
                {"lease", "bench-lease"}};
  send(to_worker, adaptlink::exec::wire::encode(hello));
  auto ready = adaptlink::exec::wire::decode(recv(to_worker));
  if (!ready || ready->type != MsgType::ready) {
    std::fprintf(stderr, "bench_exec_hop: the worker did not accept the hello\n");
    finish();
    return std::nullopt;
  }
  std::vector<double> out;
  for (int i = 0; i < iterations + 200; ++i) {
    step.request = i + 1;
    const auto t0 = Clock::now();
    send(to_worker, adaptlink::exec::wire::encode(step));
    auto frames = recv(ret);
    frames.erase(frames.begin());
    auto reply = adaptlink::exec::wire::decode(frames);
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    if (!reply || reply->type != MsgType::error || reply->request != i + 1) {
      std::fprintf(stderr, "bench_exec_hop: unexpected reply\n");
      finish();
      return std::nullopt;
    }
    if (i >= 200) out.push_back(us);  // after warm-up
  }
  finish();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model = std::string(ADAPTLINK_SOURCE_DIR) + "/tests/fixtures/llava_llama_mha_tied";
  std::string out;
  int iterations = 5000;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--model") model = argv[i + 1];
    else if (a == "--iterations") iterations = std::stoi(argv[i + 1]);
    else if (a == "--out") out = argv[i + 1];
  }
  auto ck = adaptlink::exec::Checkpoint::open(model);
  if (!ck) {
    std::fprintf(stderr, "bench_exec_hop: %s\n", ck.error().to_string().c_str());
    return 2;
  }

  Message step;
  step.type = MsgType::step;
  step.meta = {{"first", 1 << 20}, {"epoch", 0}, {"prefill", false}, {"input_ids", {1}}, {"kind", "text_hidden"}};
  step.tensors.push_back({"f32", {1, 1, 1024}, std::string(4096, '\1')});
  std::vector<double> curve_us;
  std::vector<double> plain_us;
  // Alternating rounds of both transports in this one run: the ratio is what the machine's noise leaves alone.
  for (int round = 0; round < 4; ++round) {
    for (bool curve : {true, false}) {
      auto us = worker_round_trips(model, *ck, step, iterations / 4, curve);
      if (!us) return 1;
      auto& all = curve ? curve_us : plain_us;
      all.insert(all.end(), us->begin(), us->end());
    }
  }
  // Raw ZeroMQ echo of the same frames: DEALER -> ROUTER -> back, one thread each side.
  zmq::context_t ctx;
  zmq::socket_t echo(ctx, zmq::socket_type::router);
  echo.set(zmq::sockopt::linger, 0);
  echo.bind("tcp://127.0.0.1:*");
  const std::string echo_endpoint = echo.get(zmq::sockopt::last_endpoint);
  std::thread echoer([&] {
    for (int i = 0; i < iterations + 200; ++i) {
      auto frames = recv(echo);
      send(echo, frames);
    }
  });
  zmq::socket_t client(ctx, zmq::socket_type::dealer);
  client.set(zmq::sockopt::linger, 0);
  client.connect(echo_endpoint);
  std::vector<double> raw_us;
  const auto frames = adaptlink::exec::wire::encode(step);
  for (int i = 0; i < iterations + 200; ++i) {
    const auto t0 = Clock::now();
    send(client, frames);
    (void)recv(client);
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    if (i >= 200) raw_us.push_back(us);
  }
  echoer.join();

  nlohmann::json result = {
      {"benchmark", "exec_hop_loopback"},
      {"activation_bytes", 4096},
      {"iterations", iterations},
      {"worker_round_trip", summary(curve_us)},
      {"worker_round_trip_insecure", summary(plain_us)},
      {"curve_over_insecure_p50", percentile(curve_us, 0.5) / percentile(plain_us, 0.5)},
      {"raw_zmq_round_trip", summary(raw_us)},
      {"target", "per-hop overhead p50 < 200 us (issue 6); the worker round trip bounds it from above"}};
  std::printf("%s\n", result.dump(2).c_str());
  if (!out.empty()) std::ofstream(out) << result.dump(2) << "\n";
  return 0;
}

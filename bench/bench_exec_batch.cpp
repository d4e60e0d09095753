// Batched decode on the CPU: one LLaVA-1.5-7B-shaped decoder layer (hidden 4096, MLP 11008, 32 heads; the
// checkpoint of bench/testbed/llava7b-one-layer.json made by adaptlink-make-checkpoint, see tools/bench_batch.sh)
// runs b = 1..16 decode steps of different requests as one Stage::forward_batch, in fp32 and bf16. Beside each
// time: the batched roofline of the same machine, measured in the same run:
//   roofline(b) = max(sum_i flops(past_i) / peak, (weights + sum_i (KV read_i + activations_i)) / bandwidth)
// with the node's flops and bytes from the model graph (the cost model's numbers), the bandwidth of a STREAM-like
// read and the peak of a large matmul in that dtype. Writes JSON (--out).
//
//   bench_exec_batch --model DIR [--out FILE.json] [--past N] [--reps N] [--threads N] [--max-batch N]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "adaptlink/exec/blas.hpp"
#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/model.hpp"
#include "stream_bandwidth.hpp"

namespace {

using namespace adaptlink;
using namespace adaptlink::exec;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Best GFLOP/s of a [512, k] x [k, n] matmul in `dtype` (the compute peak the roofline uses).
double matmul_gflops(at::ScalarType dtype, int64_t k, int64_t n) {
  at::Tensor x = at::randn({512, k}).to(dtype);
  at::Tensor w = at::randn({n, k}).to(dtype);
  double best = 0;
  for (int r = 0; r < 4; ++r) {
    const auto t = Clock::now();
    at::Tensor y = at::linear(x, w);
    const double ms = ms_since(t);
    if (r > 0) best = std::max(best, 2.0 * 512 * static_cast<double>(k) * static_cast<double>(n) / (ms * 1e6));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, out;
  int past = 128, reps = 7, threads = 0, max_batch = 16;
  for (int i = 1; i < argc; ++i) {
    auto arg = [&](const char* name) { return std::strcmp(argv[i], name) == 0 && i + 1 < argc; };
    if (arg("--model")) {
      model = argv[++i];
    } else if (arg("--out")) {
      out = argv[++i];
    } else if (arg("--past")) {
      past = std::stoi(argv[++i]);
    } else if (arg("--reps")) {
      reps = std::stoi(argv[++i]);
    } else if (arg("--threads")) {
      threads = std::stoi(argv[++i]);
    } else if (arg("--max-batch")) {
      max_batch = std::stoi(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: bench_exec_batch --model DIR [--out FILE.json] [--past N] [--reps N] [--threads N] "
                   "[--max-batch N]\n");
      return 2;
    }
  }
  if (model.empty() || past < 1 || reps < 1 || max_batch < 1) {
    std::fprintf(stderr, "bench_exec_batch: --model DIR is required; --past, --reps, --max-batch >= 1\n");
    return 2;
  }
  if (threads > 0) at::set_num_threads(threads);
  c10::AutoGradMode no_grad(false);
  auto ckpt = Checkpoint::open(model);
  if (!ckpt) {
    std::fprintf(stderr, "%s\n", ckpt.error().to_string().c_str());
    return 1;
  }
  const auto& text = ckpt->config().text;
  const auto [read_gbs, triad_gbs] = adaptlink::bench::stream_bandwidth(int64_t{1} << 30, 5);
  std::printf("%s\nbandwidth: read %.1f GB/s (triad %.1f), threads %d, past %d tokens\n", blas_line().c_str(), read_gbs,
              triad_gbs, at::get_num_threads(), past);
  nlohmann::json result = {{"benchmark", "bench_exec_batch"},
                           {"machine", {{"threads", at::get_num_threads()}, {"blas", blas_info().name}}},
                           {"model", {{"hidden_size", text.hidden_size},
                                      {"intermediate_size", text.intermediate_size},
                                      {"num_attention_heads", text.num_attention_heads},
                                      {"num_key_value_heads", text.num_key_value_heads}}},
                           {"past_tokens", past},
                           {"reps", reps},
                           {"bandwidth", {{"read_gbs", read_gbs}, {"triad_gbs", triad_gbs}}},
                           {"dtypes", nlohmann::json::object()}};
  std::vector<int> batches;
  for (int b : {1, 2, 4, 6, 8, 12, 16, 24, 32}) {
    if (b <= max_batch) batches.push_back(b);
  }
  for (const std::string name : {"fp32", "bf16"}) {
    const auto options = *parse_exec_options(name, "cpu");
    const auto graph = models::LayerGraph::build(ckpt->config(), name == "fp32" ? models::Dtype::fp32 : models::Dtype::bf16);
    const int node = graph.first_decoder_index();
    auto stage = Stage::load(*ckpt, graph, node, node, options);
    if (!stage) {
      std::fprintf(stderr, "%s\n", stage.error().to_string().c_str());
      return 1;
    }
    const double peak_gflops = matmul_gflops(options.dtype, text.hidden_size, text.intermediate_size);
    std::printf("%s: matmul peak %.1f GFLOP/s; prefilling %d requests of %d tokens...\n", name.c_str(), peak_gflops,
                batches.back(), past);
    for (int r = 0; r < batches.back(); ++r) {
      StepInput step;
      step.request = r + 1;
      step.input_ids = at::zeros({past}, at::kLong);
      auto done = (*stage)->forward(step, {ActivationKind::text_hidden, at::randn({1, past, text.hidden_size}).to(options.dtype)});
      if (!done) {
        std::fprintf(stderr, "%s\n", done.error().to_string().c_str());
        return 1;
      }
    }
    const double weights = graph.node(node).weight_read_bytes;
    nlohmann::json rows = nlohmann::json::array();
    double one_ms = 0;
    for (int b : batches) {
      std::vector<StepInput> steps(static_cast<size_t>(b));
      for (int r = 0; r < b; ++r) {
        steps[static_cast<size_t>(r)].request = r + 1;
        steps[static_cast<size_t>(r)].prefill = false;
        steps[static_cast<size_t>(r)].input_ids = at::zeros({1}, at::kLong);
      }
      const Activation input{ActivationKind::text_hidden, at::randn({b, 1, text.hidden_size}).to(options.dtype)};
      std::vector<double> times;
      double roofline_ms = 0;
      for (int rep = 0; rep <= reps; ++rep) {  // the first is a warm-up
        double flops = 0, bytes = 0;
        for (int r = 0; r < b; ++r) {
          const auto c = graph.decode_cost(node, static_cast<int>((*stage)->cached_tokens(r + 1)));
          flops += c.flops;
          bytes += c.bytes;
        }
        bytes -= (b - 1) * weights;
        roofline_ms = std::max(flops / (peak_gflops * 1e6), bytes / (read_gbs * 1e6));
        const auto t = Clock::now();
        auto o = (*stage)->forward_batch(steps, input);
        const double ms = ms_since(t);
        if (!o) {
          std::fprintf(stderr, "%s\n", o.error().to_string().c_str());
          return 1;
        }
        if (rep > 0) times.push_back(ms);
      }
      const double ms = median(times);
      if (b == 1) one_ms = ms;
      rows.push_back({{"batch", b},
                      {"ms_per_step", ms},
                      {"ms_per_token", ms / b},
                      {"tokens_per_s", b * 1e3 / ms},
                      {"speedup_tokens_per_s_vs_batch_1", one_ms * b / ms},
                      {"roofline_ms", roofline_ms},
                      {"fraction_of_roofline", roofline_ms / ms}});
      std::printf("  %s batch %2d: %8.2f ms/step  %7.1f tok/s  x%5.2f of batch 1  roofline %7.2f ms (%.2f)\n",
                  name.c_str(), b, ms, b * 1e3 / ms, one_ms * b / ms, roofline_ms, roofline_ms / ms);
    }
    result["dtypes"][name] = {{"matmul_peak_gflops", peak_gflops}, {"weight_bytes", weights}, {"rows", rows}};
  }
  if (!out.empty()) {
    std::ofstream(out) << result.dump(2) << "\n";
    std::printf("wrote %s\n", out.c_str());
  }
  return 0;
}

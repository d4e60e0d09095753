// exec/ benchmarks on a full-size LLaVA-1.5-7B-shaped checkpoint with random weights (bf16), made by
// adaptlink-make-checkpoint (see tools/bench_exec.sh, which also deletes it afterwards):
//
//   * memory: peak RSS of a process that loads one quarter of the decoder (8 of 32 layers) vs one that
//     loads the whole model, each in its own forked child (ru_maxrss), plus a child that loads nothing;
//   * bandwidth: a STREAM-like multi-threaded read (sum) and triad over 1 GiB arrays;
//   * decode: tokens/s of greedy decoding on the CPU, batch 1, bf16, and the fraction of the bound
//     weight bytes per token / measured read bandwidth.
//
//   bench_exec_7b --model DIR [--out FILE.json] [--decode-tokens N] [--threads N]
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/model.hpp"
#include "stream_bandwidth.hpp"

namespace {

using namespace adaptlink;
using namespace adaptlink::exec;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Peak RSS (bytes) and load seconds of a child that loads nodes [first, last] (first > last: nothing).
std::pair<double, double> child_peak_rss(const std::string& dir, int first, int last) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return {-1, -1};
  const pid_t pid = fork();
  if (pid == 0) {
    close(pipefd[0]);
    auto t = Clock::now();
    auto ckpt = Checkpoint::open(dir);
    if (!ckpt) _exit(3);
    auto graph = models::LayerGraph::build(ckpt->config(), models::Dtype::bf16);
    ExecOptions o = *parse_exec_options("bf16", "cpu");
    if (first <= last) {
      auto stage = Stage::load(*ckpt, graph, first, last, o);
      if (!stage) {
        std::fprintf(stderr, "%s\n", stage.error().to_string().c_str());
        _exit(4);
      }
    }
    const double s = seconds_since(t);
    if (write(pipefd[1], &s, sizeof s) != sizeof s) _exit(5);
    _exit(0);
  }
  close(pipefd[1]);
  double load_s = -1;
  if (read(pipefd[0], &load_s, sizeof load_s) != sizeof load_s) load_s = -1;
  close(pipefd[0]);
  int status = 0;
  struct rusage usage {};
  wait4(pid, &status, 0, &usage);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return {-1, -1};
  return {static_cast<double>(usage.ru_maxrss) * 1024.0, load_s};
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  std::string out_path;
  int decode_tokens = 16;
  int threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--model") dir = argv[i + 1];
    if (flag == "--out") out_path = argv[i + 1];
    if (flag == "--decode-tokens") decode_tokens = std::stoi(argv[i + 1]);
    if (flag == "--threads") threads = std::stoi(argv[i + 1]);
  }
  if (dir.empty()) {
    std::fprintf(stderr, "usage: bench_exec_7b --model DIR [--out FILE.json] [--decode-tokens N] [--threads N]\n");
    return 2;
  }
  if (threads > 0) at::set_num_threads(threads);
  auto ckpt = Checkpoint::open(dir);
  if (!ckpt) {
    std::fprintf(stderr, "%s\n", ckpt.error().to_string().c_str());
    return 2;
  }
  auto graph = models::LayerGraph::build(ckpt->config(), models::Dtype::bf16);
  const int first_dec = graph.first_decoder_index();
  const int layers = graph.num_decoder_layers();
  nlohmann::json result = {{"model_dir", dir},
                           {"dtype", "bf16"},
                           {"threads", at::get_num_threads()},
                           {"parameters", graph.total_params()},
                           {"nodes", graph.size()}};

  // ---- memory ----
  const auto [base_rss, base_s] = child_peak_rss(dir, 1, 0);
  const auto [quarter_rss, quarter_s] = child_peak_rss(dir, first_dec, first_dec + layers / 4 - 1);
  const auto [whole_rss, whole_s] = child_peak_rss(dir, 0, graph.size() - 1);
  result["memory"] = {{"baseline_peak_rss_bytes", base_rss},
                      {"quarter_decoder_nodes", {first_dec, first_dec + layers / 4 - 1}},
                      {"quarter_decoder_peak_rss_bytes", quarter_rss},
                      {"quarter_decoder_load_s", quarter_s},
                      {"whole_model_peak_rss_bytes", whole_rss},
                      {"whole_model_load_s", whole_s},
                      {"ratio", quarter_rss / whole_rss},
                      {"ratio_above_baseline", (quarter_rss - base_rss) / (whole_rss - base_rss)},
                      {"target_ratio_max", 0.30}};
  std::printf("memory: baseline %.2f GB, quarter decoder %.2f GB, whole %.2f GB, ratio %.3f\n", base_rss / 1e9,
              quarter_rss / 1e9, whole_rss / 1e9, quarter_rss / whole_rss);
  std::fflush(stdout);

  // ---- bandwidth ----
  const auto [read_gbs, triad_gbs] = adaptlink::bench::stream_bandwidth(int64_t{1} << 30, 5);
  result["bandwidth"] = {{"read_gbs", read_gbs}, {"triad_gbs", triad_gbs}, {"array_bytes", int64_t{1} << 30}};
  std::printf("bandwidth: read %.1f GB/s, triad %.1f GB/s\n", read_gbs, triad_gbs);
  std::fflush(stdout);

  // ---- decode ----
  {
    c10::AutoGradMode no_grad(false);
    ExecOptions o = *parse_exec_options("bf16", "cpu");
    auto t = Clock::now();
    auto stage = Stage::load(*ckpt, graph, graph.text_embed_index(), graph.size() - 1, o);
    if (!stage) {
      std::fprintf(stderr, "%s\n", stage.error().to_string().c_str());
      return 1;
    }
    const double load_s = seconds_since(t);
    double weight_bytes_per_token = 0;
    for (int n = first_dec; n < graph.size(); ++n) weight_bytes_per_token += graph.node(n).weight_bytes;
    StepInput step;
    step.request = 1;
    std::vector<int64_t> prompt(32);
    for (int i = 0; i < 32; ++i) prompt[i] = 100 + 37 * i;
    step.input_ids = at::tensor(prompt, at::TensorOptions().dtype(at::kLong));
    t = Clock::now();
    auto out = (*stage)->forward(step, {});
    const double prefill_s = seconds_since(t);
    if (!out) {
      std::fprintf(stderr, "%s\n", out.error().to_string().c_str());
      return 1;
    }
    int64_t next = out->tensor[0][-1].argmax().item<int64_t>();
    std::vector<double> step_s;
    for (int i = 0; i < decode_tokens; ++i) {
      step.prefill = false;
      step.input_ids = at::tensor(std::vector<int64_t>{next}, at::TensorOptions().dtype(at::kLong));
      t = Clock::now();
      auto o2 = (*stage)->forward(step, {});
      next = o2->tensor[0][-1].argmax().item<int64_t>();
      step_s.push_back(seconds_since(t));
    }
    // Skip the first step (warm-up of the kernels' scratch buffers).
    double total = 0;
    for (size_t i = 1; i < step_s.size(); ++i) total += step_s[i];
    const double tokens_per_s = static_cast<double>(step_s.size() - 1) / total;
    const double bound = read_gbs * 1e9 / weight_bytes_per_token;
    result["decode"] = {{"load_s", load_s},
                        {"prompt_tokens", 32},
                        {"prefill_s", prefill_s},
                        {"decode_tokens", decode_tokens},
                        {"tokens_per_s", tokens_per_s},
                        {"ms_per_token", 1000.0 / tokens_per_s},
                        {"weight_bytes_per_token", weight_bytes_per_token},
                        {"bandwidth_bound_tokens_per_s", bound},
                        {"fraction_of_bound", tokens_per_s / bound},
                        {"step_s", step_s}};
    std::printf("decode: %.3f tokens/s (%.0f ms/token), bound %.3f tokens/s at %.1f GB/s -> %.0f%%\n", tokens_per_s,
                1000.0 / tokens_per_s, bound, read_gbs, 100.0 * tokens_per_s / bound);
  }
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  result["host"] = host;
  if (!out_path.empty()) std::ofstream(out_path) << result.dump(2) << "\n";
  std::printf("%s\n", result.dump().c_str());
  return 0;
}

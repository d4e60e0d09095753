// STREAM-like memory bandwidth for the exec/ benchmarks (bench_exec_7b, bench_exec_batch): one definition.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

namespace adaptlink::bench {

// STREAM-like read and triad bandwidth (GB/s) over `bytes`-sized float arrays, best of `reps`.
inline std::pair<double, double> stream_bandwidth(int64_t bytes, int reps) {
  const int64_t n = bytes / 4;
  at::Tensor a = at::empty({n}, at::kFloat).fill_(1.0f);
  at::Tensor b = at::empty({n}, at::kFloat).fill_(2.0f);
  at::Tensor c = at::empty({n}, at::kFloat).fill_(0.0f);
  float* pa = a.data_ptr<float>();
  float* pb = b.data_ptr<float>();
  float* pc = c.data_ptr<float>();
  double best_read = 0;
  double best_triad = 0;
  volatile double sink = 0;
  for (int r = 0; r < reps; ++r) {
    std::vector<double> partial(static_cast<size_t>(at::get_num_threads()) * 16, 0.0);
    auto t = std::chrono::steady_clock::now();
    at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
      int64_t i = begin;
      for (; i + 8 <= end; i += 8) {
        s0 += pa[i];
        s1 += pa[i + 1];
        s2 += pa[i + 2];
        s3 += pa[i + 3];
        s4 += pa[i + 4];
        s5 += pa[i + 5];
        s6 += pa[i + 6];
        s7 += pa[i + 7];
      }
      for (; i < end; ++i) s0 += pa[i];
      partial[static_cast<size_t>(at::get_thread_num()) * 16] += s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
    });
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    for (double p : partial) sink = sink + p;
    best_read = std::max(best_read, static_cast<double>(bytes) / dt / 1e9);
    t = std::chrono::steady_clock::now();
    at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) pc[i] = pa[i] + 3.0f * pb[i];
    });
    const double dt2 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    best_triad = std::max(best_triad, 3.0 * static_cast<double>(bytes) / dt2 / 1e9);
    // ATen's own vectorised kernels (the hand loops above may be compute-bound on some CPUs).
    t = std::chrono::steady_clock::now();
    sink = sink + a.sum().item<double>();
    best_read = std::max(best_read, static_cast<double>(bytes) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count() / 1e9);
    t = std::chrono::steady_clock::now();
    at::add_out(c, a, b, 3.0);
    best_triad = std::max(best_triad, 3.0 * static_cast<double>(bytes) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count() / 1e9);
  }
  (void)sink;
  return {best_read, best_triad};
}


}  // namespace adaptlink::bench

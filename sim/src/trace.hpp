// Chrome trace writer (the JSON object format that chrome://tracing and Perfetto open): complete events
// ("ph": "X", microseconds) streamed to a file, plus process/thread name metadata at the end. pid 1 holds one
// row (tid) per device, pid 2 one row per link lane: transfers that overlap on a link go to extra lanes
// ("agx<->ap #2") because Perfetto needs the slices of one row to nest.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace adaptlink::sim::detail {

class TraceWriter {
 public:
  static constexpr int kDevicePid = 1;
  static constexpr int kLinkPid = 2;

  TraceWriter() = default;
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;
  ~TraceWriter();

  // Returns false when the file cannot be created.
  bool open(const std::string& path, double from_s, double until_s, long long max_events);
  [[nodiscard]] bool enabled() const { return file_ != nullptr; }
  // Whether a slice starting at `start_s` is recorded (window and event budget).
  // Notes the truncation when the budget is spent.
  [[nodiscard]] bool wants(double start_s) {
    if (file_ == nullptr || start_s < from_s_ || start_s > until_s_) return false;
    if (events_ >= max_events_) {
      truncated_ = true;
      return false;
    }
    return true;
  }

  // Complete event; `args` is the text of a JSON object's members (without braces), may be empty.
  void slice(int pid, int tid, std::string_view name, std::string_view category, double start_s, double end_s,
             std::string_view args);
  void name_process(int pid, std::string_view name, int sort_index);
  void name_thread(int pid, int tid, std::string_view name, int sort_index);

  // Writes the metadata and closes the file; `other` is the text of otherData's members.
  bool close(std::string_view other);
  [[nodiscard]] long long events() const { return events_; }
  [[nodiscard]] bool truncated() const { return truncated_; }

 private:
  void separator();
  void flush_buffer(bool force);

  std::FILE* file_ = nullptr;
  fmt::memory_buffer buffer_;
  double from_s_ = 0;
  double until_s_ = 0;
  long long max_events_ = 0;
  long long events_ = 0;
  bool first_ = true;
  bool truncated_ = false;
  std::vector<std::string> metadata_;
};

// The simulator's trace: a row per device (compute slices) and per link lane (transfers; one that overlaps a
// transfer already on the link takes the next free lane), named when the trace is closed.
class RunTrace {
 public:
  bool open(const std::string& path, double from_s, double until_s, long long max_events) {
    return path.empty() || writer_.open(path, from_s, until_s, max_events);
  }
  [[nodiscard]] bool enabled() const { return writer_.enabled(); }
  [[nodiscard]] bool wants(double start_s) { return writer_.wants(start_s); }
  [[nodiscard]] long long events() const { return writer_.events(); }
  [[nodiscard]] bool truncated() const { return writer_.truncated(); }

  // A free lane of `link` for a transfer starting now (lanes are numbered per link from 0); give it back after.
  int take_lane(int link);
  void free_lane(int link, int lane) { lanes_[static_cast<size_t>(link)][static_cast<size_t>(lane)] = false; }

  // kind: "prefill" | "decode" | "replay" (a recovery's KV rebuild of `tokens` tokens).
  void compute(int device, std::string_view kind, long long request, int stage, int step, int tokens, double start_s,
               double end_s);
  // A hop of request `request`'s activation (from_stage -> to_stage) or, when to_stage <= from_stage, its token.
  void transfer(int link, int lane, long long request, std::uint64_t bytes, int from_stage, int to_stage, int step,
                double start_s, double end_s);

  // Names the rows and writes the metadata; `other` is the text of otherData's members. False when writing fails.
  bool close(const std::vector<std::string>& device_names, const std::vector<std::string>& link_names,
             std::string_view other);

 private:
  struct LaneTid {
    int link;
    int lane;
    int tid;
  };
  [[nodiscard]] int lane_tid(int link, int lane) const;

  TraceWriter writer_;
  std::vector<std::vector<bool>> lanes_;  // [link][lane] busy
  std::vector<LaneTid> lane_tids_;
};

// JSON string literal (quoted, escaped).
std::string json_string(std::string_view text);

}  // namespace adaptlink::sim::detail

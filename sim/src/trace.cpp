#include "trace.hpp"

#include <nlohmann/json.hpp>

namespace adaptlink::sim::detail {

std::string json_string(std::string_view text) { return nlohmann::json(std::string(text)).dump(); }

TraceWriter::~TraceWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

bool TraceWriter::open(const std::string& path, double from_s, double until_s, long long max_events) {
  file_ = std::fopen(path.c_str(), "wb");
  if (file_ == nullptr) return false;
  from_s_ = from_s;
  until_s_ = until_s;
  max_events_ = max_events;
  fmt::format_to(std::back_inserter(buffer_), "{{\"traceEvents\":[\n");
  return true;
}

void TraceWriter::separator() {
  if (!first_) fmt::format_to(std::back_inserter(buffer_), ",\n");
  first_ = false;
}

void TraceWriter::flush_buffer(bool force) {
  if (file_ == nullptr) return;
  if (force || buffer_.size() > (1u << 20)) {
    std::fwrite(buffer_.data(), 1, buffer_.size(), file_);
    buffer_.clear();
  }
}

void TraceWriter::slice(int pid, int tid, std::string_view name, std::string_view category, double start_s,
                        double end_s, std::string_view args) {
  if (file_ == nullptr) return;
  if (events_ >= max_events_) {
    truncated_ = true;
    return;
  }
  ++events_;
  separator();
  // Microseconds with nanosecond resolution.
  fmt::format_to(std::back_inserter(buffer_),
                 "{{\"ph\":\"X\",\"pid\":{},\"tid\":{},\"ts\":{:.3f},\"dur\":{:.3f},\"name\":\"{}\",\"cat\":\"{}\"",
                 pid, tid, start_s * 1e6, (end_s - start_s) * 1e6, name, category);
  if (!args.empty()) fmt::format_to(std::back_inserter(buffer_), ",\"args\":{{{}}}", args);
  buffer_.push_back('}');
  flush_buffer(false);
}

void TraceWriter::name_process(int pid, std::string_view name, int sort_index) {
  metadata_.push_back(
      fmt::format(R"({{"ph":"M","pid":{},"name":"process_name","args":{{"name":{}}}}})", pid, json_string(name)));
  metadata_.push_back(
      fmt::format(R"({{"ph":"M","pid":{},"name":"process_sort_index","args":{{"sort_index":{}}}}})", pid, sort_index));
}

void TraceWriter::name_thread(int pid, int tid, std::string_view name, int sort_index) {
  metadata_.push_back(fmt::format(R"({{"ph":"M","pid":{},"tid":{},"name":"thread_name","args":{{"name":{}}}}})", pid,
                                  tid, json_string(name)));
  metadata_.push_back(fmt::format(
      R"({{"ph":"M","pid":{},"tid":{},"name":"thread_sort_index","args":{{"sort_index":{}}}}})", pid, tid, sort_index));
}

bool TraceWriter::close(std::string_view other) {
  if (file_ == nullptr) return false;
  for (const auto& m : metadata_) {
    separator();
    buffer_.append(m);
  }
  fmt::format_to(std::back_inserter(buffer_), "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{{{}}}}}\n", other);
  flush_buffer(true);
  const bool ok = std::ferror(file_) == 0;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  return ok && closed;
}

int RunTrace::take_lane(int link) {
  if (lanes_.size() <= static_cast<size_t>(link)) lanes_.resize(static_cast<size_t>(link) + 1);
  auto& lanes = lanes_[static_cast<size_t>(link)];
  for (size_t i = 0; i < lanes.size(); ++i) {
    if (!lanes[i]) {
      lanes[i] = true;
      return static_cast<int>(i);
    }
  }
  lanes.push_back(true);
  const int lane = static_cast<int>(lanes.size()) - 1;
  lane_tids_.push_back({link, lane, static_cast<int>(lane_tids_.size())});
  return lane;
}

int RunTrace::lane_tid(int link, int lane) const {
  for (const auto& l : lane_tids_) {
    if (l.link == link && l.lane == lane) return l.tid;
  }
  return 0;
}

void RunTrace::compute(int device, std::string_view kind, long long request, int stage, int step, int tokens,
                       double start_s, double end_s) {
  const bool replay = kind == "replay";
  const std::string name = replay              ? fmt::format("replay r{} ({} tokens)", request, tokens)
                           : kind == "prefill" ? fmt::format("prefill r{}", request)
                                               : fmt::format("decode r{} t{}", request, step);
  writer_.slice(TraceWriter::kDevicePid, device, name, kind, start_s, end_s,
                fmt::format(R"("request":{},"stage":{},"step":{})", request, stage, replay ? -2 : step));
}

void RunTrace::transfer(int link, int lane, long long request, std::uint64_t bytes, int from_stage, int to_stage,
                        int step, double start_s, double end_s) {
  const bool back = to_stage <= from_stage;
  const std::string name = back ? fmt::format("token r{} t{}", request, step)
                                : fmt::format("act r{} s{}>s{}", request, from_stage, to_stage);
  writer_.slice(TraceWriter::kLinkPid, lane_tid(link, lane), name, back ? "token" : "activation", start_s, end_s,
                fmt::format(R"("request":{},"bytes":{},"from_stage":{},"to_stage":{},"step":{})", request, bytes,
                            from_stage, to_stage, step));
}

bool RunTrace::close(const std::vector<std::string>& device_names, const std::vector<std::string>& link_names,
                     std::string_view other) {
  writer_.name_process(TraceWriter::kDevicePid, "devices", 0);
  writer_.name_process(TraceWriter::kLinkPid, "links", 1);
  for (size_t d = 0; d < device_names.size(); ++d) {
    writer_.name_thread(TraceWriter::kDevicePid, static_cast<int>(d), device_names[d], static_cast<int>(d));
  }
  for (const auto& [link, lane, tid] : lane_tids_) {
    std::string name = link_names[static_cast<size_t>(link)];
    if (lane > 0) name += fmt::format(" #{}", lane + 1);
    writer_.name_thread(TraceWriter::kLinkPid, tid, name, link * 1000 + lane);
  }
  return writer_.close(other);
}

}  // namespace adaptlink::sim::detail

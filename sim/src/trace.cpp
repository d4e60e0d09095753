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
                 "{{\"ph\":\"X\",\"pid\":{},\"tid\":{},\"ts\":{:.3f},\"dur\":{:.3f},\"name\":\"{}\",\"cat\":\"{}\"", pid,
                 tid, start_s * 1e6, (end_s - start_s) * 1e6, name, category);
  if (!args.empty()) fmt::format_to(std::back_inserter(buffer_), ",\"args\":{{{}}}", args);
  buffer_.push_back('}');
  flush_buffer(false);
}

void TraceWriter::name_process(int pid, std::string_view name, int sort_index) {
  metadata_.push_back(fmt::format(R"({{"ph":"M","pid":{},"name":"process_name","args":{{"name":{}}}}})", pid,
                                  json_string(name)));
  metadata_.push_back(fmt::format(R"({{"ph":"M","pid":{},"name":"process_sort_index","args":{{"sort_index":{}}}}})",
                                  pid, sort_index));
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

}  // namespace adaptlink::sim::detail

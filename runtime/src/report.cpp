#include "adaptlink/runtime/report.hpp"

#include <algorithm>
#include <cmath>

namespace adaptlink::runtime {

namespace {

nlohmann::json optional_number(const std::optional<double>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

Error missing(std::string_view source, std::string_view key, std::string_view what) {
  Error e = make_error("'{}': {}", key, what);
  e.file = std::string(source);
  return e;
}

Expected<double> number_at(const nlohmann::json& obj, const char* key, std::string_view source) {
  auto it = obj.find(key);
  if (it == obj.end()) return missing(source, key, "missing");
  if (!it->is_number()) return missing(source, key, "expected a number");
  return it->get<double>();
}

Expected<std::string> string_at(const nlohmann::json& obj, const char* key, std::string_view source) {
  auto it = obj.find(key);
  if (it == obj.end()) return missing(source, key, "missing");
  if (!it->is_string()) return missing(source, key, "expected a string");
  return it->get<std::string>();
}

std::optional<double> optional_at(const nlohmann::json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

}  // namespace

std::string_view to_string(LossCause cause) {
  switch (cause) {
    case LossCause::process_exit:
      return "process-exit";
    case LossCause::heartbeat_timeout:
      return "heartbeat-timeout";
    case LossCause::send_failure:
      return "send-failure";
  }
  return "?";
}

std::optional<LossCause> parse_loss_cause(std::string_view name) {
  for (auto c : {LossCause::process_exit, LossCause::heartbeat_timeout, LossCause::send_failure}) {
    if (to_string(c) == name) return c;
  }
  return std::nullopt;
}

std::string_view to_string(RecoveryAction action) {
  switch (action) {
    case RecoveryAction::none:
      return "none";
    case RecoveryAction::switch_over:
      return "switch-over";
    case RecoveryAction::redeploy:
      return "redeploy";
    case RecoveryAction::replan:
      return "re-plan";
    case RecoveryAction::rebalance:
      return "rebalance";
  }
  return "?";
}

std::optional<RecoveryAction> parse_recovery_action(std::string_view name) {
  for (auto a : {RecoveryAction::none, RecoveryAction::switch_over, RecoveryAction::redeploy, RecoveryAction::replan,
                 RecoveryAction::rebalance}) {
    if (to_string(a) == name) return a;
  }
  return std::nullopt;
}

double RunReport::mean_utilization() const {
  double sum = 0;
  int count = 0;
  for (const auto& [name, u] : device_utilization) {
    if (u > 0) {
      sum += u;
      ++count;
    }
  }
  return count > 0 ? sum / count : 0.0;
}

nlohmann::json to_json(const RunReport& report) {
  using nlohmann::json;
  json utilization = json::object();
  for (const auto& [name, u] : report.device_utilization) utilization[name] = u;
  json faults = json::array();
  for (const auto& f : report.faults) {
    faults.push_back({{"at_s", f.at_s},
                      {"device", f.device},
                      {"kind", partition::fault_kind_name(f.kind)},
                      {"detected_s", optional_number(f.detected_s)},
                      {"recovered_s", optional_number(f.recovered_s)},
                      {"recovery_ms", optional_number(f.recovery_ms)},
                      {"recomputed_tokens", f.recomputed_tokens}});
    auto& entry = faults.back();
    if (f.cause) entry["cause"] = to_string(*f.cause);
    if (f.action) entry["action"] = to_string(*f.action);
    if (!f.moves.empty()) {
      entry["moves"] = json::array();
      for (const auto& m : f.moves) {
        entry["moves"].push_back({{"stage", m.stage}, {"from", m.from}, {"to", m.to}, {"backup", m.backup}});
      }
    }
    if (!f.placement.empty()) {
      entry["placement"] = json::array();
      for (const auto& p : f.placement) {
        entry["placement"].push_back({{"device", p.device}, {"first_layer", p.first_layer}, {"last_layer", p.last_layer}});
      }
    }
  }
  json out{{"scenario", report.scenario},
           {"backend", report.backend},
           {"planner", report.planner},
           {"requests_completed", report.requests_completed},
           {"requests_lost", report.requests_lost},
           {"throughput_rps", report.throughput_rps},
           {"tokens_per_s", report.tokens_per_s},
           {"latency_ms", {{"p50", report.latency_ms.p50}, {"p95", report.latency_ms.p95}, {"p99", report.latency_ms.p99}}},
           {"device_utilization", utilization},
           {"bubble_fraction", report.bubble_fraction},
           {"faults", faults}};
  if (report.backend == "exec" || report.requests_failed != 0) out["requests_failed"] = report.requests_failed;
  for (auto [key, summary] : {std::pair{"ttft_ms", &report.ttft_ms}, std::pair{"tpot_ms", &report.tpot_ms}}) {
    if (*summary) out[key] = {{"p50", (*summary)->p50}, {"p95", (*summary)->p95}, {"p99", (*summary)->p99}};
  }
  return out;
}

Expected<RunReport> report_from_json(const nlohmann::json& json, std::string_view source) {
  if (!json.is_object()) return missing(source, "(root)", "expected an object");
  RunReport r;
  auto s = string_at(json, "scenario", source);
  if (!s) return s.error();
  r.scenario = *s;
  s = string_at(json, "backend", source);
  if (!s) return s.error();
  r.backend = *s;
  s = string_at(json, "planner", source);
  if (!s) return s.error();
  r.planner = *s;
  for (auto [key, target] : {std::pair{"requests_completed", &r.requests_completed},
                             std::pair{"requests_lost", &r.requests_lost}}) {
    auto n = number_at(json, key, source);
    if (!n) return n.error();
    *target = static_cast<long long>(std::llround(*n));
  }
  if (json.contains("requests_failed")) {  // optional: exec reports, and reports written before it existed lack it
    auto n = number_at(json, "requests_failed", source);
    if (!n) return n.error();
    r.requests_failed = static_cast<long long>(std::llround(*n));
  }
  for (auto [key, target] : {std::pair{"throughput_rps", &r.throughput_rps}, std::pair{"tokens_per_s", &r.tokens_per_s},
                             std::pair{"bubble_fraction", &r.bubble_fraction}}) {
    auto n = number_at(json, key, source);
    if (!n) return n.error();
    *target = *n;
  }
  auto lat = json.find("latency_ms");
  if (lat == json.end() || !lat->is_object()) return missing(source, "latency_ms", "expected an object");
  for (auto [key, target] : {std::pair{"p50", &r.latency_ms.p50}, std::pair{"p95", &r.latency_ms.p95},
                             std::pair{"p99", &r.latency_ms.p99}}) {
    auto n = number_at(*lat, key, source);
    if (!n) return n.error();
    *target = *n;
  }
  for (auto [name, target] : {std::pair{"ttft_ms", &r.ttft_ms}, std::pair{"tpot_ms", &r.tpot_ms}}) {
    auto it = json.find(name);
    if (it == json.end()) continue;  // optional
    if (!it->is_object()) return missing(source, name, "expected an object");
    LatencySummary s;
    for (auto [key, value] : {std::pair{"p50", &s.p50}, std::pair{"p95", &s.p95}, std::pair{"p99", &s.p99}}) {
      auto n = number_at(*it, key, source);
      if (!n) return n.error();
      *value = *n;
    }
    *target = s;
  }
  auto util = json.find("device_utilization");
  if (util == json.end() || !util->is_object()) return missing(source, "device_utilization", "expected an object");
  for (const auto& [name, value] : util->items()) {
    if (!value.is_number()) return missing(source, "device_utilization." + name, "expected a number");
    r.device_utilization.emplace_back(name, value.get<double>());
  }
  auto faults = json.find("faults");
  if (faults == json.end() || !faults->is_array()) return missing(source, "faults", "expected an array");
  for (const auto& f : *faults) {
    if (!f.is_object()) return missing(source, "faults[]", "expected an object");
    FaultRecord rec;
    auto at = number_at(f, "at_s", source);
    if (!at) return at.error();
    rec.at_s = *at;
    auto dev = string_at(f, "device", source);
    if (!dev) return dev.error();
    rec.device = *dev;
    auto kind = string_at(f, "kind", source);
    if (!kind) return kind.error();
    auto parsed = partition::parse_fault_kind(*kind);
    if (!parsed) return missing(source, "faults[].kind", fmt::format("unknown fault kind '{}'", *kind));
    rec.kind = *parsed;
    if (f.contains("cause")) {
      auto cause = f["cause"].is_string() ? parse_loss_cause(f["cause"].get<std::string>()) : std::nullopt;
      if (!cause) return missing(source, "faults[].cause", "expected process-exit, heartbeat-timeout or send-failure");
      rec.cause = *cause;
    }
    if (f.contains("action")) {
      auto action = f["action"].is_string() ? parse_recovery_action(f["action"].get<std::string>()) : std::nullopt;
      if (!action) return missing(source, "faults[].action", "expected none, switch-over, redeploy, re-plan or rebalance");
      rec.action = *action;
    }
    if (f.contains("moves")) {
      if (!f["moves"].is_array()) return missing(source, "faults[].moves", "expected an array");
      for (const auto& m : f["moves"]) {
        if (!m.is_object() || !m.value("stage", nlohmann::json()).is_number_integer() ||
            !m.value("from", nlohmann::json()).is_string() || !m.value("to", nlohmann::json()).is_string() ||
            !m.value("backup", nlohmann::json()).is_boolean()) {
          return missing(source, "faults[].moves[]", "expected {\"stage\", \"from\", \"to\", \"backup\"}");
        }
        rec.moves.push_back({m["stage"].get<int>(), m["from"].get<std::string>(), m["to"].get<std::string>(),
                             m["backup"].get<bool>()});
      }
    }
    if (f.contains("placement")) {
      if (!f["placement"].is_array()) return missing(source, "faults[].placement", "expected an array");
      for (const auto& p : f["placement"]) {
        if (!p.is_object() || !p.value("device", nlohmann::json()).is_string() ||
            !p.value("first_layer", nlohmann::json()).is_number_integer() ||
            !p.value("last_layer", nlohmann::json()).is_number_integer()) {
          return missing(source, "faults[].placement[]", "expected {\"device\", \"first_layer\", \"last_layer\"}");
        }
        rec.placement.push_back(
            {p["device"].get<std::string>(), p["first_layer"].get<int>(), p["last_layer"].get<int>()});
      }
    }
    rec.detected_s = optional_at(f, "detected_s");
    rec.recovered_s = optional_at(f, "recovered_s");
    rec.recovery_ms = optional_at(f, "recovery_ms");
    if (auto t = optional_at(f, "recomputed_tokens")) rec.recomputed_tokens = static_cast<long long>(std::llround(*t));
    r.faults.push_back(std::move(rec));
  }
  return r;
}

double percentile(std::vector<double>& values, double q) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const double pos = std::clamp(q, 0.0, 1.0) * static_cast<double>(values.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return values[lo] + (values[hi] - values[lo]) * frac;
}

LatencySummary summarize_latencies(std::vector<double> latencies_ms) {
  LatencySummary s;
  s.p50 = percentile(latencies_ms, 0.50);
  s.p95 = percentile(latencies_ms, 0.95);
  s.p99 = percentile(latencies_ms, 0.99);
  return s;
}

SteadyWindow steady_window(long long requests, long long in_flight, bool closed_loop) {
  SteadyWindow w{0, requests};
  if (requests <= 0 || !closed_loop) return w;
  const long long f = std::max<long long>(1, std::min(in_flight, requests));
  if (requests - 2 * f >= std::max<long long>(f, 2)) {
    w.first = f;
    w.last = requests - f;
  }
  return w;
}

double steady_throughput(std::vector<double> completion_times, long long in_flight) {
  const auto n = static_cast<long long>(completion_times.size());
  if (n == 0) return 0;
  std::sort(completion_times.begin(), completion_times.end());
  const auto w = steady_window(n, in_flight, true);
  const double start = w.first == 0 ? 0.0 : completion_times[static_cast<size_t>(w.first - 1)];
  const double span = completion_times[static_cast<size_t>(w.last - 1)] - start;
  return span > 0 ? static_cast<double>(w.last - w.first) / span : 0.0;
}

}  // namespace adaptlink::runtime

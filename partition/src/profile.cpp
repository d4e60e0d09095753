#include "adaptlink/partition/profile.hpp"

#include <map>
#include <nlohmann/json.hpp>

#include "adaptlink/read_file.hpp"

namespace adaptlink::partition {

namespace {

Error located(const std::string& source, std::string message) { return Error{std::move(message), source, 0, 0}; }

Expected<double> time_field(const nlohmann::json& node, const char* key, const std::string& where,
                            const std::string& source) {
  auto it = node.find(key);
  if (it == node.end()) return located(source, fmt::format("{}: missing '{}'", where, key));
  if (!it->is_number()) return located(source, fmt::format("{}: '{}' must be a number", where, key));
  const double v = it->get<double>();
  if (!(v >= 0)) return located(source, fmt::format("{}: '{}' must be >= 0 (got {})", where, key, v));
  return v;
}

// "request_shape": {"images", "prompt_tokens", "output_tokens"}: the shape the times were measured for; images
// and prompt_tokens must be the scenario's (prefill times depend on them).
Status check_shape(const nlohmann::json& obj, const CostModel& cost, const std::string& source,
                   const std::string& where) {
  auto it = obj.find("request_shape");
  if (it == obj.end()) return Ok{};
  const std::string at = where.empty() ? std::string("request_shape") : where + ".request_shape";
  if (!it->is_object()) return located(source, fmt::format("{}: expected an object", at));
  const auto& want = cost.shape();
  for (const auto& [key, value] : it->items()) {
    if (key != "images" && key != "prompt_tokens" && key != "output_tokens") {
      return located(source, fmt::format("{}: unknown key '{}'", at, key));
    }
    if (!value.is_number_integer() || value.get<long long>() < 0) {
      return located(source, fmt::format("{}: '{}' must be an integer >= 0", at, key));
    }
  }
  auto field = [&](const char* key) { return it->contains(key) ? (*it)[key].get<long long>() : -1; };
  if ((field("images") >= 0 && field("images") != want.images) ||
      (field("prompt_tokens") >= 0 && field("prompt_tokens") != want.prompt_tokens)) {
    return located(source, fmt::format("{}: the times were measured for {} image(s) and {} prompt tokens, scenario "
                                       "'{}' asks for {} and {} (measure again with its shape, e.g. adaptlink-run "
                                       "profile --scenario)",
                                       at, field("images"), field("prompt_tokens"), cost.scenario().name, want.images,
                                       want.prompt_tokens));
  }
  return Ok{};
}

Expected<DeviceProfile> parse_one(const nlohmann::json& obj, const CostModel& cost, const std::string& source,
                                  const std::string& where) {
  if (!obj.is_object()) return located(source, fmt::format("{}: expected an object", where));
  for (const auto& [key, value] : obj.items()) {
    if (key != "device" && key != "kind" && key != "nodes" && key != "comment" && key != "request_shape" &&
        key != "batch_sizes") {
      return located(source, fmt::format("{}: unknown key '{}'", where, key));
    }
  }
  if (auto st = check_shape(obj, cost, source, where); !st) return st.error();
  const auto& scenario = cost.scenario();
  DeviceProfile profile;
  const bool has_device = obj.contains("device");
  const bool has_kind = obj.contains("kind");
  if (has_device == has_kind) return located(source, fmt::format("{}: give either 'device' or 'kind'", where));
  if (has_device) {
    if (!obj["device"].is_string()) return located(source, fmt::format("{}: 'device' must be a string", where));
    const auto name = obj["device"].get<std::string>();
    const int d = scenario.device_index(name);
    if (d < 0) return located(source, fmt::format("{}: no device '{}' in scenario '{}'", where, name, scenario.name));
    profile.devices.push_back(d);
  } else {
    if (!obj["kind"].is_string()) return located(source, fmt::format("{}: 'kind' must be a string", where));
    const auto kind = obj["kind"].get<std::string>();
    for (int d = 0; d < static_cast<int>(scenario.devices.size()); ++d) {
      if (scenario.devices[static_cast<size_t>(d)].kind == kind) profile.devices.push_back(d);
    }
    if (profile.devices.empty()) {
      return located(source, fmt::format("{}: no device of kind '{}' in scenario '{}'", where, kind, scenario.name));
    }
  }
  auto& t = profile.times;
  if (auto b = obj.find("batch_sizes"); b != obj.end()) {
    if (!b->is_array() || b->empty()) {
      return located(source, fmt::format("{}: 'batch_sizes' must be a non-empty array of integers > 1", where));
    }
    for (const auto& v : *b) {
      if (!v.is_number_integer() || v.get<long long>() < 2 || v.get<long long>() > 4096 ||
          (!t.batch_sizes.empty() && v.get<long long>() <= t.batch_sizes.back())) {
        return located(source, fmt::format("{}: 'batch_sizes' must be ascending integers from 2 to 4096, got {}",
                                           where, b->dump()));
      }
      t.batch_sizes.push_back(v.get<int>());
    }
  }
  auto nodes_it = obj.find("nodes");
  if (nodes_it == obj.end() || !nodes_it->is_array()) {
    return located(source, fmt::format("{}: 'nodes' must be an array", where));
  }
  const auto& graph = cost.graph();
  std::map<std::string, int, std::less<>> index;
  for (int i = 0; i < graph.size(); ++i) index[graph.node(i).name] = i;
  const auto n = static_cast<size_t>(graph.size());
  t.prefill_ms.assign(n, 0.0);
  if (!t.batch_sizes.empty()) t.decode_batch_ms_at_zero.assign(n, std::vector<double>(t.batch_sizes.size(), 0.0));
  t.decode_ms_at_zero.assign(n, 0.0);
  t.decode_ms_per_token.assign(n, 0.0);
  std::vector<bool> seen(n, false);
  size_t k = 0;
  for (const auto& node : *nodes_it) {
    const std::string at = fmt::format("{}.nodes[{}]", where, k++);
    if (!node.is_object() || !node.contains("name") || !node["name"].is_string()) {
      return located(source, fmt::format("{}: expected an object with a string 'name'", at));
    }
    for (const auto& [key, value] : node.items()) {
      if (key != "name" && key != "prefill_ms" && key != "decode_ms_at_zero" && key != "decode_ms_per_token" &&
          key != "decode_batch_ms_at_zero") {
        return located(source, fmt::format("{}: unknown key '{}'", at, key));
      }
    }
    const auto name = node["name"].get<std::string>();
    auto it = index.find(name);
    if (it == index.end()) return located(source, fmt::format("{}: the model has no node '{}'", at, name));
    const auto i = static_cast<size_t>(it->second);
    if (seen[i]) return located(source, fmt::format("{}: node '{}' appears twice", at, name));
    seen[i] = true;
    auto prefill = time_field(node, "prefill_ms", at, source);
    if (!prefill) return prefill.error();
    auto zero = time_field(node, "decode_ms_at_zero", at, source);
    if (!zero) return zero.error();
    auto per_token = time_field(node, "decode_ms_per_token", at, source);
    if (!per_token) return per_token.error();
    t.prefill_ms[i] = *prefill;
    t.decode_ms_at_zero[i] = *zero;
    t.decode_ms_per_token[i] = *per_token;
    // Batches: with the entry's batch_sizes, one time per size for every node that decodes (optional where the
    // node's decode step is 0: the vision tower).
    auto batch = node.find("decode_batch_ms_at_zero");
    if (batch != node.end() && t.batch_sizes.empty()) {
      return located(source, fmt::format("{}: 'decode_batch_ms_at_zero' needs the entry's 'batch_sizes'", at));
    }
    if (!t.batch_sizes.empty()) {
      if (batch == node.end()) {
        if (*zero > 0) {
          return located(source, fmt::format("{}: 'decode_batch_ms_at_zero' is missing (the entry measured batches "
                                             "of {})", at, nlohmann::json(t.batch_sizes).dump()));
        }
      } else {
        if (!batch->is_array() || batch->size() != t.batch_sizes.size()) {
          return located(source, fmt::format("{}: 'decode_batch_ms_at_zero' must hold {} times (one per batch size)",
                                             at, t.batch_sizes.size()));
        }
        for (size_t k = 0; k < batch->size(); ++k) {
          const auto& v = (*batch)[k];
          if (!v.is_number() || !(v.get<double>() >= 0)) {
            return located(source, fmt::format("{}: 'decode_batch_ms_at_zero'[{}] must be a number >= 0", at, k));
          }
          t.decode_batch_ms_at_zero[i][k] = v.get<double>();
        }
      }
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (!seen[i]) {
      return located(source, fmt::format("{}: node '{}' is missing (every node of the model needs times)", where,
                                         graph.node(static_cast<int>(i)).name));
    }
  }
  return profile;
}

}  // namespace

Expected<std::vector<DeviceProfile>> parse_profile(const nlohmann::json& json, const CostModel& cost,
                                                   const std::string& source) {
  std::vector<DeviceProfile> out;
  if (json.is_object() && json.contains("profiles")) {
    for (const auto& [key, value] : json.items()) {
      if (key != "profiles" && key != "comment" && key != "request_shape") {
        return located(source,
                       fmt::format("unknown key '{}' beside 'profiles' (allowed: comment, request_shape)", key));
      }
    }
    if (!json["profiles"].is_array()) return located(source, "'profiles' must be an array");
    if (auto st = check_shape(json, cost, source, ""); !st) return st.error();
    size_t k = 0;
    for (const auto& item : json["profiles"]) {
      auto p = parse_one(item, cost, source, fmt::format("profiles[{}]", k++));
      if (!p) return p.error();
      out.push_back(std::move(*p));
    }
  } else {
    auto p = parse_one(json, cost, source, "profile");
    if (!p) return p.error();
    out.push_back(std::move(*p));
  }
  return out;
}

Expected<std::vector<DeviceProfile>> load_profile(const std::filesystem::path& path, const CostModel& cost) {
  auto text = read_input_file(path, "the profile file");
  if (!text) return text.error();
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(*text);
  } catch (const nlohmann::json::parse_error& e) {
    return located(path.string(), fmt::format("invalid JSON: {}", e.what()));
  }
  return parse_profile(json, cost, path.string());
}

Status apply_profile(const std::filesystem::path& path, CostModel& cost) {
  auto profiles = load_profile(path, cost);
  if (!profiles) return profiles.error();
  for (const auto& p : *profiles) {
    for (int d : p.devices) cost.set_profile(d, p.times);
  }
  return Ok{};
}

Status apply_profiles(const std::vector<std::string>& files, CostModel& cost) {
  for (const auto& file : files) {
    if (auto st = apply_profile(file, cost); !st) return st;
  }
  return Ok{};
}

nlohmann::json profile_to_json(const models::LayerGraph& graph, const std::vector<ProfileEntry>& entries,
                               const ProfileMeta& meta) {
  ADAPTLINK_CHECK(!entries.empty(), "profile_to_json: no entries");
  const auto n = static_cast<size_t>(graph.size());
  auto entry_json = [&](const ProfileEntry& e) {
    ADAPTLINK_CHECK(e.device.empty() != e.kind.empty(), "profile entry needs exactly one of device and kind");
    ADAPTLINK_CHECK(e.times.prefill_ms.size() == n && e.times.decode_ms_at_zero.size() == n &&
                        e.times.decode_ms_per_token.size() == n,
                    "profile entry has times for a graph of another size");
    const bool batches = !e.times.batch_sizes.empty();
    ADAPTLINK_CHECK(!batches || e.times.decode_batch_ms_at_zero.size() == n, "profile entry's batch table size");
    nlohmann::json nodes = nlohmann::json::array();
    for (size_t i = 0; i < n; ++i) {
      nodes.push_back({{"name", graph.node(static_cast<int>(i)).name},
                       {"prefill_ms", e.times.prefill_ms[i]},
                       {"decode_ms_at_zero", e.times.decode_ms_at_zero[i]},
                       {"decode_ms_per_token", e.times.decode_ms_per_token[i]}});
      if (batches) nodes.back()["decode_batch_ms_at_zero"] = e.times.decode_batch_ms_at_zero[i];
    }
    nlohmann::json j = nlohmann::json::object();
    if (!e.device.empty()) {
      j["device"] = e.device;
    } else {
      j["kind"] = e.kind;
    }
    if (batches) j["batch_sizes"] = e.times.batch_sizes;
    j["nodes"] = std::move(nodes);
    return j;
  };
  nlohmann::json out = entries.size() == 1 ? entry_json(entries.front()) : nlohmann::json::object();
  if (!meta.comment.empty()) out["comment"] = meta.comment;
  if (meta.shape) {
    out["request_shape"] = {{"images", meta.shape->images},
                            {"prompt_tokens", meta.shape->prompt_tokens},
                            {"output_tokens", meta.shape->output_tokens}};
  }
  if (entries.size() > 1) {
    out["profiles"] = nlohmann::json::array();
    for (const auto& e : entries) out["profiles"].push_back(entry_json(e));
  }
  return out;
}

}  // namespace adaptlink::partition

// adaptlink-make-checkpoint: writes a LLaVA checkpoint with random weights in the Hugging Face layout
// (config.json, sharded model-0000k-of-0000n.safetensors + model.safetensors.index.json,
// preprocessor_config.json), streaming tensor by tensor so that a 7B model never sits in memory.
//
//   adaptlink-make-checkpoint --preset llava-1.5-7b --out /tmp/llava7b --dtype bf16 [--shard-gb 2]
//   adaptlink-make-checkpoint --config config.json --out DIR
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/safetensors.hpp"

namespace {

using namespace adaptlink;
using namespace adaptlink::exec;

int fail(const std::string& message) {
  std::fprintf(stderr, "adaptlink-make-checkpoint: error: %s\n", message.c_str());
  return 2;
}

std::string stored_key(const std::string& canonical) {
  static const std::pair<std::string_view, std::string_view> kMap[] = {{"text.", "language_model.model."},
                                                                       {"lm_head.", "language_model.lm_head."},
                                                                       {"vision.", "vision_tower.vision_model."},
                                                                       {"projector.", "multi_modal_projector."}};
  for (const auto& [from, to] : kMap) {
    if (canonical.rfind(from, 0) == 0) return std::string(to) + canonical.substr(from.size());
  }
  return canonical;
}

struct Xorshift {
  uint64_t s;
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Write a random-weight LLaVA checkpoint"};
  std::string preset;
  std::string config_path;
  std::string out_dir;
  std::string dtype_name = "bf16";
  double shard_gb = 2.0;
  uint64_t seed = 1;
  app.add_option("--preset", preset, "built-in model preset (e.g. llava-1.5-7b)");
  app.add_option("--config", config_path, "a LLaVA config.json");
  app.add_option("--out", out_dir, "output directory")->required();
  app.add_option("--dtype", dtype_name, "bf16 | fp16 | fp32")->check(CLI::IsMember({"bf16", "fp16", "fp32"}));
  app.add_option("--shard-gb", shard_gb, "shard size in GB (default 2)");
  app.add_option("--seed", seed, "random seed");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return fail(e.what());
  }
  if (preset.empty() == config_path.empty()) return fail("give exactly one of --preset and --config");

  std::string config_text;
  if (!preset.empty()) {
    config_text = std::string(models::preset_config_text(preset));
    if (config_text.empty()) return fail(fmt::format("unknown preset '{}'", preset));
  } else {
    std::ifstream in(config_path);
    if (!in) return fail(fmt::format("{}: cannot open", config_path));
    std::ostringstream s;
    s << in.rdbuf();
    config_text = s.str();
  }
  nlohmann::json raw;
  try {
    raw = nlohmann::json::parse(config_text);
  } catch (const std::exception& e) {
    return fail(fmt::format("bad config JSON: {}", e.what()));
  }
  auto config = models::parse_llava_config(raw, preset.empty() ? config_path : preset);
  if (!config) return fail(config.error().to_string());
  const StDtype dtype = dtype_name == "bf16" ? StDtype::BF16 : dtype_name == "fp16" ? StDtype::F16 : StDtype::F32;

  // Every tensor of the checkpoint: the graph's nodes plus the CLIP layers the feature layer leaves unused
  // and CLIP's post-layernorm, as real checkpoints hold them.
  auto graph = models::LayerGraph::build(*config, models::Dtype::bf16);
  std::vector<TensorRequirement> tensors;
  for (int n = 0; n < graph.size(); ++n) {
    for (auto& t : node_tensors(graph, n, !config->tie_word_embeddings)) {
      if (n == graph.head_index() && t.name == "text.embed_tokens.weight") continue;  // tied: stored once
      tensors.push_back(std::move(t));
    }
  }
  {
    models::LlavaConfig all = *config;
    all.vision_feature_layer = -1;
    auto full = models::LayerGraph::build(all, models::Dtype::bf16);
    for (int n = 0; n < full.size(); ++n) {
      if (full.node(n).kind != models::NodeKind::vision_layer || full.node(n).layer < config->vision_layers_used()) continue;
      for (auto& t : node_tensors(full, n, true)) tensors.push_back(std::move(t));
    }
    const int64_t hv = config->vision.hidden_size;
    tensors.push_back({"vision.post_layernorm.weight", {hv}});
    tensors.push_back({"vision.post_layernorm.bias", {hv}});
  }

  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) return fail(fmt::format("{}: {}", out_dir, ec.message()));
  // A small file of the checkpoint, checked once closed (a full disk fails there).
  auto write_json = [&](const char* file, const nlohmann::json& j) {
    std::ofstream out(std::filesystem::path(out_dir) / file);
    out << j.dump(2) << "\n";
    out.close();
    return static_cast<bool>(out);
  };
  {
    if (!write_json("config.json", raw)) return fail(fmt::format("{}/config.json: write failed", out_dir));
    const int size = config->vision.image_size;
    nlohmann::json pre = {{"crop_size", {{"height", size}, {"width", size}}},
                          {"do_center_crop", true},
                          {"do_convert_rgb", true},
                          {"do_normalize", true},
                          {"do_rescale", true},
                          {"do_resize", true},
                          {"image_mean", {0.48145466, 0.4578275, 0.40821073}},
                          {"image_std", {0.26862954, 0.26130258, 0.27577711}},
                          {"image_processor_type", "CLIPImageProcessor"},
                          {"resample", 3},
                          {"rescale_factor", 1.0 / 255.0},
                          {"size", {{"shortest_edge", size}}}};
    if (!write_json("preprocessor_config.json", pre)) {
      return fail(fmt::format("{}/preprocessor_config.json: write failed", out_dir));
    }
  }

  // Group tensors into shards.
  const uint64_t shard_bytes = static_cast<uint64_t>(shard_gb * 1e9);
  std::vector<std::vector<const TensorRequirement*>> shards(1);
  uint64_t acc = 0;
  uint64_t total_bytes = 0;
  for (const auto& t : tensors) {
    uint64_t bytes = element_size(dtype);
    for (int64_t d : t.shape) bytes *= static_cast<uint64_t>(d);
    if (acc > 0 && acc + bytes > shard_bytes) {
      shards.emplace_back();
      acc = 0;
    }
    shards.back().push_back(&t);
    acc += bytes;
    total_bytes += bytes;
  }
  nlohmann::json weight_map = nlohmann::json::object();
  Xorshift rng{seed * 0x9E3779B97F4A7C15ull + 1};
  std::vector<char> buffer;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
    nlohmann::json header = nlohmann::json::object();
    uint64_t offset = 0;
    for (const auto* t : shards[s]) {
      uint64_t bytes = element_size(dtype);
      for (int64_t d : t->shape) bytes *= static_cast<uint64_t>(d);
      header[stored_key(t->name)] = {{"dtype", std::string(to_string(dtype))}, {"shape", t->shape},
                                     {"data_offsets", {offset, offset + bytes}}};
      offset += bytes;
      weight_map[stored_key(t->name)] = name;
    }
    std::string text = header.dump();
    while (text.size() % 8 != 0) text.push_back(' ');
    std::ofstream out(std::filesystem::path(out_dir) / name, std::ios::binary | std::ios::trunc);
    const uint64_t len = text.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto* t : shards[s]) {
      int64_t numel = 1;
      for (int64_t d : t->shape) numel *= d;
      const bool is_norm = t->name.find("norm") != std::string::npos || t->name.find("layrnorm") != std::string::npos;
      const bool is_bias = t->name.size() > 5 && t->name.substr(t->name.size() - 5) == ".bias";
      const float scale = 0.02f * 1.7320508f;  // uniform with std 0.02
      buffer.resize(static_cast<size_t>(numel) * element_size(dtype));
      for (int64_t i = 0; i < numel; ++i) {
        float v;
        if (is_norm && !is_bias) {
          v = 1.0f;
        } else {
          const float u = static_cast<float>(rng.next() >> 40) / static_cast<float>(1ull << 24);  // [0, 1)
          v = (2.0f * u - 1.0f) * scale;
        }
        if (dtype == StDtype::F32) {
          std::memcpy(buffer.data() + i * 4, &v, 4);
        } else if (dtype == StDtype::BF16) {
          const uint16_t b = float_to_bf16(v);
          std::memcpy(buffer.data() + i * 2, &b, 2);
        } else {
          // fp16 via bf16 -> not exact, but random weights need no exactness: use a simple conversion.
          uint32_t bits;
          std::memcpy(&bits, &v, 4);
          const uint32_t sign = (bits >> 16) & 0x8000u;
          int exp = static_cast<int>((bits >> 23) & 0xff) - 127 + 15;
          uint16_t h = static_cast<uint16_t>(sign);
          if (exp > 0 && exp < 31) h = static_cast<uint16_t>(sign | (exp << 10) | ((bits >> 13) & 0x3ff));
          std::memcpy(buffer.data() + i * 2, &h, 2);
        }
      }
      out.write(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    }
    out.close();
    if (!out) return fail(fmt::format("{}: write failed (disk full?)", name));
    std::fprintf(stderr, "wrote %s (%zu tensors)\n", name.c_str(), shards[s].size());
  }
  nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  if (!write_json("model.safetensors.index.json", index)) {
    return fail(fmt::format("{}/model.safetensors.index.json: write failed", out_dir));
  }
  std::printf("%s: %zu tensors, %llu bytes in %zu shards\n", out_dir.c_str(), tensors.size(),
              static_cast<unsigned long long>(total_bytes), shards.size());
  return 0;
}

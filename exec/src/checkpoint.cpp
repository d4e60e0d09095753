#include "adaptlink/exec/checkpoint.hpp"

#include <nlohmann/json.hpp>
#include <set>

#include "adaptlink/read_file.hpp"

namespace adaptlink::exec {
namespace {

using models::NodeKind;

Error file_error(const std::filesystem::path& path, std::string message) {
  return Error{std::move(message), path.string(), 0, 0};
}

Expected<nlohmann::json> read_json(const std::filesystem::path& path) {
  auto text = read_input_file(path, path.filename().string());
  if (!text) return text.error();
  try {
    return nlohmann::json::parse(*text);
  } catch (const nlohmann::json::exception& e) {
    return file_error(path, fmt::format("bad JSON: {}", e.what()));
  }
}

void add(std::vector<TensorRequirement>& out, std::string name, std::vector<int64_t> shape) {
  out.push_back({std::move(name), std::move(shape)});
}

}  // namespace

std::optional<std::string> canonical_tensor_name(std::string_view key) {
  static const std::pair<std::string_view, std::string_view> kPrefixes[] = {
      {"language_model.model.", "text."},
      {"model.language_model.", "text."},
      {"language_model.lm_head.", "lm_head."},
      {"lm_head.", "lm_head."},
      {"model.vision_tower.vision_model.", "vision."},
      {"vision_tower.vision_model.", "vision."},
      {"model.vision_tower.", "vision."},
      {"vision_tower.", "vision."},
      {"model.multi_modal_projector.", "projector."},
      {"multi_modal_projector.", "projector."},
  };
  if (key == "image_newline" || key == "model.image_newline") return std::string("image_newline");
  for (const auto& [prefix, canonical] : kPrefixes) {
    if (key.substr(0, prefix.size()) == prefix) return std::string(canonical) + std::string(key.substr(prefix.size()));
  }
  return std::nullopt;
}

std::vector<TensorRequirement> node_tensors(const models::LayerGraph& graph, int node_index, bool has_lm_head) {
  const auto& config = graph.config();
  const auto& v = config.vision;
  const auto& t = config.text;
  const auto& node = graph.node(node_index);
  const int64_t hv = v.hidden_size;
  const int64_t iv = v.intermediate_size;
  const int64_t ht = t.hidden_size;
  const int64_t it = t.intermediate_size;
  const int64_t q_width = static_cast<int64_t>(t.num_attention_heads) * t.head_dim;
  const int64_t kv_width = static_cast<int64_t>(t.num_key_value_heads) * t.head_dim;
  std::vector<TensorRequirement> out;
  switch (node.kind) {
    case NodeKind::vision_embed:
      add(out, "vision.embeddings.class_embedding", {hv});
      add(out, "vision.embeddings.patch_embedding.weight", {hv, v.num_channels, v.patch_size, v.patch_size});
      add(out, "vision.embeddings.position_embedding.weight", {v.num_positions(), hv});
      add(out, "vision.pre_layrnorm.weight", {hv});
      add(out, "vision.pre_layrnorm.bias", {hv});
      break;
    case NodeKind::vision_layer: {
      const std::string p = fmt::format("vision.encoder.layers.{}.", node.layer);
      for (const char* norm : {"layer_norm1", "layer_norm2"}) {
        add(out, p + norm + ".weight", {hv});
        add(out, p + norm + ".bias", {hv});
      }
      for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
        add(out, p + "self_attn." + proj + ".weight", {hv, hv});
        add(out, p + "self_attn." + proj + ".bias", {hv});
      }
      add(out, p + "mlp.fc1.weight", {iv, hv});
      add(out, p + "mlp.fc1.bias", {iv});
      add(out, p + "mlp.fc2.weight", {hv, iv});
      add(out, p + "mlp.fc2.bias", {hv});
      break;
    }
    case NodeKind::projector:
      add(out, "projector.linear_1.weight", {ht, hv});
      add(out, "projector.linear_2.weight", {ht, ht});
      if (config.multimodal_projector_bias) {
        add(out, "projector.linear_1.bias", {ht});
        add(out, "projector.linear_2.bias", {ht});
      }
      break;
    case NodeKind::text_embed:
      add(out, "text.embed_tokens.weight", {t.vocab_size, ht});
      if (config.model_type == "llava_next") add(out, "image_newline", {ht});
      break;
    case NodeKind::decoder_layer: {
      const std::string p = fmt::format("text.layers.{}.", node.layer);
      add(out, p + "input_layernorm.weight", {ht});
      add(out, p + "post_attention_layernorm.weight", {ht});
      add(out, p + "self_attn.q_proj.weight", {q_width, ht});
      add(out, p + "self_attn.k_proj.weight", {kv_width, ht});
      add(out, p + "self_attn.v_proj.weight", {kv_width, ht});
      add(out, p + "self_attn.o_proj.weight", {ht, q_width});
      if (t.attention_bias) {
        add(out, p + "self_attn.q_proj.bias", {q_width});
        add(out, p + "self_attn.k_proj.bias", {kv_width});
        add(out, p + "self_attn.v_proj.bias", {kv_width});
        add(out, p + "self_attn.o_proj.bias", {ht});
      }
      add(out, p + "mlp.gate_proj.weight", {it, ht});
      add(out, p + "mlp.up_proj.weight", {it, ht});
      add(out, p + "mlp.down_proj.weight", {ht, it});
      if (t.mlp_bias) {
        add(out, p + "mlp.gate_proj.bias", {it});
        add(out, p + "mlp.up_proj.bias", {it});
        add(out, p + "mlp.down_proj.bias", {ht});
      }
      break;
    }
    case NodeKind::head:
      add(out, "text.norm.weight", {ht});
      // Tied embeddings reuse the token embedding as the output projection (transformers ties them and
      // does not save lm_head); an untied checkpoint must have its own lm_head.
      if (config.tie_word_embeddings || !has_lm_head) {
        add(out, config.tie_word_embeddings ? "text.embed_tokens.weight" : "lm_head.weight", {t.vocab_size, ht});
      } else {
        add(out, "lm_head.weight", {t.vocab_size, ht});
      }
      break;
  }
  return out;
}

Expected<models::LlavaConfig> load_checkpoint_config(const std::filesystem::path& dir, NextCheckpoints next) {
  auto path = dir / "config.json";
  auto json = read_json(path);
  if (!json) return json.error();
  auto config = models::parse_llava_config(*json, path.string());
  if (!config) return config.error();
  if (config->model_type == "llava_next" && next == NextCheckpoints::refuse) {
    return file_error(path,
                      "model_type 'llava_next' (LLaVA-NeXT anyres) is not supported here yet: it runs in one "
                      "process only (adaptlink-run generate without --stages, --plan or --scenario); workers, serve, "
                      "testbed and profile do not carry its image sizes yet");
  }
  const auto& t = config->text;
  if (t.model_type != "llama" && t.model_type != "mistral") {
    return file_error(
        path, fmt::format("text_config.model_type '{}' is not supported (expected llama or mistral)", t.model_type));
  }
  if (t.hidden_act != "silu") {
    return file_error(path, fmt::format("text_config.hidden_act '{}' is not supported (expected silu)", t.hidden_act));
  }
  if (t.rope_type != "default") {
    return file_error(path,
                      fmt::format("text_config rope type '{}' is not supported (only default RoPE)", t.rope_type));
  }
  if (config->vision.hidden_act != "quick_gelu" && config->vision.hidden_act != "gelu") {
    return file_error(path, fmt::format("vision_config.hidden_act '{}' is not supported (expected quick_gelu or gelu)",
                                        config->vision.hidden_act));
  }
  if (config->projector_hidden_act != "gelu") {
    return file_error(
        path, fmt::format("projector_hidden_act '{}' is not supported (expected gelu)", config->projector_hidden_act));
  }
  if (t.head_dim % 2 != 0)
    return file_error(path, fmt::format("text head_dim {} is odd (RoPE needs pairs)", t.head_dim));
  if (config->vision.hidden_size % config->vision.num_attention_heads != 0) {
    return file_error(path, "vision_config.hidden_size is not a multiple of num_attention_heads");
  }
  if (t.num_attention_heads % t.num_key_value_heads != 0) {
    return file_error(path, "text num_attention_heads is not a multiple of num_key_value_heads");
  }
  return config;
}

Expected<Checkpoint> Checkpoint::open(const std::filesystem::path& dir, NextCheckpoints next) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return file_error(dir, "not a checkpoint directory");
  Checkpoint ckpt;
  ckpt.dir_ = dir;
  auto config = load_checkpoint_config(dir, next);
  if (!config) return config.error();
  ckpt.config_ = std::move(config).value();
  auto raw = read_json(dir / "config.json");
  if (!raw) return raw.error();
  ckpt.raw_config_ = std::make_shared<nlohmann::json>(std::move(raw).value());

  // Which files, and for a sharded checkpoint which tensor the index says lives where.
  std::map<std::string, std::string> index_map;  // key -> shard file name
  const auto index_path = dir / "model.safetensors.index.json";
  std::vector<std::string> shard_names;
  if (std::filesystem::exists(index_path, ec)) {
    auto index = read_json(index_path);
    if (!index) return index.error();
    if (!index->is_object() || !index->contains("weight_map") || !(*index)["weight_map"].is_object()) {
      return file_error(index_path, "no 'weight_map' object");
    }
    std::set<std::string> names;
    for (const auto& [key, file] : (*index)["weight_map"].items()) {
      if (!file.is_string()) return file_error(index_path, fmt::format("weight_map['{}'] is not a file name", key));
      const auto name = file.get<std::string>();
      if (name.find('/') != std::string::npos || name == ".." || name.empty()) {
        return file_error(index_path,
                          fmt::format("weight_map['{}'] names '{}', not a file in the directory", key, name));
      }
      index_map[key] = name;
      names.insert(name);
    }
    shard_names.assign(names.begin(), names.end());
  } else if (std::filesystem::exists(dir / "model.safetensors", ec)) {
    shard_names.push_back("model.safetensors");
  } else {
    return file_error(dir, "no model.safetensors or model.safetensors.index.json");
  }

  std::map<std::string, std::shared_ptr<SafetensorsFile>> by_name;
  for (const auto& name : shard_names) {
    const auto path = dir / name;
    if (!std::filesystem::exists(path, ec)) {
      return file_error(index_path, fmt::format("shard '{}' named by the index is missing", name));
    }
    auto file = SafetensorsFile::open(path);
    if (!file) return file.error();
    by_name[name] = *file;
    ckpt.files_.push_back(*file);
  }
  for (const auto& [key, name] : index_map) {
    if (by_name.at(name)->find(key) == nullptr) {
      return file_error(dir / name,
                        fmt::format("tensor '{}' is listed in the index for this shard but missing from it", key));
    }
  }

  bool legacy = false;
  bool v5 = false;
  for (const auto& file : ckpt.files_) {
    for (const auto& [key, info] : file->tensors()) {
      // With an index, a tensor belongs to the shard the index names.
      if (!index_map.empty()) {
        auto it = index_map.find(key);
        if (it == index_map.end() || by_name.at(it->second) != file) continue;
      }
      auto canonical = canonical_tensor_name(key);
      if (!canonical) continue;
      if (key.rfind("language_model.", 0) == 0) legacy = true;
      if (key.rfind("model.language_model.", 0) == 0) v5 = true;
      auto [it, inserted] = ckpt.tensors_.emplace(*canonical, CheckpointTensor{file, &info, key});
      if (!inserted) {
        return file_error(file->path(), fmt::format("tensor '{}' duplicates '{}' (both map to '{}')", key,
                                                    it->second.key, *canonical));
      }
    }
  }
  ckpt.key_layout_ = v5 ? (legacy ? "mixed" : "transformers5") : "legacy";
  return ckpt;
}

const CheckpointTensor* Checkpoint::find(std::string_view canonical) const {
  auto it = tensors_.find(std::string(canonical));
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::filesystem::path> Checkpoint::files() const {
  std::vector<std::filesystem::path> out;
  for (const auto& f : files_) out.push_back(f->path());
  return out;
}

Status Checkpoint::check_nodes(const models::LayerGraph& graph, int first, int last) const {
  if (first < 0 || last >= graph.size() || first > last) {
    return make_error("node range [{}, {}] is outside the model's {} nodes", first, last, graph.size());
  }
  for (int n = first; n <= last; ++n) {
    for (const auto& req : node_tensors(graph, n, has_lm_head())) {
      const auto* t = find(req.name);
      if (t == nullptr) {
        return file_error(files_.size() == 1 ? files_[0]->path() : dir_,
                          fmt::format("missing tensor '{}' (needed by node {} '{}')", req.name, n, graph.node(n).name));
      }
      if (!is_weight_dtype(t->info->dtype)) {
        return file_error(t->file->path(), fmt::format("tensor '{}' has dtype {}, expected F32, F16 or BF16", t->key,
                                                       to_string(t->info->dtype)));
      }
      if (t->info->shape != req.shape) {
        return file_error(t->file->path(), fmt::format("tensor '{}' has shape {}, expected {}", t->key,
                                                       shape_string(t->info->shape), shape_string(req.shape)));
      }
    }
  }
  return Ok{};
}

}  // namespace adaptlink::exec

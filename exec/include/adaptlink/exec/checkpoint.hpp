// A Hugging Face LLaVA checkpoint directory (no torch): config.json, model.safetensors or sharded
// model-0000k-of-0000n.safetensors + model.safetensors.index.json, preprocessor_config.json, optional
// tokenizer.model.
//
// Tensor names are mapped to one canonical layout, whatever transformers version wrote them:
//   language_model.model.X | model.language_model.X             -> text.X
//   language_model.lm_head.X | lm_head.X                         -> lm_head.X
//   vision_tower.vision_model.X | model.vision_tower.vision_model.X | vision_tower.X | model.vision_tower.X
//                                                                -> vision.X
//   multi_modal_projector.X | model.multi_modal_projector.X      -> projector.X
//   image_newline | model.image_newline                          -> image_newline
// and the tensors each node of the layer DAG needs are listed with their expected shapes, so that a
// stage can check and load just its own.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/exec/safetensors.hpp"
#include "adaptlink/models/config.hpp"
#include "adaptlink/models/graph.hpp"

namespace adaptlink::exec {

// Canonical name of a checkpoint key, or nullopt for keys the model does not use.
std::optional<std::string> canonical_tensor_name(std::string_view key);

struct TensorRequirement {
  std::string name;             // canonical
  std::vector<int64_t> shape;   // expected shape
};

// Canonical tensors node `node` of `graph` needs (tied embeddings: the head asks for text.embed_tokens.weight
// when the checkpoint has no lm_head).
std::vector<TensorRequirement> node_tensors(const models::LayerGraph& graph, int node, bool has_lm_head);

struct CheckpointTensor {
  std::shared_ptr<SafetensorsFile> file;
  const TensorInfo* info = nullptr;
  std::string key;  // as stored in the file
};

// LLaVA-NeXT needs each image's size with its pixels (StepInput::image_sizes, GenerateRequest::image_sizes): only the
// single-process Stage and LlavaRunner API carries them so far, so every other entry point (the CLI, workers, serve,
// testbed, profile) refuses NeXT checkpoints; `accept` is for that API.
enum class NextCheckpoints { refuse, accept };

class Checkpoint {
 public:
  // Reads config.json and the safetensors headers (all shards; no tensor data is touched).
  static Expected<Checkpoint> open(const std::filesystem::path& dir, NextCheckpoints next = NextCheckpoints::refuse);

  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }
  [[nodiscard]] const models::LlavaConfig& config() const { return config_; }
  [[nodiscard]] const nlohmann::json& raw_config() const { return *raw_config_; }
  [[nodiscard]] const CheckpointTensor* find(std::string_view canonical) const;
  [[nodiscard]] const std::map<std::string, CheckpointTensor>& tensors() const { return tensors_; }
  [[nodiscard]] bool has_lm_head() const { return find("lm_head.weight") != nullptr; }
  [[nodiscard]] std::vector<std::filesystem::path> files() const;
  // "transformers5" (model.language_model.*) or "legacy" (language_model.model.*).
  [[nodiscard]] const std::string& key_layout() const { return key_layout_; }

  // Checks that every tensor of nodes [first, last] exists with the expected shape and a float dtype.
  // The error names the tensor (canonical and as stored) and the file.
  Status check_nodes(const models::LayerGraph& graph, int first, int last) const;

 private:
  std::filesystem::path dir_;
  models::LlavaConfig config_;
  std::shared_ptr<nlohmann::json> raw_config_;
  std::map<std::string, CheckpointTensor> tensors_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::string key_layout_;
};

// Reads the config of a checkpoint directory (with the LLaVA-NeXT refusal, unless `next` accepts them).
Expected<models::LlavaConfig> load_checkpoint_config(const std::filesystem::path& dir,
                                                     NextCheckpoints next = NextCheckpoints::refuse);

}  // namespace adaptlink::exec

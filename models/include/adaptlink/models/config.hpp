// LLaVA model configuration: what a Hugging Face `config.json` says, with transformers' defaults
// applied for omitted fields (LlamaConfig / MistralConfig for the text tower, CLIPVisionConfig for
// the vision tower, LlavaConfig / LlavaNextConfig around them).
#pragma once

#include <array>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "adaptlink/error.hpp"

namespace adaptlink::models {

struct TextConfig {
  std::string model_type = "llama";  // llama | mistral
  int hidden_size = 4096;
  int intermediate_size = 11008;
  int num_hidden_layers = 32;
  int num_attention_heads = 32;
  int num_key_value_heads = 32;  // defaults to num_attention_heads when omitted
  int head_dim = 128;            // defaults to hidden_size / num_attention_heads
  int vocab_size = 32000;
  int max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;  // from `rope_theta` or `rope_parameters.rope_theta`
  // RoPE scaling from `rope_parameters` (5.x) or `rope_scaling` (4.x): "default" means none; otherwise
  // e.g. "linear" / "dynamic" / "llama3" with `factor` (models here do not use it, exec/ may reject it).
  std::string rope_type = "default";
  double rope_scaling_factor = 1.0;
  std::string hidden_act = "silu";
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  int pad_token_id = -1;  // -1: none
  int bos_token_id = 1;
  int eos_token_id = 2;
  int sliding_window = 0;  // 0: none (Mistral configs may set it)
};

struct VisionConfig {
  std::string model_type = "clip_vision_model";
  int hidden_size = 768;
  int intermediate_size = 3072;
  int num_hidden_layers = 12;
  int num_attention_heads = 12;
  int num_channels = 3;
  int image_size = 224;
  int patch_size = 32;
  double layer_norm_eps = 1e-5;
  std::string hidden_act = "quick_gelu";
  int projection_dim = 512;

  [[nodiscard]] int patches_per_side() const { return image_size / patch_size; }
  [[nodiscard]] int num_patches() const { return patches_per_side() * patches_per_side(); }
  [[nodiscard]] int num_positions() const { return num_patches() + 1; }  // + CLS
};

// Where a LLaVA-NeXT (anyres) image goes, as transformers lays it out (select_best_resolution, the tiles of
// image_size_to_num_patches, LlavaNextModel.pack_image_features: the base crop's features, then the tiles' feature map
// unpadded to the image's aspect ratio with one image_newline after each row).
struct AnyresLayout {
  std::array<int, 2> best{};  // the pinpoint chosen, [height, width]
  int tile_rows = 0, tile_cols = 0;
  int feature_rows = 0, feature_cols = 0;  // the tiles' feature map after unpadding (before the newlines)
  [[nodiscard]] int crops() const { return 1 + tile_rows * tile_cols; }
};

// The pinpoint [height, width] transformers picks for an image of width x height pixels: the one that keeps the most
// of the image's resolution when it is scaled to fit, then the one that pads least; ties keep the earlier one.
std::array<int, 2> select_best_resolution(int width, int height, const std::vector<std::array<int, 2>>& pinpoints);

struct LlavaConfig {
  std::string model_type = "llava";  // llava | llava_next
  TextConfig text;
  VisionConfig vision;
  int image_token_index = 32000;
  std::string projector_hidden_act = "gelu";
  bool multimodal_projector_bias = true;
  int vision_feature_layer = -2;                           // index into CLIP hidden states (0 = embeddings)
  std::string vision_feature_select_strategy = "default";  // default (drop CLS) | full
  bool tie_word_embeddings = false;                        // top-level flag (transformers 4.x reads the text one)
  std::vector<std::array<int, 2>> image_grid_pinpoints;    // llava_next only: [height, width] candidates

  // CLIP layers whose output is used: hidden_states[vision_feature_layer] needs this many layers.
  [[nodiscard]] int vision_layers_used() const;
  // The most image feature tokens one image can bring as the text tower sees them (576 for LLaVA-1.5 at 336 px; for
  // LLaVA-NeXT the largest pinpoint's grid before unpadding, newline tokens included): a bound, for limits.
  [[nodiscard]] int image_tokens_per_image() const;
  // The most CLIP forward passes (crops) one image takes: 1, or 1 + the largest pinpoint's tiles for LLaVA-NeXT.
  [[nodiscard]] int vision_crops_per_image() const;
  // One image of width x height pixels (0 x 0: default_image_size()): the tokens the text tower sees and the CLIP
  // crops. LLaVA-1.5 resizes every image to one crop (576 tokens at 336 px); LLaVA-NeXT per anyres_layout().
  [[nodiscard]] int image_tokens_for(int width, int height) const;
  [[nodiscard]] int vision_crops_for(int width, int height) const;
  // LLaVA-NeXT: the layout of an image of width x height pixels (0 x 0: default_image_size()).
  [[nodiscard]] AnyresLayout anyres_layout(int width, int height) const;
  // The image size [width, height] a request's images have when none is given: LLaVA-NeXT's largest pinpoint by area
  // (672 x 672 for the usual grids; ties the first), else the vision tower's input size.
  [[nodiscard]] std::array<int, 2> default_image_size() const;
  // [width, height] as given, or default_image_size() for 0 x 0.
  [[nodiscard]] std::array<int, 2> image_size_or_default(int width, int height) const;
  // Tokens per CLIP crop after the select strategy (576 default, 577 full).
  [[nodiscard]] int vision_features_per_crop() const;
  // The most CLIP crops one request can bring: one image's, or as many as the context has room for the features of
  // (one more for rounding). Bounds pixel_values on the wire and in a stage.
  [[nodiscard]] int max_crops() const;
};

// Parses a LLaVA / LLaVA-NeXT config. `source` names the file in error messages.
Expected<LlavaConfig> parse_llava_config(const nlohmann::json& json, std::string_view source);
Expected<LlavaConfig> load_llava_config(const std::filesystem::path& path);

// Built-in presets (stored as Hugging Face config files under models/presets/, compiled in).
std::vector<std::string> preset_names();
Expected<LlavaConfig> load_preset(std::string_view name);
// The preset's config.json text, or an empty string when there is no such preset.
std::string_view preset_config_text(std::string_view name);

// Total parameters of the checkpoint the config describes (every tensor, including vision layers
// that the feature layer leaves unused, the CLIP post-layernorm and the image newline of NeXT).
long long count_parameters(const LlavaConfig& config);

}  // namespace adaptlink::models

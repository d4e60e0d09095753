// Parsing of Hugging Face LLaVA / LLaVA-NeXT config.json files with transformers' defaults, the
// built-in presets, and the checkpoint parameter count.
//
// Defaults follow transformers (configuration_llama.py, configuration_mistral.py,
// configuration_clip.py, configuration_llava.py, configuration_llava_next.py):
//   * LlavaConfig / LlavaNextConfig: image_token_index 32000 (also spelled image_token_id in 5.x),
//     projector_hidden_act "gelu", vision_feature_select_strategy "default", vision_feature_layer -2,
//     multimodal_projector_bias true, tie_word_embeddings false (or the text config's flag);
//     NeXT image_grid_pinpoints [[336,672],[672,336],[672,672],[1008,336],[336,1008]].
//     An omitted text_config is a default LlamaConfig; an omitted vision_config is CLIP ViT-L/14-336
//     (hidden 1024, MLP 4096, patch 14, image 336, 24 layers, 16 heads, projection_dim 768).
//   * LlamaConfig: vocab 32000, hidden 4096, MLP 11008, 32 layers, 32 heads, KV heads = heads,
//     silu, max positions 2048, rms eps 1e-6, rope theta 1e4, bos 1, eos 2, no biases, untied.
//   * MistralConfig: like Llama but MLP 14336, KV heads 8 (null: = heads), max positions 131072,
//     sliding_window 4096 (null: none).
//   * CLIPVisionConfig: hidden 768, MLP 3072, 12 layers, 12 heads, 3 channels, image 224, patch 32,
//     quick_gelu, layer norm eps 1e-5, projection_dim 512.
#include "adaptlink/models/config.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "adaptlink/read_file.hpp"

namespace adaptlink::models::detail {
const std::vector<std::pair<std::string_view, std::string_view>>& embedded_presets();
}  // namespace adaptlink::models::detail

namespace adaptlink::models {
namespace {

using nlohmann::json;

std::string_view json_type_name(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "integer";
    case json::value_t::number_float:
      return "float";
    case json::value_t::string:
      return "string";
    case json::value_t::array:
      return "array";
    case json::value_t::object:
      return "object";
    default:
      return "unknown";
  }
}

// Reads typed fields of one JSON object. The first error is kept (later reads become no-ops), so a
// parser can read every field and check once at the end. Keys are reported with their full path
// ("text_config.hidden_size").
class ObjectReader {
 public:
  ObjectReader(const json& object, std::string prefix, std::string_view source, std::optional<Error>& error)
      : object_(object), prefix_(std::move(prefix)), source_(source), error_(error) {}

  [[nodiscard]] std::string path(std::string_view key) const { return prefix_ + std::string(key); }
  [[nodiscard]] bool has(std::string_view key) const { return object_.contains(key); }
  [[nodiscard]] bool is_null(std::string_view key) const { return has(key) && object_.at(key).is_null(); }
  // Present and not null.
  [[nodiscard]] bool has_value(std::string_view key) const { return has(key) && !object_.at(key).is_null(); }
  [[nodiscard]] const json& at(std::string_view key) const { return object_.at(key); }
  [[nodiscard]] bool failed() const { return error_.has_value(); }

  void fail(std::string_view key, const std::string& message) {
    if (!error_) error_ = Error{fmt::format("{}: {}", path(key), message), std::string(source_), 0, 0};
  }
  void fail_type(std::string_view key, std::string_view expected) {
    fail(key, fmt::format("expected {}, got {}", expected, json_type_name(at(key))));
  }

  // Each read sets `out` when the key is present and not null; returns whether it did. A value of the
  // wrong type records an error and leaves `out` alone.
  bool read(std::string_view key, int& out) {
    if (failed() || !has_value(key)) return false;
    const json& value = at(key);
    if (!value.is_number_integer()) {
      fail_type(key, "an integer");
      return false;
    }
    if (value.is_number_unsigned() ? value.get<unsigned long long>() > std::numeric_limits<int>::max()
                                   : (value.get<long long>() > std::numeric_limits<int>::max() ||
                                      value.get<long long>() < std::numeric_limits<int>::min())) {
      fail(key, fmt::format("integer {} out of range", value.dump()));
      return false;
    }
    out = value.get<int>();
    return true;
  }
  bool read(std::string_view key, double& out) {
    if (failed() || !has_value(key)) return false;
    const json& value = at(key);
    if (!value.is_number()) {
      fail_type(key, "a number");
      return false;
    }
    out = value.get<double>();
    return true;
  }
  bool read(std::string_view key, bool& out) {
    if (failed() || !has_value(key)) return false;
    const json& value = at(key);
    if (!value.is_boolean()) {
      fail_type(key, "a boolean");
      return false;
    }
    out = value.get<bool>();
    return true;
  }
  bool read(std::string_view key, std::string& out) {
    if (failed() || !has_value(key)) return false;
    const json& value = at(key);
    if (!value.is_string()) {
      fail_type(key, "a string");
      return false;
    }
    out = value.get<std::string>();
    return true;
  }
  // An integer, or a list of integers of which the first is taken (e.g. eos_token_id: [2, 32000]).
  bool read_first_int(std::string_view key, int& out) {
    if (failed() || !has_value(key)) return false;
    const json& value = at(key);
    if (value.is_array()) {
      if (value.empty() || !value.front().is_number_integer()) {
        fail(key, "expected an integer or a non-empty list of integers");
        return false;
      }
      out = value.front().get<int>();
      return true;
    }
    return read(key, out);
  }
  // A nested object (null or absent: nullptr).
  const json* object(std::string_view key) {
    if (failed() || !has_value(key)) return nullptr;
    if (!at(key).is_object()) {
      fail_type(key, "an object");
      return nullptr;
    }
    return &at(key);
  }

  void require_positive(std::string_view key, int value) {
    if (value <= 0) fail(key, fmt::format("must be positive, got {}", value));
  }
  // A positive, finite number (an epsilon, a RoPE base): 0, a negative or an infinite one makes every output NaN.
  void require_positive(std::string_view key, double value) {
    if (!(value > 0) || !std::isfinite(value)) fail(key, fmt::format("must be a positive finite number, got {}", value));
  }

 private:
  const json& object_;
  std::string prefix_;
  std::string_view source_;
  std::optional<Error>& error_;
};

// RoPE settings: `rope_parameters` (transformers 5.x) wins over `rope_theta`, which wins over a
// theta inside `rope_scaling`.
void read_rope(ObjectReader& reader, TextConfig& text, std::string_view source, std::optional<Error>& error) {
  reader.read("rope_theta", text.rope_theta);
  for (std::string_view key : {"rope_scaling", "rope_parameters"}) {
    const json* params = reader.object(key);
    if (params == nullptr) continue;
    ObjectReader sub(*params, reader.path(key) + ".", source, error);
    if (key == "rope_parameters" || !reader.has_value("rope_theta")) sub.read("rope_theta", text.rope_theta);
    // 4.x wrote the type as "type"; "rope_type" is the current name.
    sub.read("type", text.rope_type);
    sub.read("rope_type", text.rope_type);
    sub.read("factor", text.rope_scaling_factor);
  }
}

Expected<TextConfig> parse_text_config(const json* object, std::string_view source) {
  TextConfig text;  // LlamaConfig defaults
  if (object == nullptr) return text;
  std::optional<Error> error;
  ObjectReader reader(*object, "text_config.", source, error);
  reader.read("model_type", text.model_type);
  if (reader.failed()) return *error;
  const bool mistral = text.model_type == "mistral";
  if (text.model_type != "llama" && !mistral) {
    reader.fail("model_type", fmt::format("unsupported text model '{}' (expected llama or mistral)", text.model_type));
    return *error;
  }
  if (mistral) {
    text.intermediate_size = 14336;
    text.max_position_embeddings = 4096 * 32;
    text.sliding_window = 4096;
  }
  reader.read("hidden_size", text.hidden_size);
  reader.read("intermediate_size", text.intermediate_size);
  reader.read("num_hidden_layers", text.num_hidden_layers);
  reader.read("num_attention_heads", text.num_attention_heads);
  // Llama: absent or null -> num_attention_heads. Mistral: absent -> 8, null -> num_attention_heads.
  text.num_key_value_heads = (mistral && !reader.has("num_key_value_heads")) ? 8 : text.num_attention_heads;
  reader.read("num_key_value_heads", text.num_key_value_heads);
  reader.read("vocab_size", text.vocab_size);
  reader.read("max_position_embeddings", text.max_position_embeddings);
  reader.read("rms_norm_eps", text.rms_norm_eps);
  read_rope(reader, text, source, error);
  reader.read("hidden_act", text.hidden_act);
  reader.read("tie_word_embeddings", text.tie_word_embeddings);
  if (!mistral) {  // MistralConfig has no bias options (all projections are bias-free)
    reader.read("attention_bias", text.attention_bias);
    reader.read("mlp_bias", text.mlp_bias);
  }
  if (reader.is_null("pad_token_id")) text.pad_token_id = -1;
  reader.read("pad_token_id", text.pad_token_id);
  reader.read_first_int("bos_token_id", text.bos_token_id);
  reader.read_first_int("eos_token_id", text.eos_token_id);
  if (mistral) {
    if (reader.is_null("sliding_window")) text.sliding_window = 0;
    reader.read("sliding_window", text.sliding_window);
  }
  if (reader.failed()) return *error;

  reader.require_positive("hidden_size", text.hidden_size);
  reader.require_positive("intermediate_size", text.intermediate_size);
  reader.require_positive("num_hidden_layers", text.num_hidden_layers);
  reader.require_positive("num_attention_heads", text.num_attention_heads);
  reader.require_positive("num_key_value_heads", text.num_key_value_heads);
  reader.require_positive("vocab_size", text.vocab_size);
  reader.require_positive("max_position_embeddings", text.max_position_embeddings);
  reader.require_positive("rms_norm_eps", text.rms_norm_eps);
  reader.require_positive("rope_theta", text.rope_theta);
  if (reader.failed()) return *error;
  if (text.num_attention_heads % text.num_key_value_heads != 0) {
    reader.fail("num_key_value_heads", fmt::format("{} does not divide num_attention_heads {}",
                                                   text.num_key_value_heads, text.num_attention_heads));
  }
  // head_dim: absent or null -> hidden_size / num_attention_heads.
  if (!reader.read("head_dim", text.head_dim)) {
    if (text.hidden_size % text.num_attention_heads != 0) {
      reader.fail("hidden_size", fmt::format("{} is not a multiple of num_attention_heads {} (and no head_dim)",
                                             text.hidden_size, text.num_attention_heads));
    }
    text.head_dim = text.hidden_size / text.num_attention_heads;
  }
  reader.require_positive("head_dim", text.head_dim);
  if (text.sliding_window < 0) reader.fail("sliding_window", "must not be negative");
  if (reader.failed()) return *error;
  return text;
}

// LLaVA's vision tower when vision_config is omitted: CLIP ViT-L/14 at 336 px.
VisionConfig default_llava_vision_config() {
  VisionConfig vision;
  vision.intermediate_size = 4096;
  vision.hidden_size = 1024;
  vision.patch_size = 14;
  vision.image_size = 336;
  vision.num_hidden_layers = 24;
  vision.num_attention_heads = 16;
  vision.projection_dim = 768;
  return vision;
}

Expected<VisionConfig> parse_vision_config(const json* object, std::string_view source) {
  if (object == nullptr) return default_llava_vision_config();
  VisionConfig vision;  // CLIPVisionConfig defaults
  std::optional<Error> error;
  ObjectReader reader(*object, "vision_config.", source, error);
  reader.read("model_type", vision.model_type);
  if (!reader.failed() && vision.model_type != "clip_vision_model") {
    reader.fail("model_type",
                fmt::format("unsupported vision model '{}' (expected clip_vision_model)", vision.model_type));
  }
  reader.read("hidden_size", vision.hidden_size);
  reader.read("intermediate_size", vision.intermediate_size);
  reader.read("num_hidden_layers", vision.num_hidden_layers);
  reader.read("num_attention_heads", vision.num_attention_heads);
  reader.read("num_channels", vision.num_channels);
  reader.read("image_size", vision.image_size);
  reader.read("patch_size", vision.patch_size);
  reader.read("layer_norm_eps", vision.layer_norm_eps);
  reader.read("hidden_act", vision.hidden_act);
  reader.read("projection_dim", vision.projection_dim);
  if (reader.failed()) return *error;
  reader.require_positive("hidden_size", vision.hidden_size);
  reader.require_positive("intermediate_size", vision.intermediate_size);
  reader.require_positive("num_hidden_layers", vision.num_hidden_layers);
  reader.require_positive("num_attention_heads", vision.num_attention_heads);
  reader.require_positive("num_channels", vision.num_channels);
  reader.require_positive("image_size", vision.image_size);
  reader.require_positive("patch_size", vision.patch_size);
  reader.require_positive("layer_norm_eps", vision.layer_norm_eps);
  if (reader.failed()) return *error;
  if (vision.hidden_size % vision.num_attention_heads != 0) {
    reader.fail("hidden_size", fmt::format("{} is not a multiple of num_attention_heads {}", vision.hidden_size,
                                           vision.num_attention_heads));
  }
  if (vision.image_size % vision.patch_size != 0) {
    reader.fail("image_size",
                fmt::format("{} is not a multiple of patch_size {}", vision.image_size, vision.patch_size));
  }
  if (reader.failed()) return *error;
  return vision;
}

// 1-based line and column of a byte offset (nlohmann reports the offset one past the bad character).
std::pair<int, int> line_column(std::string_view text, size_t byte) {
  byte = std::min(byte, text.size());
  int line = 1;
  int column = 1;
  for (size_t i = 0; i + 1 < byte; ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return {line, column};
}

Expected<LlavaConfig> parse_llava_text(std::string_view text, std::string_view source) {
  json parsed;
  try {
    parsed = json::parse(text);
  } catch (const json::parse_error& e) {
    auto [line, column] = line_column(text, e.byte);
    // e.what() reads "[json.exception.parse_error.101] parse error at line 3, column 5: <reason>".
    std::string reason = e.what();
    if (auto colon = reason.find(": "); colon != std::string::npos) reason = reason.substr(colon + 2);
    return Error{fmt::format("invalid JSON: {}", reason), std::string(source), line, column};
  }
  return parse_llava_config(parsed, source);
}

// Anyres grid of a pinpoint [height, width]: tiles of image_size, each patches_per_side^2 features,
// laid out as a (rows * patches_per_side) x (cols * patches_per_side) map plus one newline per row.
struct AnyresGrid {
  int tiles = 0;
  int feature_tokens = 0;  // grid features + newline tokens
};

AnyresGrid anyres_grid(const LlavaConfig& config, const std::array<int, 2>& pinpoint) {
  const int image_size = config.vision.image_size;
  const int per_side = config.vision.patches_per_side();
  const int rows = pinpoint[0] / image_size;
  const int cols = pinpoint[1] / image_size;
  const int feature_rows = rows * per_side;
  const int feature_cols = cols * per_side;
  return AnyresGrid{rows * cols, feature_rows * feature_cols + feature_rows};
}

// The pinpoint that yields the most image tokens (a square image at the largest-area pinpoint for the
// usual lists); ties go to more tiles.
AnyresGrid worst_anyres_grid(const LlavaConfig& config) {
  AnyresGrid worst;
  for (const auto& pinpoint : config.image_grid_pinpoints) {
    AnyresGrid grid = anyres_grid(config, pinpoint);
    if (grid.feature_tokens > worst.feature_tokens ||
        (grid.feature_tokens == worst.feature_tokens && grid.tiles > worst.tiles)) {
      worst = grid;
    }
  }
  return worst;
}

// Python's int(round(x, 7)) for the non-negative x of unpad_image.
int round7_int(double x) { return static_cast<int>(std::nearbyint(x * 1e7) / 1e7); }

long long vision_layer_params(const VisionConfig& v) {
  const long long h = v.hidden_size;
  const long long i = v.intermediate_size;
  return 4 * (h * h + h)  // q, k, v, out projections with bias
         + (h * i + i)    // fc1
         + (i * h + h)    // fc2
         + 2 * 2 * h;     // layer_norm1, layer_norm2 (weight + bias)
}

}  // namespace

// ---- LlavaConfig -------------------------------------------------------------------------------

int LlavaConfig::vision_layers_used() const {
  // hidden_states has num_hidden_layers + 1 entries (0 = embeddings); entry k is layer k-1's output.
  const int layers = vision.num_hidden_layers;
  return vision_feature_layer < 0 ? layers + 1 + vision_feature_layer : vision_feature_layer;
}

int LlavaConfig::vision_features_per_crop() const {
  return vision_feature_select_strategy == "full" ? vision.num_positions() : vision.num_patches();
}

int LlavaConfig::max_crops() const {
  const int per_crop = std::max(1, vision_features_per_crop());
  return std::max(vision_crops_per_image(), text.max_position_embeddings / per_crop + 1);
}

int LlavaConfig::vision_crops_per_image() const {
  if (model_type != "llava_next") return 1;
  return 1 + worst_anyres_grid(*this).tiles;
}

int LlavaConfig::image_tokens_per_image() const {
  if (model_type != "llava_next") return vision_features_per_crop();
  return vision_features_per_crop() + worst_anyres_grid(*this).feature_tokens;
}

std::array<int, 2> LlavaConfig::default_image_size() const {
  if (model_type != "llava_next" || image_grid_pinpoints.empty()) return {vision.image_size, vision.image_size};
  std::array<int, 2> largest = image_grid_pinpoints.front();
  for (const auto& p : image_grid_pinpoints) {
    if (static_cast<long long>(p[0]) * p[1] > static_cast<long long>(largest[0]) * largest[1]) largest = p;
  }
  return {largest[1], largest[0]};
}

std::array<int, 2> LlavaConfig::image_size_or_default(int width, int height) const {
  return width > 0 && height > 0 ? std::array<int, 2>{width, height} : default_image_size();
}

AnyresLayout LlavaConfig::anyres_layout(int width, int height) const {
  const auto size = image_size_or_default(width, height);
  width = size[0];
  height = size[1];
  AnyresLayout l;
  l.best = select_best_resolution(width, height, image_grid_pinpoints);
  l.tile_rows = l.best[0] / vision.image_size;
  l.tile_cols = l.best[1] / vision.image_size;
  // unpad_image: the tiles' feature map, cropped to the image's aspect ratio (centred).
  const int per_side = vision.patches_per_side();
  int rows = l.tile_rows * per_side;
  int cols = l.tile_cols * per_side;
  const double image_aspect = static_cast<double>(width) / height;
  const double map_aspect = static_cast<double>(cols) / rows;
  if (image_aspect > map_aspect) {
    const int padding = (rows - round7_int(height * (static_cast<double>(cols) / width))) / 2;
    rows = std::max(0, rows - 2 * padding);
  } else {
    const int padding = (cols - round7_int(width * (static_cast<double>(rows) / height))) / 2;
    cols = std::max(0, cols - 2 * padding);
  }
  l.feature_rows = rows;
  l.feature_cols = cols;
  return l;
}

int LlavaConfig::image_tokens_for(int width, int height) const {
  if (model_type != "llava_next") return vision_features_per_crop();
  const auto l = anyres_layout(width, height);
  return vision_features_per_crop() + l.feature_rows * (l.feature_cols + 1);
}

int LlavaConfig::vision_crops_for(int width, int height) const {
  if (model_type != "llava_next") return 1;
  return anyres_layout(width, height).crops();
}

std::array<int, 2> select_best_resolution(int width, int height, const std::vector<std::array<int, 2>>& pinpoints) {
  std::array<int, 2> best{};
  long long most_kept = 0;
  long long least_waste = std::numeric_limits<long long>::max();
  const long long pixels = static_cast<long long>(width) * height;
  for (const auto& [h, w] : pinpoints) {
    const double scale = std::min(static_cast<double>(w) / width, static_cast<double>(h) / height);
    const auto scaled_w = static_cast<long long>(width * scale);
    const auto scaled_h = static_cast<long long>(height * scale);
    const long long kept = std::min(scaled_w * scaled_h, pixels);
    const long long waste = static_cast<long long>(w) * h - kept;
    if (kept > most_kept || (kept == most_kept && waste < least_waste)) {
      most_kept = kept;
      least_waste = waste;
      best = {h, w};
    }
  }
  return best;
}

// ---- parsing -----------------------------------------------------------------------------------

Expected<LlavaConfig> parse_llava_config(const nlohmann::json& root, std::string_view source) {
  if (!root.is_object()) {
    return Error{fmt::format("expected a JSON object at the top level, got {}", json_type_name(root)),
                 std::string(source), 0, 0};
  }
  LlavaConfig config;
  std::optional<Error> error;
  ObjectReader reader(root, "", source, error);

  reader.read("model_type", config.model_type);
  if (reader.failed()) return *error;
  if (config.model_type != "llava" && config.model_type != "llava_next") {
    reader.fail("model_type",
                fmt::format("unsupported model type '{}' (expected llava or llava_next)", config.model_type));
    return *error;
  }

  const json* text_object = reader.object("text_config");
  const json* vision_object = reader.object("vision_config");
  if (reader.failed()) return *error;
  auto text = parse_text_config(text_object, source);
  if (!text) return text.error();
  config.text = std::move(text).value();
  auto vision = parse_vision_config(vision_object, source);
  if (!vision) return vision.error();
  config.vision = std::move(vision).value();

  // transformers 5.x spells it image_token_id (an attribute alias of image_token_index).
  reader.read("image_token_id", config.image_token_index);
  reader.read("image_token_index", config.image_token_index);
  reader.read("projector_hidden_act", config.projector_hidden_act);
  reader.read("multimodal_projector_bias", config.multimodal_projector_bias);
  if (reader.has_value("vision_feature_layer") && reader.at("vision_feature_layer").is_array()) {
    reader.fail("vision_feature_layer", "a list of feature layers is not supported (expected an integer)");
  }
  reader.read("vision_feature_layer", config.vision_feature_layer);
  reader.read("vision_feature_select_strategy", config.vision_feature_select_strategy);
  reader.read("tie_word_embeddings", config.tie_word_embeddings);
  if (reader.failed()) return *error;
  // LlavaConfig forwards the text config's flag when the top-level one is false.
  config.tie_word_embeddings = config.tie_word_embeddings || config.text.tie_word_embeddings;

  if (config.vision_feature_select_strategy != "default" && config.vision_feature_select_strategy != "full") {
    reader.fail("vision_feature_select_strategy",
                fmt::format("expected 'default' or 'full', got '{}'", config.vision_feature_select_strategy));
  }
  const int layers = config.vision.num_hidden_layers;
  if (config.vision_feature_layer < -(layers + 1) || config.vision_feature_layer > layers) {
    reader.fail("vision_feature_layer", fmt::format("{} is out of range for {} vision layers (expected {}..{})",
                                                    config.vision_feature_layer, layers, -(layers + 1), layers));
  }

  if (config.model_type == "llava_next") {
    // transformers' LlavaNextModel lays each tile's features out as a patches_per_side^2 grid: a tile's CLS token
    // ("full") does not fit it, and transformers fails on such a config (tools/make_next_goldens.py records how).
    if (config.vision_feature_select_strategy == "full") {
      reader.fail("vision_feature_select_strategy",
                  "'full' is not supported for llava_next: the anyres packing lays each tile's features out as a "
                  "patches_per_side^2 grid with no room for its CLS token (transformers fails on it too); expected "
                  "'default'");
    }
    config.image_grid_pinpoints = {{336, 672}, {672, 336}, {672, 672}, {1008, 336}, {336, 1008}};
    if (reader.has_value("image_grid_pinpoints")) {
      const auto& pinpoints = reader.at("image_grid_pinpoints");
      bool ok = pinpoints.is_array() && !pinpoints.empty();
      std::vector<std::array<int, 2>> parsed;
      for (size_t i = 0; ok && i < pinpoints.size(); ++i) {
        const auto& p = pinpoints[i];
        ok = p.is_array() && p.size() == 2 && p[0].is_number_integer() && p[1].is_number_integer() &&
             p[0].get<long long>() >= config.vision.image_size && p[1].get<long long>() >= config.vision.image_size &&
             p[0].get<long long>() <= 1 << 20 && p[1].get<long long>() <= 1 << 20;
        if (ok) parsed.push_back({p[0].get<int>(), p[1].get<int>()});
      }
      if (!ok) {
        reader.fail("image_grid_pinpoints",
                    fmt::format("expected a non-empty list of [height, width] pairs of integers >= image_size {}",
                                config.vision.image_size));
      } else {
        config.image_grid_pinpoints = std::move(parsed);
      }
    }
  }
  if (reader.failed()) return *error;
  return config;
}

Expected<LlavaConfig> load_llava_config(const std::filesystem::path& path) {
  auto text = read_input_file(path, "config.json");
  if (!text) return text.error();
  return parse_llava_text(*text, path.string());
}

// ---- presets -----------------------------------------------------------------------------------

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& [stem, text] : detail::embedded_presets()) names.emplace_back(stem);
  std::sort(names.begin(), names.end());
  return names;
}

std::string_view preset_config_text(std::string_view name) {
  for (const auto& [stem, text] : detail::embedded_presets()) {
    if (stem == name) return text;
  }
  return {};
}

Expected<LlavaConfig> load_preset(std::string_view name) {
  std::string_view text = preset_config_text(name);
  if (text.empty()) {
    return make_error("unknown model preset '{}' (known: {})", name, fmt::join(preset_names(), ", "));
  }
  return parse_llava_text(text, fmt::format("models/presets/{}.json", name));
}

// ---- parameter count ---------------------------------------------------------------------------

long long count_parameters(const LlavaConfig& config) {
  const VisionConfig& v = config.vision;
  const TextConfig& t = config.text;
  const long long hv = v.hidden_size;
  const long long ht = t.hidden_size;

  // CLIPVisionModel: patch conv (no bias), class embedding, position embedding, pre_layrnorm,
  // every encoder layer, post_layernorm.
  long long vision = static_cast<long long>(v.num_channels) * v.patch_size * v.patch_size * hv  // patch conv
                     + hv                                                                       // class_embedding
                     + static_cast<long long>(v.num_positions()) * hv                           // position embedding
                     + 2 * hv                                                                   // pre_layrnorm
                     + v.num_hidden_layers * vision_layer_params(v)                             // encoder layers
                     + 2 * hv;                                                                  // post_layernorm

  // LlavaMultiModalProjector: linear_1 [hv -> ht], act, linear_2 [ht -> ht].
  const long long bias = config.multimodal_projector_bias ? 1 : 0;
  long long projector = hv * ht + bias * ht + ht * ht + bias * ht;

  long long text = static_cast<long long>(t.vocab_size) * ht;  // embed_tokens
  const long long q_width = static_cast<long long>(t.num_attention_heads) * t.head_dim;
  const long long kv_width = static_cast<long long>(t.num_key_value_heads) * t.head_dim;
  long long layer = ht * q_width + 2 * ht * kv_width + q_width * ht  // q, k, v, o
                    + 3 * ht * t.intermediate_size                   // gate, up, down
                    + 2 * ht;                                        // input / post-attention RMSNorm
  if (t.attention_bias) layer += q_width + 2 * kv_width + ht;
  if (t.mlp_bias) layer += 2LL * t.intermediate_size + ht;
  text += t.num_hidden_layers * layer;
  text += ht;                                                                          // final norm
  if (!config.tie_word_embeddings) text += static_cast<long long>(t.vocab_size) * ht;  // lm_head

  long long extra = config.model_type == "llava_next" ? ht : 0;  // image_newline
  return vision + projector + text + extra;
}

}  // namespace adaptlink::models

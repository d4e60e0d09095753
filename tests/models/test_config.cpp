// Tests of config.json parsing (transformers' defaults, located errors), presets and parameter counts.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "adaptlink/models/config.hpp"

namespace adaptlink::models {
namespace {

using nlohmann::json;

LlavaConfig parse_ok(const json& j) {
  auto config = parse_llava_config(j, "config.json");
  EXPECT_TRUE(config.has_value()) << (config ? "" : config.error().to_string());
  return config ? *config : LlavaConfig{};
}

Error parse_error(const json& j) {
  auto config = parse_llava_config(j, "config.json");
  EXPECT_FALSE(config.has_value());
  return config ? Error{} : config.error();
}

LlavaConfig preset(std::string_view name) {
  auto config = load_preset(name);
  EXPECT_TRUE(config.has_value()) << (config ? "" : config.error().to_string());
  return config ? *config : LlavaConfig{};
}

// ---- presets -----------------------------------------------------------------------------------

TEST(Presets, NamesAreTheFourLlavaHfModels) {
  EXPECT_EQ(preset_names(), (std::vector<std::string>{"llava-1.5-13b", "llava-1.5-7b", "llava-v1.6-mistral-7b",
                                                      "llava-v1.6-vicuna-7b"}));
  for (const auto& name : preset_names()) {
    EXPECT_FALSE(preset_config_text(name).empty()) << name;
    EXPECT_TRUE(load_preset(name).has_value()) << name;
  }
  EXPECT_TRUE(preset_config_text("llava-9b").empty());
}

TEST(Presets, UnknownPresetListsKnownOnes) {
  auto config = load_preset("llava-9b");
  ASSERT_FALSE(config.has_value());
  const std::string message = config.error().to_string();
  EXPECT_NE(message.find("llava-9b"), std::string::npos) << message;
  for (const auto& name : preset_names()) EXPECT_NE(message.find(name), std::string::npos) << message;
}

TEST(Presets, PresetTextIsTheHuggingFaceConfig) {
  // The presets are the config.json files the llava-hf repos ship: defaulted fields are omitted.
  const json j = json::parse(preset_config_text("llava-1.5-7b"));
  EXPECT_EQ(j.at("model_type"), "llava");
  EXPECT_EQ(j.at("text_config").at("vocab_size"), 32064);
  EXPECT_FALSE(j.at("text_config").contains("hidden_size"));
  EXPECT_FALSE(j.at("text_config").contains("num_key_value_heads"));
}

TEST(Presets, Llava15_7bFields) {
  const LlavaConfig c = preset("llava-1.5-7b");
  EXPECT_EQ(c.model_type, "llava");
  EXPECT_EQ(c.text.model_type, "llama");
  EXPECT_EQ(c.text.hidden_size, 4096);
  EXPECT_EQ(c.text.intermediate_size, 11008);
  EXPECT_EQ(c.text.num_hidden_layers, 32);
  EXPECT_EQ(c.text.num_attention_heads, 32);
  EXPECT_EQ(c.text.num_key_value_heads, 32);
  EXPECT_EQ(c.text.head_dim, 128);
  EXPECT_EQ(c.text.vocab_size, 32064);
  EXPECT_EQ(c.text.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.text.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.text.rope_theta, 10000.0);
  EXPECT_EQ(c.vision.hidden_size, 1024);
  EXPECT_EQ(c.vision.num_hidden_layers, 24);
  EXPECT_EQ(c.vision.num_attention_heads, 16);
  EXPECT_EQ(c.vision.image_size, 336);
  EXPECT_EQ(c.vision.patch_size, 14);
  EXPECT_EQ(c.vision.hidden_act, "quick_gelu");
  EXPECT_EQ(c.vision.num_positions(), 577);
  EXPECT_EQ(c.image_token_index, 32000);
  EXPECT_EQ(c.vision_feature_layer, -2);
  EXPECT_EQ(c.vision_feature_select_strategy, "default");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_TRUE(c.image_grid_pinpoints.empty());
}

TEST(Presets, Llava16MistralFields) {
  const LlavaConfig c = preset("llava-v1.6-mistral-7b");
  EXPECT_EQ(c.model_type, "llava_next");
  EXPECT_EQ(c.text.model_type, "mistral");
  EXPECT_EQ(c.text.num_key_value_heads, 8);
  EXPECT_EQ(c.text.intermediate_size, 14336);
  EXPECT_EQ(c.text.max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c.text.rope_theta, 1e6);
  EXPECT_EQ(c.text.sliding_window, 0);  // null in the config
  EXPECT_EQ(c.image_grid_pinpoints.size(), 5u);
}

// ---- parameter counts --------------------------------------------------------------------------

void expect_near_published(long long count, double published, const char* name) {
  EXPECT_LT(std::abs(static_cast<double>(count) - published) / published, 0.005) << name << ": " << count;
}

TEST(ParameterCount, MatchesPublishedTotals) {
  // llava-hf/llava-1.5-7b-hf: exactly this many parameters in its safetensors.
  EXPECT_EQ(count_parameters(preset("llava-1.5-7b")), 7'063'427'072LL);
  expect_near_published(count_parameters(preset("llava-1.5-13b")), 13.35e9, "13b");
  expect_near_published(count_parameters(preset("llava-v1.6-vicuna-7b")), 7.06e9, "vicuna-7b");
  expect_near_published(count_parameters(preset("llava-v1.6-mistral-7b")), 7.57e9, "mistral-7b");
  // The exact totals these architectures give (NeXT = 1.5 + image_newline [4096]).
  EXPECT_EQ(count_parameters(preset("llava-1.5-13b")), 13'351'494'656LL);
  EXPECT_EQ(count_parameters(preset("llava-v1.6-vicuna-7b")), 7'063'427'072LL + 4096);
  EXPECT_EQ(count_parameters(preset("llava-v1.6-mistral-7b")), 7'566'747'648LL);
}

TEST(ParameterCount, TiedEmbeddingsAreCountedOnce) {
  LlavaConfig c = preset("llava-1.5-7b");
  const long long untied = count_parameters(c);
  c.tie_word_embeddings = true;
  EXPECT_EQ(count_parameters(c), untied - 32064LL * 4096);
}

TEST(ParameterCount, ProjectorBiasFlag) {
  LlavaConfig c = preset("llava-1.5-7b");
  const long long with_bias = count_parameters(c);
  c.multimodal_projector_bias = false;
  EXPECT_EQ(count_parameters(c), with_bias - 2 * 4096);
}

// ---- feature geometry --------------------------------------------------------------------------

TEST(ImageTokens, Llava15) {
  const LlavaConfig c = preset("llava-1.5-7b");
  EXPECT_EQ(c.vision_layers_used(), 23);
  EXPECT_EQ(c.vision_features_per_crop(), 576);
  EXPECT_EQ(c.vision_crops_per_image(), 1);
  EXPECT_EQ(c.image_tokens_per_image(), 576);
  LlavaConfig full = c;
  full.vision_feature_select_strategy = "full";
  EXPECT_EQ(full.vision_features_per_crop(), 577);
  EXPECT_EQ(full.image_tokens_per_image(), 577);
}

TEST(ImageTokens, LlavaNextWorstCase) {
  for (const char* name : {"llava-v1.6-vicuna-7b", "llava-v1.6-mistral-7b"}) {
    const LlavaConfig c = preset(name);
    // Base crop 576 + a 2x2 grid at [672, 672]: 48 x 48 features + 48 newlines.
    EXPECT_EQ(c.image_tokens_per_image(), 576 + 48 * 48 + 48) << name;
    EXPECT_EQ(c.image_tokens_per_image(), 2928) << name;
    EXPECT_EQ(c.vision_crops_per_image(), 5) << name;
  }
}

TEST(ImageTokens, LlavaNextCustomPinpoints) {
  LlavaConfig c = parse_ok({{"model_type", "llava_next"}, {"image_grid_pinpoints", {{336, 1344}, {672, 672}}}});
  // [336, 1344]: 1 x 4 tiles -> 24 x 96 features + 24 newlines = 2328 < [672, 672]: 2352.
  EXPECT_EQ(c.image_tokens_per_image(), 576 + 2352);
  EXPECT_EQ(c.vision_crops_per_image(), 5);
  c = parse_ok({{"model_type", "llava_next"}, {"image_grid_pinpoints", {{1008, 1008}}}});
  EXPECT_EQ(c.image_tokens_per_image(), 576 + 72 * 72 + 72);
  EXPECT_EQ(c.vision_crops_per_image(), 10);
}

// Against transformers' own anyres code (tests/fixtures/next_image_layouts.json, tools/make_next_goldens.py): the
// pinpoint chosen, the CLIP crops and the image tokens LlavaNextModel.pack_image_features makes, for three pinpoint
// grids and images square, wide, tall, panoramic, smaller than a tile and of odd sizes.
TEST(ImageTokens, LlavaNextLayoutsEqualTransformers) {
  std::ifstream in(std::filesystem::path(ADAPTLINK_SOURCE_DIR) / "tests" / "fixtures" / "next_image_layouts.json");
  ASSERT_TRUE(in) << "tests/fixtures/next_image_layouts.json";
  const auto goldens = json::parse(in);
  int checked = 0, refused = 0;
  for (const auto& c : goldens["cases"]) {
    const json config_json = {{"model_type", "llava_next"},
                              {"image_grid_pinpoints", c["pinpoints"]},
                              {"vision_feature_select_strategy", c["strategy"]},
                              {"vision_config",
                               {{"image_size", c["image_size"]},
                                {"patch_size", c["patch_size"]},
                                {"hidden_size", 64},
                                {"intermediate_size", 128},
                                {"num_attention_heads", 4},
                                {"num_hidden_layers", 3}}}};
    if (c["strategy"] == "full") {
      // transformers cannot pack 'full' features for NeXT (every image of these cases records its error): refused.
      for (const auto& img : c["images"]) EXPECT_TRUE(img.contains("error")) << c["grid"];
      EXPECT_NE(parse_error(config_json).message.find("'full' is not supported for llava_next"), std::string::npos);
      ++refused;
      continue;
    }
    const LlavaConfig config = parse_ok(config_json);
    for (const auto& img : c["images"]) {
      const int w = img["width"], h = img["height"];
      const std::string what = c["grid"].get<std::string>() + " " + std::to_string(w) + "x" + std::to_string(h);
      const auto best = select_best_resolution(w, h, config.image_grid_pinpoints);
      EXPECT_EQ(best[0], img["best"][0].get<int>()) << what;
      EXPECT_EQ(best[1], img["best"][1].get<int>()) << what;
      EXPECT_EQ(config.vision_crops_for(w, h), img["crops"].get<int>()) << what;
      EXPECT_EQ(config.image_tokens_for(w, h), img["tokens"].get<int>()) << what;
      // The bound used for limits holds.
      EXPECT_LE(config.image_tokens_for(w, h), config.image_tokens_per_image()) << what;
      EXPECT_LE(config.vision_crops_for(w, h), config.vision_crops_per_image()) << what;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 19 + 19 + 10);
  EXPECT_EQ(refused, 3);
}

TEST(ImageTokens, DefaultImageSize) {
  for (const char* name : {"llava-v1.6-vicuna-7b", "llava-v1.6-mistral-7b"}) {
    const LlavaConfig c = preset(name);
    EXPECT_EQ(c.default_image_size(), (std::array<int, 2>{672, 672})) << name;
    // The default is the largest pinpoint's square image: the most tokens and crops the usual grid gives.
    EXPECT_EQ(c.image_tokens_for(0, 0), c.image_tokens_per_image()) << name;
    EXPECT_EQ(c.vision_crops_for(0, 0), c.vision_crops_per_image()) << name;
  }
  const LlavaConfig wide =
      parse_ok({{"model_type", "llava_next"}, {"image_grid_pinpoints", {{336, 1344}, {672, 672}}}});
  // Equal areas: the first ([336, 1344], height x width) is the default, as [width, height].
  EXPECT_EQ(wide.default_image_size(), (std::array<int, 2>{1344, 336}));
  const LlavaConfig v15 = preset("llava-1.5-7b");
  EXPECT_EQ(v15.default_image_size(), (std::array<int, 2>{336, 336}));
  EXPECT_EQ(v15.image_tokens_for(1920, 1080), 576);  // one crop, whatever the size
  EXPECT_EQ(v15.vision_crops_for(1920, 1080), 1);
}

TEST(VisionLayersUsed, HiddenStatesIndexing) {
  LlavaConfig c = preset("llava-1.5-7b");
  c.vision_feature_layer = -1;
  EXPECT_EQ(c.vision_layers_used(), 24);
  c.vision_feature_layer = -25;  // hidden_states[0]: the embeddings
  EXPECT_EQ(c.vision_layers_used(), 0);
  c.vision_feature_layer = 0;
  EXPECT_EQ(c.vision_layers_used(), 0);
  c.vision_feature_layer = 5;
  EXPECT_EQ(c.vision_layers_used(), 5);
}

// ---- transformers defaults ---------------------------------------------------------------------

TEST(Defaults, OmittedSubConfigs) {
  // LlavaConfig(): a default LlamaConfig text tower and CLIP ViT-L/14-336.
  const LlavaConfig c = parse_ok({{"model_type", "llava"}});
  EXPECT_EQ(c.text.model_type, "llama");
  EXPECT_EQ(c.text.hidden_size, 4096);
  EXPECT_EQ(c.text.intermediate_size, 11008);
  EXPECT_EQ(c.text.num_hidden_layers, 32);
  EXPECT_EQ(c.text.num_attention_heads, 32);
  EXPECT_EQ(c.text.num_key_value_heads, 32);
  EXPECT_EQ(c.text.head_dim, 128);
  EXPECT_EQ(c.text.vocab_size, 32000);
  EXPECT_EQ(c.text.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.text.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.text.rope_theta, 10000.0);
  EXPECT_EQ(c.text.hidden_act, "silu");
  EXPECT_EQ(c.text.sliding_window, 0);
  EXPECT_EQ(c.vision.hidden_size, 1024);
  EXPECT_EQ(c.vision.intermediate_size, 4096);
  EXPECT_EQ(c.vision.num_hidden_layers, 24);
  EXPECT_EQ(c.vision.num_attention_heads, 16);
  EXPECT_EQ(c.vision.image_size, 336);
  EXPECT_EQ(c.vision.patch_size, 14);
  EXPECT_EQ(c.vision.projection_dim, 768);
  EXPECT_EQ(c.image_token_index, 32000);
  EXPECT_EQ(c.projector_hidden_act, "gelu");
  EXPECT_TRUE(c.multimodal_projector_bias);
  EXPECT_EQ(c.vision_feature_layer, -2);
  EXPECT_EQ(c.vision_feature_select_strategy, "default");
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(Defaults, EmptySubConfigsGetClassDefaults) {
  // A vision_config dict that is present but empty is a plain CLIPVisionConfig (ViT-B/32 at 224 px).
  const LlavaConfig c =
      parse_ok({{"model_type", "llava"}, {"text_config", json::object()}, {"vision_config", json::object()}});
  EXPECT_EQ(c.vision.model_type, "clip_vision_model");
  EXPECT_EQ(c.vision.hidden_size, 768);
  EXPECT_EQ(c.vision.intermediate_size, 3072);
  EXPECT_EQ(c.vision.num_hidden_layers, 12);
  EXPECT_EQ(c.vision.num_attention_heads, 12);
  EXPECT_EQ(c.vision.num_channels, 3);
  EXPECT_EQ(c.vision.image_size, 224);
  EXPECT_EQ(c.vision.patch_size, 32);
  EXPECT_DOUBLE_EQ(c.vision.layer_norm_eps, 1e-5);
  EXPECT_EQ(c.vision.hidden_act, "quick_gelu");
  EXPECT_EQ(c.vision.projection_dim, 512);
  EXPECT_EQ(c.vision.num_positions(), 50);
  EXPECT_EQ(c.text.hidden_size, 4096);
}

TEST(Defaults, MistralTextConfig) {
  const LlavaConfig c = parse_ok({{"model_type", "llava_next"}, {"text_config", {{"model_type", "mistral"}}}});
  EXPECT_EQ(c.text.num_key_value_heads, 8);
  EXPECT_EQ(c.text.intermediate_size, 14336);
  EXPECT_EQ(c.text.max_position_embeddings, 131072);
  EXPECT_EQ(c.text.sliding_window, 4096);
  EXPECT_EQ(c.image_grid_pinpoints,
            (std::vector<std::array<int, 2>>{{336, 672}, {672, 336}, {672, 672}, {1008, 336}, {336, 1008}}));
  // An explicit null restores num_key_value_heads = num_attention_heads.
  const LlavaConfig n = parse_ok(
      {{"model_type", "llava_next"}, {"text_config", {{"model_type", "mistral"}, {"num_key_value_heads", nullptr}}}});
  EXPECT_EQ(n.text.num_key_value_heads, 32);
}

TEST(Defaults, KeyValueHeadsAndHeadDimFollowTheHeads) {
  const LlavaConfig c = parse_ok({{"text_config", {{"hidden_size", 5120}, {"num_attention_heads", 40}}}});
  EXPECT_EQ(c.model_type, "llava");
  EXPECT_EQ(c.text.num_key_value_heads, 40);
  EXPECT_EQ(c.text.head_dim, 128);
  const LlavaConfig g = parse_ok({{"text_config", {{"num_key_value_heads", 8}, {"head_dim", 64}}}});
  EXPECT_EQ(g.text.num_key_value_heads, 8);
  EXPECT_EQ(g.text.head_dim, 64);
  const LlavaConfig n = parse_ok({{"text_config", {{"head_dim", nullptr}, {"pad_token_id", nullptr}}}});
  EXPECT_EQ(n.text.head_dim, 128);
  EXPECT_EQ(n.text.pad_token_id, -1);
}

TEST(Defaults, RopeThetaSpellings) {
  EXPECT_DOUBLE_EQ(parse_ok({{"text_config", {{"rope_theta", 1e6}}}}).text.rope_theta, 1e6);
  // transformers 5.x
  const LlavaConfig p =
      parse_ok({{"text_config", {{"rope_parameters", {{"rope_theta", 500000.0}, {"rope_type", "default"}}}}}});
  EXPECT_DOUBLE_EQ(p.text.rope_theta, 500000.0);
  EXPECT_EQ(p.text.rope_type, "default");
  // rope_parameters wins over a stray rope_theta; an integer theta is fine.
  EXPECT_DOUBLE_EQ(
      parse_ok({{"text_config", {{"rope_theta", 10000.0}, {"rope_parameters", {{"rope_theta", 1000000}}}}}})
          .text.rope_theta,
      1e6);
  // Old-style scaling block.
  const LlavaConfig s = parse_ok({{"text_config", {{"rope_scaling", {{"type", "linear"}, {"factor", 2.5}}}}}});
  EXPECT_EQ(s.text.rope_type, "linear");
  EXPECT_DOUBLE_EQ(s.text.rope_scaling_factor, 2.5);
  EXPECT_DOUBLE_EQ(s.text.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(parse_ok({{"text_config", {{"rope_scaling", nullptr}}}}).text.rope_theta, 10000.0);
}

TEST(Defaults, ImageTokenIdAlias) {
  EXPECT_EQ(parse_ok({{"image_token_id", 32001}}).image_token_index, 32001);
  EXPECT_EQ(parse_ok({{"image_token_index", 151646}}).image_token_index, 151646);
}

TEST(Defaults, TieWordEmbeddingsFromTextConfig) {
  EXPECT_TRUE(parse_ok({{"text_config", {{"tie_word_embeddings", true}}}}).tie_word_embeddings);
  EXPECT_TRUE(parse_ok({{"tie_word_embeddings", true}}).tie_word_embeddings);
  EXPECT_FALSE(parse_ok({{"tie_word_embeddings", false}}).tie_word_embeddings);
}

TEST(Defaults, EosTokenListTakesTheFirst) {
  EXPECT_EQ(parse_ok({{"text_config", {{"eos_token_id", {2, 32000}}}}}).text.eos_token_id, 2);
}

// ---- errors ------------------------------------------------------------------------------------

TEST(Errors, WrongTypeNamesFileAndKey) {
  const Error e = parse_error({{"model_type", "llava"}, {"text_config", {{"hidden_size", "4096"}}}});
  EXPECT_EQ(e.file, "config.json");
  EXPECT_EQ(e.to_string(), "config.json: text_config.hidden_size: expected an integer, got string");
}

TEST(Errors, MoreWrongTypes) {
  EXPECT_EQ(parse_error({{"vision_config", {{"image_size", 336.5}}}}).message,
            "vision_config.image_size: expected an integer, got float");
  EXPECT_EQ(parse_error({{"text_config", {{"rms_norm_eps", "1e-5"}}}}).message,
            "text_config.rms_norm_eps: expected a number, got string");
  EXPECT_EQ(parse_error({{"tie_word_embeddings", 0}}).message, "tie_word_embeddings: expected a boolean, got integer");
  EXPECT_EQ(parse_error({{"text_config", 5}}).message, "text_config: expected an object, got integer");
  EXPECT_EQ(parse_error({{"text_config", {{"rope_parameters", {{"rope_theta", "x"}}}}}}).message,
            "text_config.rope_parameters.rope_theta: expected a number, got string");
  EXPECT_EQ(parse_error(json::array()).message, "expected a JSON object at the top level, got array");
}

TEST(Errors, BadValues) {
  auto message_of = [](const json& j) { return parse_error(j).message; };
  EXPECT_NE(message_of({{"model_type", "llama"}}).find("model_type: unsupported"), std::string::npos);
  EXPECT_NE(message_of({{"text_config", {{"model_type", "qwen2"}}}}).find("text_config.model_type"), std::string::npos);
  EXPECT_NE(message_of({{"vision_config", {{"model_type", "siglip_vision_model"}}}}).find("vision_config.model_type"),
            std::string::npos);
  EXPECT_NE(message_of({{"vision_feature_select_strategy", "cls"}}).find("vision_feature_select_strategy"),
            std::string::npos);
  EXPECT_NE(message_of({{"vision_feature_layer", {-2, -5}}}).find("not supported"), std::string::npos);
  EXPECT_NE(message_of({{"vision_feature_layer", -26}}).find("vision_feature_layer"), std::string::npos);
  EXPECT_NE(message_of({{"text_config", {{"num_hidden_layers", 0}}}}).find("text_config.num_hidden_layers"),
            std::string::npos);
  EXPECT_NE(message_of({{"text_config", {{"num_key_value_heads", 5}}}}).find("text_config.num_key_value_heads"),
            std::string::npos);
  EXPECT_NE(message_of({{"text_config", {{"hidden_size", 4100}, {"num_attention_heads", 32}}}})
                .find("text_config.hidden_size"),
            std::string::npos);
  EXPECT_NE(message_of({{"model_type", "llava_next"}, {"image_grid_pinpoints", {{672}}}}).find("image_grid_pinpoints"),
            std::string::npos);
  EXPECT_NE(message_of({{"text_config", {{"hidden_size", 1LL << 40}}}}).find("out of range"), std::string::npos);
  // Degenerate numbers that made every token NaN (probe #27).
  EXPECT_NE(message_of({{"text_config", {{"rope_theta", 0}}}}).find("text_config.rope_theta: must be a positive finite"),
            std::string::npos);
  EXPECT_NE(message_of({{"text_config", {{"rms_norm_eps", -1}}}}).find("text_config.rms_norm_eps: must be a positive"),
            std::string::npos);
  EXPECT_NE(message_of({{"vision_config", {{"layer_norm_eps", 0}}}}).find("vision_config.layer_norm_eps"),
            std::string::npos);
  EXPECT_NE(message_of({{"text_config", {{"max_position_embeddings", 0}}}}).find("max_position_embeddings"),
            std::string::npos);
}

class TempFile {
 public:
  explicit TempFile(const std::string& text)
      : path_(std::filesystem::temp_directory_path() /
              ("adaptlink_test_config_" + std::to_string(reinterpret_cast<uintptr_t>(this)) + ".json")) {
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

TEST(Load, FromFile) {
  TempFile file(std::string(preset_config_text("llava-1.5-13b")));
  auto config = load_llava_config(file.path());
  ASSERT_TRUE(config.has_value()) << config.error().to_string();
  EXPECT_EQ(config->text.hidden_size, 5120);
}

TEST(Load, SyntaxErrorHasLineAndColumn) {
  TempFile file("{\n  \"model_type\": \"llava\",\n  \"text_config\": {\"hidden_size\": 40 96}\n}\n");
  auto config = load_llava_config(file.path());
  ASSERT_FALSE(config.has_value());
  EXPECT_EQ(config.error().file, file.path().string());
  EXPECT_EQ(config.error().line, 3);
  EXPECT_GT(config.error().column, 30);
  EXPECT_NE(config.error().message.find("invalid JSON"), std::string::npos);
}

TEST(Load, TypeErrorNamesThePath) {
  TempFile file(R"({"model_type": "llava", "vision_config": {"patch_size": "14"}})");
  auto config = load_llava_config(file.path());
  ASSERT_FALSE(config.has_value());
  EXPECT_EQ(config.error().to_string(),
            file.path().string() + ": vision_config.patch_size: expected an integer, got string");
}

TEST(Load, MissingFile) {
  auto config = load_llava_config("/nonexistent/adaptlink/config.json");
  ASSERT_FALSE(config.has_value());
  EXPECT_EQ(config.error().file, "/nonexistent/adaptlink/config.json");
}

TEST(Load, PresetFilesOnDiskMatchEmbeddedText) {
  for (const auto& name : preset_names()) {
    std::ifstream in(std::filesystem::path(ADAPTLINK_SOURCE_DIR) / "models" / "presets" / (name + ".json"));
    ASSERT_TRUE(in) << name;
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(text, preset_config_text(name)) << name;
  }
}

}  // namespace
}  // namespace adaptlink::models

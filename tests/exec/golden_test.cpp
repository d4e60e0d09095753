// Golden tests: every fixture in tests/fixtures (tiny random LLaVA checkpoints made by transformers, see
// tools/make_fixtures.py) must give transformers' greedy tokens and prefill logits.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "adaptlink/exec/generate.hpp"
#include "adaptlink/exec/tensor_io.hpp"
#include "adaptlink/exec/tokenizer.hpp"

namespace adaptlink::exec {
namespace {

const std::filesystem::path kFixtures = std::filesystem::path(ADAPTLINK_SOURCE_DIR) / "tests" / "fixtures";

const std::vector<std::string> kNames = {"llava_llama_mha_tied", "llava_mistral_gqa_full", "llava_llama_gqa_sharded",
                                         "llava_llama_tied_full_l1"};

nlohmann::json expected(const std::string& name) {
  std::ifstream in(kFixtures / name / "expected.json");
  return nlohmann::json::parse(in);
}

std::map<std::string, at::Tensor> reference(const std::string& name) {
  auto r = read_safetensors(kFixtures / name / "reference.safetensors");
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().to_string());
  return r ? *r : std::map<std::string, at::Tensor>{};
}

ExecOptions fp32() { return *parse_exec_options("fp32", "cpu"); }

std::vector<int64_t> ids_of(const nlohmann::json& e) { return e["input_ids"].get<std::vector<int64_t>>(); }

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, GreedyTokensAndPrefillLogitsMatchTransformersInFp32) {
  const auto name = GetParam();
  const auto e = expected(name);
  auto ref = reference(name);
  auto runner = LlavaRunner::load(kFixtures / name, fp32());
  ASSERT_TRUE(runner.has_value()) << runner.error().to_string();
  GenerateOptions opt;
  opt.max_new_tokens = static_cast<int>(e["generated"].size());
  opt.keep_prefill_logits = true;
  opt.eos_ids = std::vector<int64_t>{2};  // what the fixture script passed to generate()
  auto result = (*runner)->generate(ids_of(e), ref.at("pixel_values"), opt);
  ASSERT_TRUE(result.has_value()) << result.error().to_string();
  EXPECT_EQ(result->generated, e["generated"].get<std::vector<int64_t>>());

  const at::Tensor want = ref.at("logits");
  ASSERT_EQ(result->prefill_logits.sizes(), want.sizes());
  const double scale = want.abs().max().item<double>();
  const double err = (result->prefill_logits - want).abs().max().item<double>();
  EXPECT_LE(err / scale, 1e-4) << "max abs error " << err << " at logit scale " << scale;
  std::printf("%s: prefill logits max abs error %.3g (relative %.3g), tokens %s\n", name.c_str(), err, err / scale,
              result->generated == e["generated"].get<std::vector<int64_t>>() ? "identical" : "DIFFER");
}

TEST_P(Golden, StopsAtEos) {
  const auto name = GetParam();
  const auto e = expected(name);
  if (e["eos_stop"].is_null()) GTEST_SKIP();
  auto ref = reference(name);
  auto runner = LlavaRunner::load(kFixtures / name, fp32());
  ASSERT_TRUE(runner.has_value()) << runner.error().to_string();
  GenerateOptions opt;
  opt.max_new_tokens = 12;
  opt.eos_ids = std::vector<int64_t>{e["eos_stop"]["eos_token_id"].get<int64_t>()};
  auto result = (*runner)->generate(ids_of(e), ref.at("pixel_values"), opt);
  ASSERT_TRUE(result.has_value()) << result.error().to_string();
  EXPECT_EQ(result->generated, e["eos_stop"]["generated"].get<std::vector<int64_t>>());
}

TEST_P(Golden, ChainedStagesGiveTheSameOutputs) {
  const auto name = GetParam();
  const auto e = expected(name);
  auto ref = reference(name);
  auto whole = LlavaRunner::load(kFixtures / name, fp32());
  ASSERT_TRUE(whole.has_value()) << whole.error().to_string();
  GenerateOptions opt;
  opt.max_new_tokens = 6;
  opt.keep_prefill_logits = true;
  opt.eos_ids = std::vector<int64_t>{2};
  auto base = (*whole)->generate(ids_of(e), ref.at("pixel_values"), opt);
  ASSERT_TRUE(base.has_value());
  const int n = (*whole)->graph().size();
  for (int k : {2, 3, n}) {
    auto ranges = split_even((*whole)->graph(), k);
    ASSERT_EQ(static_cast<int>(ranges.size()), k);
    auto runner = LlavaRunner::load(kFixtures / name, fp32(), ranges);
    ASSERT_TRUE(runner.has_value()) << runner.error().to_string();
    auto result = (*runner)->generate(ids_of(e), ref.at("pixel_values"), opt);
    ASSERT_TRUE(result.has_value()) << result.error().to_string();
    EXPECT_EQ(result->generated, base->generated) << k << " stages";
    EXPECT_LE((result->prefill_logits - base->prefill_logits).abs().max().item<double>(), 1e-5) << k << " stages";
  }
}

// Batched decode (Stage::forward_batch): 8 requests of different prompt lengths, with and without images, decoded in
// batches of 2, 3 and 8 through one stage and through three give every request the tokens it gets alone, the
// golden request transformers' tokens and prefill logits.
TEST_P(Golden, BatchedDecodeGivesEachRequestItsOneAtATimeTokens) {
  const auto name = GetParam();
  const auto e = expected(name);
  auto ref = reference(name);
  const auto golden = ids_of(e);
  const at::Tensor pixels = ref.at("pixel_values");
  auto whole = LlavaRunner::load(kFixtures / name, fp32());
  ASSERT_TRUE(whole.has_value()) << whole.error().to_string();
  const int64_t image_token = (*whole)->checkpoint().config().image_token_index;
  std::vector<int64_t> text;  // the golden prompt without its image tokens
  for (int64_t id : golden) {
    if (id != image_token) text.push_back(id);
  }
  std::vector<GenerateRequest> requests = {
      {golden, pixels},
      {text, at::Tensor()},
      {std::vector<int64_t>(text.begin(), text.begin() + static_cast<long>(text.size() / 2)), at::Tensor()},
      {golden, pixels.flip({3})},
      {std::vector<int64_t>(text.begin(), text.begin() + 3), at::Tensor()},
      {golden, pixels * 0.5},
      {std::vector<int64_t>(text.rbegin(), text.rend()), at::Tensor()},
      {std::vector<int64_t>(text.begin() + 1, text.end()), at::Tensor()},
  };
  GenerateOptions opt;
  opt.max_new_tokens = static_cast<int>(e["generated"].size());
  opt.keep_prefill_logits = true;
  opt.eos_ids = std::vector<int64_t>{2};
  std::vector<std::vector<int64_t>> alone;
  for (const auto& r : requests) {
    auto one = (*whole)->generate(r.input_ids, r.pixel_values, opt);
    ASSERT_TRUE(one.has_value()) << one.error().to_string();
    alone.push_back(one->generated);
  }
  ASSERT_EQ(alone.front(), e["generated"].get<std::vector<int64_t>>());
  const at::Tensor want = ref.at("logits");
  const double scale = want.abs().max().item<double>();
  for (int stages : {1, 3}) {
    auto runner = stages == 1 ? LlavaRunner::load(kFixtures / name, fp32())
                              : LlavaRunner::load(kFixtures / name, fp32(), split_even((*whole)->graph(), stages));
    ASSERT_TRUE(runner.has_value()) << runner.error().to_string();
    for (int max_batch : {2, 3, 8}) {
      auto batched = (*runner)->generate_batch(requests, opt, max_batch);
      ASSERT_TRUE(batched.has_value()) << batched.error().to_string();
      ASSERT_EQ(batched->size(), requests.size());
      for (size_t i = 0; i < requests.size(); ++i) {
        EXPECT_EQ((*batched)[i].generated, alone[i]) << stages << " stage(s), max_batch " << max_batch << ", request " << i;
      }
      EXPECT_LE(((*batched)[0].prefill_logits - want).abs().max().item<double>() / scale, 1e-4);
    }
  }
}

TEST_P(Golden, HiddenStatesAtStageBoundariesMatchTransformers) {
  // Run [0, text_embed] then each decoder layer as its own stage and compare the text hidden states
  // with transformers' output_hidden_states (embeddings, then each layer; the last one is after the final norm).
  const auto name = GetParam();
  const auto e = expected(name);
  auto ref = reference(name);
  auto ckpt = Checkpoint::open(kFixtures / name);
  ASSERT_TRUE(ckpt.has_value());
  auto graph = models::LayerGraph::build(ckpt->config(), models::Dtype::fp32);
  const at::Tensor hidden = ref.at("text_hidden_states");  // [layers + 1, T, H]
  StepInput step;
  step.input_ids = at::tensor(ids_of(e), at::TensorOptions().dtype(at::kLong));
  auto first = Stage::load(*ckpt, graph, 0, graph.text_embed_index(), fp32());
  ASSERT_TRUE(first.has_value()) << first.error().to_string();
  auto act = (*first)->forward(step, {ActivationKind::pixels, ref.at("pixel_values")});
  ASSERT_TRUE(act.has_value()) << act.error().to_string();
  ASSERT_EQ(act->kind, ActivationKind::text_hidden);
  EXPECT_LE((act->tensor[0] - hidden[0]).abs().max().item<double>(), 1e-5);
  if (ref.count("image_features")) {
    auto vision = Stage::load(*ckpt, graph, 0, graph.text_embed_index() - 1, fp32());
    ASSERT_TRUE(vision.has_value());
    auto feats = (*vision)->forward(step, {ActivationKind::pixels, ref.at("pixel_values")});
    ASSERT_TRUE(feats.has_value());
    EXPECT_EQ(feats->kind, ActivationKind::image_features);
    EXPECT_LE((feats->tensor - ref.at("image_features")).abs().max().item<double>(), 1e-4);
  }
  const int layers = graph.num_decoder_layers();
  for (int l = 0; l < layers - 1; ++l) {
    const int node = graph.first_decoder_index() + l;
    auto stage = Stage::load(*ckpt, graph, node, node, fp32());
    ASSERT_TRUE(stage.has_value());
    act = (*stage)->forward(step, *act);
    ASSERT_TRUE(act.has_value()) << act.error().to_string();
    const double scale = hidden[l + 1].abs().max().item<double>();
    EXPECT_LE((act->tensor[0] - hidden[l + 1]).abs().max().item<double>() / scale, 1e-5) << "layer " << l;
  }
}

TEST_P(Golden, Bf16RunsAndStaysClose) {
  const auto name = GetParam();
  const auto e = expected(name);
  auto ref = reference(name);
  auto runner = LlavaRunner::load(kFixtures / name, *parse_exec_options("bf16", "cpu"));
  ASSERT_TRUE(runner.has_value()) << runner.error().to_string();
  GenerateOptions opt;
  opt.max_new_tokens = 2;
  opt.keep_prefill_logits = true;
  auto result = (*runner)->generate(ids_of(e), ref.at("pixel_values"), opt);
  ASSERT_TRUE(result.has_value()) << result.error().to_string();
  const at::Tensor want = ref.at("logits");
  const double scale = want.abs().max().item<double>();
  EXPECT_LE((result->prefill_logits - want).abs().max().item<double>() / scale, 0.1);
}

TEST_P(Golden, CudaMatchesWhenAvailable) {
  if (!cuda_available()) GTEST_SKIP() << "libtorch without CUDA or no GPU";
  const auto name = GetParam();
  const auto e = expected(name);
  auto ref = reference(name);
  auto runner = LlavaRunner::load(kFixtures / name, *parse_exec_options("fp32", "cuda"));
  ASSERT_TRUE(runner.has_value()) << runner.error().to_string();
  GenerateOptions opt;
  opt.max_new_tokens = static_cast<int>(e["generated"].size());
  opt.keep_prefill_logits = true;
  opt.eos_ids = std::vector<int64_t>{2};
  auto result = (*runner)->generate(ids_of(e), ref.at("pixel_values"), opt);
  ASSERT_TRUE(result.has_value()) << result.error().to_string();
  EXPECT_EQ(result->generated, e["generated"].get<std::vector<int64_t>>());
  const at::Tensor want = ref.at("logits");
  // TF32 may be on for CUDA matmuls: a looser bound than on the CPU.
  EXPECT_LE((result->prefill_logits - want).abs().max().item<double>() / want.abs().max().item<double>(), 1e-2);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Golden, ::testing::ValuesIn(kNames));

TEST(GoldenPrompt, PromptAndImageFileGiveTransformersInputIdsAndTokens) {
  const std::string name = "llava_llama_mha_tied";
  const auto e = expected(name);
  auto runner = LlavaRunner::load(kFixtures / name, fp32());
  ASSERT_TRUE(runner.has_value()) << runner.error().to_string();
  auto tok = Tokenizer::load(kFixtures / name / "tokenizer.model");
  ASSERT_TRUE(tok.has_value()) << tok.error().to_string();
  const auto& config = (*runner)->checkpoint().config();
  const auto ids = tokenize_with_images(*tok, llava_prompt_text(e["prompt"].get<std::string>(), true),
                                        config.image_token_index, config.image_tokens_per_image());
  EXPECT_EQ(ids, ids_of(e));
  auto pixels = (*runner)->pixel_values_for_image(kFixtures / "images" / "test.png");
  ASSERT_TRUE(pixels.has_value()) << pixels.error().to_string();
  auto ref = reference(name);
  EXPECT_LE((*pixels - ref.at("pixel_values")).abs().max().item<double>(), 0.02);
  GenerateOptions opt;
  opt.max_new_tokens = static_cast<int>(e["generated"].size());
  opt.eos_ids = std::vector<int64_t>{2};
  auto result = (*runner)->generate(ids, *pixels, opt);
  ASSERT_TRUE(result.has_value()) << result.error().to_string();
  EXPECT_EQ(result->generated, e["generated"].get<std::vector<int64_t>>());
}

TEST(GoldenPrompt, TextOnlyPromptRunsWithoutImage) {
  auto runner = LlavaRunner::load(kFixtures / "llava_llama_mha_tied", fp32());
  ASSERT_TRUE(runner.has_value());
  GenerateOptions opt;
  opt.max_new_tokens = 3;
  auto result = (*runner)->generate({1, 20, 30, 40}, at::Tensor(), opt);
  ASSERT_TRUE(result.has_value()) << result.error().to_string();
  EXPECT_GE(result->generated.size(), 1u);
}

TEST(GoldenPrompt, ImageTokenCountMismatchIsAnError) {
  auto runner = LlavaRunner::load(kFixtures / "llava_llama_mha_tied", fp32());
  ASSERT_TRUE(runner.has_value());
  auto ref = reference("llava_llama_mha_tied");
  GenerateOptions opt;
  opt.max_new_tokens = 1;
  auto result = (*runner)->generate({1, 400, 5}, ref.at("pixel_values"), opt);  // 1 image token, 4 features
  ASSERT_FALSE(result.has_value());
  EXPECT_NE(result.error().message.find("image tokens"), std::string::npos) << result.error().message;
  auto bad_id = (*runner)->generate({1, 100000}, at::Tensor(), opt);
  ASSERT_FALSE(bad_id.has_value());
  EXPECT_NE(bad_id.error().message.find("vocabulary"), std::string::npos);
}

}  // namespace
}  // namespace adaptlink::exec

namespace adaptlink::exec {
namespace {

// LLaVA-NeXT in one process and through three stages against transformers' LlavaNextForConditionalGeneration
// (tests/fixtures/next_*, tools/make_next_fixtures.py): two tiny checkpoints (Llama MHA and Mistral GQA text towers,
// two pinpoint grids), four images each (80x60, wide 80x16, tall 12x60, 20x26 smaller than a tile). Pixel values from
// preprocess_anyres against the processor's, prefill logits within 1e-4 of the logit scale, greedy tokens identical.
class NextGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(NextGolden, MatchesTransformers) {
  const auto dir = kFixtures / GetParam();
  std::ifstream in(dir / "expected.json");
  ASSERT_TRUE(in);
  const auto expected = nlohmann::json::parse(in);
  auto ref = read_safetensors(dir / "reference.safetensors");
  ASSERT_TRUE(ref.has_value()) << ref.error().to_string();
  // Refused where image sizes cannot reach the stages yet.
  auto refused = LlavaRunner::load(dir, fp32());
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message.find("llava_next"), std::string::npos);
  auto whole = LlavaRunner::load(dir, fp32(), {}, NextCheckpoints::accept);
  ASSERT_TRUE(whole.has_value()) << whole.error().to_string();
  const auto& graph = (*whole)->graph();
  const int te = graph.text_embed_index();
  auto split =
      LlavaRunner::load(dir, fp32(), {{0, te - 1}, {te, te + 1}, {te + 2, graph.size() - 1}}, NextCheckpoints::accept);
  ASSERT_TRUE(split.has_value()) << split.error().to_string();
  const auto& config = (*whole)->checkpoint().config();
  for (size_t i = 0; i < expected["cases"].size(); ++i) {
    const auto& c = expected["cases"][i];
    const std::string image = c["image"];
    const at::Tensor sizes = ref->at(fmt::format("image_sizes_{}", i));
    const std::array<int, 2> hw{static_cast<int>(sizes[0].item<int64_t>()), static_cast<int>(sizes[1].item<int64_t>())};
    // Preprocessing and the layout.
    const auto path = std::filesystem::exists(kFixtures / "images" / image) ? kFixtures / "images" / image
                                                                            : kFixtures / "next_pixels" / image;
    auto px = image_pixels_for(path, (*whole)->image_processor(), config);
    ASSERT_TRUE(px.has_value()) << px.error().to_string();
    const at::Tensor want_pv = ref->at(fmt::format("pixel_values_{}", i));
    ASSERT_EQ(px->pixel_values.sizes(), want_pv.sizes()) << image;
    EXPECT_LE((px->pixel_values - want_pv).abs().max().item<double>(), 0.02) << image;
    ASSERT_EQ(px->image_sizes.size(), 1u) << image;
    EXPECT_EQ(px->image_sizes[0], hw) << image;
    EXPECT_EQ(config.image_tokens_for(hw[1], hw[0]), c["image_tokens"].get<int>()) << image;
    // The model, on transformers' own pixels.
    const at::Tensor ids = ref->at(fmt::format("input_ids_{}", i));
    GenerateRequest request{
        std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel()), want_pv, {hw}};
    GenerateOptions options;
    options.max_new_tokens = static_cast<int>(c["generated"].size());
    options.keep_prefill_logits = true;
    const double scale = c["logit_scale"];
    for (auto* runner : {whole->get(), split->get()}) {
      auto out = runner->generate_batch({request}, options, 1);
      ASSERT_TRUE(out.has_value()) << out.error().to_string();
      const at::Tensor logits = ref->at(fmt::format("logits_{}", i));
      ASSERT_EQ(out->front().prefill_logits.sizes(), logits.sizes()) << image;
      const double err = (out->front().prefill_logits - logits).abs().max().item<double>();
      EXPECT_LE(err, 1e-4 * scale) << image << " (" << runner->stages().size() << " stages)";
      EXPECT_EQ(out->front().generated, c["generated"].get<std::vector<int64_t>>())
          << image << " (" << runner->stages().size() << " stages)";
      std::printf("%s %s (%zu stages): %d crops, %d image tokens, max |logit diff| %.2e\n", GetParam().c_str(),
                  image.c_str(), runner->stages().size(), static_cast<int>(want_pv.size(0)),
                  c["image_tokens"].get<int>(), err);
    }
  }
  // Without the image sizes the text_embed stage says what it needs.
  const at::Tensor ids = ref->at("input_ids_0");
  GenerateRequest bare{std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel()),
                       ref->at("pixel_values_0"),
                       {}};
  auto out = (*whole)->generate_batch({bare}, GenerateOptions{}, 1);
  ASSERT_FALSE(out.has_value());
  EXPECT_NE(out.error().message.find("needs each image's size"), std::string::npos) << out.error().message;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, NextGolden,
                         ::testing::Values("next_llama_mha", "next_mistral_gqa", "next_mistral_window"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace adaptlink::exec

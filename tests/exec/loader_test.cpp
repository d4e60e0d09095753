// The safetensors loader on good and broken checkpoints: every broken kind must give an Error that names
// the file and the tensor, never a crash. Broken copies are made in a temporary directory.
#include <ATen/ATen.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/generate.hpp"
#include "adaptlink/exec/model.hpp"
#include "adaptlink/exec/serve.hpp"
#include "adaptlink/exec/tensor_io.hpp"

namespace adaptlink::exec {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(ADAPTLINK_SOURCE_DIR) / "tests" / "fixtures";

// A flat copy of a fixture directory in a fresh temporary directory. Plain POSIX calls on purpose: PyTorch's
// libtorch.so exports its own std::filesystem::remove_all / copy, which crash when called from code built
// with another libstdc++ (seen with torch 2.11).
class TempCopy {
 public:
  explicit TempCopy(const std::string& fixture) {
    std::string tmpl = (fs::path(::getenv("TMPDIR") ? ::getenv("TMPDIR") : "/tmp") / "adaptlink_loader_XXXXXX").string();
    ADAPTLINK_CHECK(::mkdtemp(tmpl.data()) != nullptr, "mkdtemp failed");
    dir_ = tmpl;
    const std::string src = (kFixtures / fixture).string();
    DIR* d = ::opendir(src.c_str());
    ADAPTLINK_CHECK(d != nullptr, "cannot list {}", src);
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::ifstream in(src + "/" + name, std::ios::binary);
      std::ofstream out(dir_ / name, std::ios::binary);
      out << in.rdbuf();
      files_.push_back(name);
    }
    ::closedir(d);
  }
  ~TempCopy() {
    DIR* d = ::opendir(dir_.c_str());
    if (d != nullptr) {
      while (const dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name != "." && name != "..") ::unlink((dir_ / name).c_str());
      }
      ::closedir(d);
    }
    ::rmdir(dir_.c_str());
  }
  const fs::path& dir() const { return dir_; }

 private:
  fs::path dir_;
  std::vector<std::string> files_;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void spit(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary | std::ios::trunc) << s; }

// Rewrites the JSON header of a safetensors file, keeping the data section.
void rewrite_header(const fs::path& p, const std::function<void(nlohmann::json&)>& edit) {
  std::string bytes = slurp(p);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.substr(8, len));
  edit(header);
  std::string text = header.dump();
  const uint64_t new_len = text.size();
  std::string out(reinterpret_cast<const char*>(&new_len), 8);
  spit(p, out + text + bytes.substr(8 + len));
}

// Opens the checkpoint and checks every node, as loading the whole model does.
Status open_and_check(const fs::path& dir) {
  auto ckpt = Checkpoint::open(dir);
  if (!ckpt) return ckpt.error();
  auto graph = models::LayerGraph::build(ckpt->config(), models::Dtype::fp32);
  return ckpt->check_nodes(graph, 0, graph.size() - 1);
}

void expect_error(const Status& s, std::initializer_list<std::string> parts) {
  ASSERT_FALSE(s.has_value()) << "expected an error";
  const std::string text = s.error().to_string();
  for (const auto& part : parts) EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' not in: " << text;
}

const std::string kSingle = "llava_mistral_gqa_full";  // transformers 5.x key layout, one file
const std::string kUp = "model.language_model.layers.1.mlp.up_proj.weight";

TEST(Loader, GoodCheckpointsOpen) {
  for (const char* name : {"llava_llama_mha_tied", "llava_mistral_gqa_full", "llava_llama_gqa_sharded", "llava_llama_tied_full_l1"}) {
    auto s = open_and_check(kFixtures / name);
    EXPECT_TRUE(s.has_value()) << name << ": " << (s ? "" : s.error().to_string());
  }
  auto legacy = Checkpoint::open(kFixtures / "llava_llama_gqa_sharded");
  ASSERT_TRUE(legacy.has_value());
  EXPECT_EQ(legacy->key_layout(), "legacy");
  EXPECT_EQ(legacy->files().size(), 6u);
  auto v5 = Checkpoint::open(kFixtures / kSingle);
  ASSERT_TRUE(v5.has_value());
  EXPECT_EQ(v5->key_layout(), "transformers5");
}

TEST(Loader, CanonicalNames) {
  EXPECT_EQ(canonical_tensor_name("language_model.model.layers.3.mlp.up_proj.weight"), "text.layers.3.mlp.up_proj.weight");
  EXPECT_EQ(canonical_tensor_name("model.language_model.norm.weight"), "text.norm.weight");
  EXPECT_EQ(canonical_tensor_name("language_model.lm_head.weight"), "lm_head.weight");
  EXPECT_EQ(canonical_tensor_name("lm_head.weight"), "lm_head.weight");
  EXPECT_EQ(canonical_tensor_name("vision_tower.vision_model.pre_layrnorm.bias"), "vision.pre_layrnorm.bias");
  EXPECT_EQ(canonical_tensor_name("model.vision_tower.vision_model.pre_layrnorm.bias"), "vision.pre_layrnorm.bias");
  EXPECT_EQ(canonical_tensor_name("vision_tower.encoder.layers.0.mlp.fc1.bias"), "vision.encoder.layers.0.mlp.fc1.bias");
  EXPECT_EQ(canonical_tensor_name("model.multi_modal_projector.linear_1.weight"), "projector.linear_1.weight");
  EXPECT_EQ(canonical_tensor_name("multi_modal_projector.linear_2.bias"), "projector.linear_2.bias");
  EXPECT_EQ(canonical_tensor_name("image_newline"), "image_newline");
  EXPECT_EQ(canonical_tensor_name("model.image_newline"), "image_newline");
  EXPECT_FALSE(canonical_tensor_name("something.else").has_value());
}

TEST(LoaderCorrupt, MissingTensor) {
  TempCopy c(kSingle);
  rewrite_header(c.dir() / "model.safetensors", [](nlohmann::json& h) { h.erase(kUp); });
  expect_error(open_and_check(c.dir()), {"missing tensor", "text.layers.1.mlp.up_proj.weight", "model.safetensors"});
}

TEST(LoaderCorrupt, WrongShape) {
  TempCopy c(kSingle);
  rewrite_header(c.dir() / "model.safetensors", [](nlohmann::json& h) {
    auto shape = h[kUp]["shape"];
    h[kUp]["shape"] = {shape[1], shape[0]};  // same bytes, transposed
  });
  expect_error(open_and_check(c.dir()), {kUp, "has shape [64, 96], expected [96, 64]", "model.safetensors"});
}

TEST(LoaderCorrupt, WrongDtype) {
  TempCopy c(kSingle);
  rewrite_header(c.dir() / "model.safetensors", [](nlohmann::json& h) { h[kUp]["dtype"] = "I32"; });
  expect_error(open_and_check(c.dir()), {kUp, "dtype I32", "model.safetensors"});
}

TEST(LoaderCorrupt, UnknownDtype) {
  TempCopy c(kSingle);
  rewrite_header(c.dir() / "model.safetensors", [](nlohmann::json& h) { h[kUp]["dtype"] = "F99"; });
  expect_error(open_and_check(c.dir()), {kUp, "unknown dtype 'F99'", "model.safetensors"});
}

TEST(LoaderCorrupt, TruncatedFile) {
  TempCopy c(kSingle);
  const auto p = c.dir() / "model.safetensors";
  std::string bytes = slurp(p);
  spit(p, bytes.substr(0, bytes.size() - 1000));
  expect_error(open_and_check(c.dir()), {"truncated", "model.safetensors", "tensor '"});
}

TEST(LoaderCorrupt, FileShorterThanHeaderLength) {
  TempCopy c(kSingle);
  spit(c.dir() / "model.safetensors", "abc");
  expect_error(open_and_check(c.dir()), {"truncated", "model.safetensors"});
}

TEST(LoaderCorrupt, HeaderLargerThanFile) {
  TempCopy c(kSingle);
  const auto p = c.dir() / "model.safetensors";
  std::string bytes = slurp(p);
  const uint64_t len = bytes.size();
  std::memcpy(bytes.data(), &len, 8);
  spit(p, bytes);
  expect_error(open_and_check(c.dir()), {"header length", "larger than the file", "model.safetensors"});
}

TEST(LoaderCorrupt, OverlappingOffsets) {
  TempCopy c(kSingle);
  rewrite_header(c.dir() / "model.safetensors", [](nlohmann::json& h) {
    // gate_proj and up_proj have the same size: point up_proj at gate_proj's bytes.
    h[kUp]["data_offsets"] = h["model.language_model.layers.1.mlp.gate_proj.weight"]["data_offsets"];
  });
  expect_error(open_and_check(c.dir()), {"overlaps", "up_proj", "gate_proj", "model.safetensors"});
}

TEST(LoaderCorrupt, OffsetsDisagreeWithShape) {
  TempCopy c(kSingle);
  rewrite_header(c.dir() / "model.safetensors", [](nlohmann::json& h) {
    auto shape = h[kUp]["shape"];
    h[kUp]["shape"] = {shape[0], shape[1].get<int>() * 2};
  });
  expect_error(open_and_check(c.dir()), {kUp, "needs", "bytes", "model.safetensors"});
}

TEST(LoaderCorrupt, BadJsonHeader) {
  TempCopy c(kSingle);
  const auto p = c.dir() / "model.safetensors";
  std::string bytes = slurp(p);
  bytes[8] = 'x';  // the header's opening brace
  spit(p, bytes);
  expect_error(open_and_check(c.dir()), {"bad JSON header", "model.safetensors"});
}

// A tensor named twice in the header (JSON lets a key repeat; the last one would win silently) is an error naming it.
TEST(LoaderCorrupt, TensorListedTwice) {
  TempCopy c(kSingle);
  const auto p = c.dir() / "model.safetensors";
  std::string bytes = slurp(p);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.substr(8, len));
  std::string text = header.dump();
  const std::string entry = "\"" + kUp + "\":" + header[kUp].dump();
  text.insert(1, entry + ",");  // the same key again, first
  const uint64_t new_len = text.size();
  spit(p, std::string(reinterpret_cast<const char*>(&new_len), 8) + text + bytes.substr(8 + len));
  expect_error(open_and_check(c.dir()), {"tensor '" + kUp + "' is listed twice", "model.safetensors"});
}

// A FIFO as model.safetensors is refused at once (it blocked for ever: probe #28).
TEST(LoaderCorrupt, FifoIsNotARegularFile) {
  TempCopy c(kSingle);
  const auto p = c.dir() / "model.safetensors";
  fs::remove(p);
  ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0);
  expect_error(open_and_check(c.dir()), {"model.safetensors", "not a regular file"});
}

TEST(LoaderCorrupt, MissingShard) {
  TempCopy c("llava_llama_gqa_sharded");
  ::unlink((c.dir() / "model-00003-of-00006.safetensors").c_str());
  expect_error(open_and_check(c.dir()), {"model-00003-of-00006.safetensors", "missing", "model.safetensors.index.json"});
}

TEST(LoaderCorrupt, IndexNamesTensorAbsentFromShard) {
  TempCopy c("llava_llama_gqa_sharded");
  const auto index_path = c.dir() / "model.safetensors.index.json";
  auto index = nlohmann::json::parse(slurp(index_path));
  index["weight_map"]["language_model.model.layers.9.mlp.up_proj.weight"] = "model-00002-of-00006.safetensors";
  spit(index_path, index.dump());
  expect_error(open_and_check(c.dir()), {"language_model.model.layers.9.mlp.up_proj.weight", "model-00002-of-00006.safetensors"});
}

TEST(LoaderCorrupt, ConfigDisagreesWithTensors) {
  TempCopy c(kSingle);
  auto config = nlohmann::json::parse(slurp(c.dir() / "config.json"));
  config["text_config"]["intermediate_size"] = 128;
  spit(c.dir() / "config.json", config.dump());
  expect_error(open_and_check(c.dir()), {"mlp.gate_proj.weight", "expected [128, 64]", "model.safetensors"});
}

TEST(LoaderCorrupt, MissingConfigAndNoWeights) {
  TempCopy c(kSingle);
  ::unlink((c.dir() / "config.json").c_str());
  expect_error(open_and_check(c.dir()), {"config.json"});
  TempCopy d(kSingle);
  ::unlink((d.dir() / "model.safetensors").c_str());
  expect_error(open_and_check(d.dir()), {"no model.safetensors"});
}

TEST(LoaderCorrupt, LlavaNextIsRefused) {
  TempCopy c(kSingle);
  auto config = nlohmann::json::parse(slurp(c.dir() / "config.json"));
  config["model_type"] = "llava_next";
  spit(c.dir() / "config.json", config.dump());
  expect_error(open_and_check(c.dir()), {"llava_next", "not supported", "config.json"});
}

TEST(LoaderCorrupt, TiedHeadMissingFromUntiedCheckpoint) {
  TempCopy c(kSingle);
  rewrite_header(c.dir() / "model.safetensors", [](nlohmann::json& h) { h.erase("lm_head.weight"); });
  expect_error(open_and_check(c.dir()), {"missing tensor", "lm_head.weight"});
}

TEST(LoaderCorrupt, RunnerAndStageReportTheSameErrors) {
  TempCopy c(kSingle);
  rewrite_header(c.dir() / "model.safetensors", [](nlohmann::json& h) { h.erase(kUp); });
  auto runner = LlavaRunner::load(c.dir(), *parse_exec_options("fp32", "cpu"));
  ASSERT_FALSE(runner.has_value());
  EXPECT_NE(runner.error().to_string().find("text.layers.1.mlp.up_proj.weight"), std::string::npos);
}

// ---- stage ranges ----------------------------------------------------------------------------

TEST(StageRange, LoadsOnlyItsTensors) {
  const auto dir = kFixtures / "llava_llama_gqa_sharded";
  auto ckpt = Checkpoint::open(dir);
  ASSERT_TRUE(ckpt.has_value());
  auto graph = models::LayerGraph::build(ckpt->config(), models::Dtype::fp32);
  const int layers = graph.num_decoder_layers();
  ASSERT_EQ(layers, 4);
  // One quarter of the decoder: decoder layer 2.
  const int node = graph.first_decoder_index() + 2;
  auto stage = Stage::load(*ckpt, graph, node, node, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(stage.has_value()) << stage.error().to_string();
  int64_t expect_bytes = 0;
  for (const auto& name : (*stage)->tensor_names()) {
    EXPECT_EQ(name.rfind("text.layers.2.", 0), 0u) << name;
    expect_bytes += static_cast<int64_t>(ckpt->find(name)->info->nbytes());
  }
  EXPECT_EQ((*stage)->tensor_names().size(), 9u);
  EXPECT_EQ((*stage)->weight_bytes(), expect_bytes);
  auto whole = Stage::load(*ckpt, graph, 0, graph.size() - 1, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(whole.has_value());
  EXPECT_LT((*stage)->weight_bytes() * 4, (*whole)->weight_bytes());
}

TEST(StageRange, TensorsOutsideTheRangeAreNotNeeded) {
  TempCopy c(kSingle);
  rewrite_header(c.dir() / "model.safetensors", [](nlohmann::json& h) {
    // (transformers 5.17 saves the CLIP tower without its vision_model. prefix)
    h.erase("model.vision_tower.encoder.layers.0.mlp.fc1.weight");
    h.erase("model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight");
    h.erase("model.multi_modal_projector.linear_1.weight");
  });
  auto ckpt = Checkpoint::open(c.dir());
  ASSERT_TRUE(ckpt.has_value()) << ckpt.error().to_string();
  auto graph = models::LayerGraph::build(ckpt->config(), models::Dtype::fp32);
  auto text = Stage::load(*ckpt, graph, graph.text_embed_index(), graph.size() - 1, *parse_exec_options("fp32", "cpu"));
  EXPECT_TRUE(text.has_value()) << text.error().to_string();
  auto vision = Stage::load(*ckpt, graph, 0, graph.text_embed_index() - 1, *parse_exec_options("fp32", "cpu"));
  ASSERT_FALSE(vision.has_value());
  EXPECT_NE(vision.error().to_string().find("vision.encoder.layers.0.mlp.fc1.weight"), std::string::npos)
      << vision.error().to_string();
}

TEST(StageRange, WrongActivationKindIsAnError) {
  auto ckpt = Checkpoint::open(kFixtures / kSingle);
  ASSERT_TRUE(ckpt.has_value());
  auto graph = models::LayerGraph::build(ckpt->config(), models::Dtype::fp32);
  const int node = graph.first_decoder_index();
  auto stage = Stage::load(*ckpt, graph, node, graph.size() - 1, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(stage.has_value());
  StepInput step;
  step.input_ids = at::tensor(std::vector<int64_t>{1, 2, 3}, at::TensorOptions().dtype(at::kLong));
  auto out = (*stage)->forward(step, {ActivationKind::pixels, at::zeros({1, 3, 42, 42})});
  ASSERT_FALSE(out.has_value());
  EXPECT_NE(out.error().message.find("expects text_hidden"), std::string::npos) << out.error().message;
  auto bad_shape = (*stage)->forward(step, {ActivationKind::text_hidden, at::zeros({1, 3, 7})});
  ASSERT_FALSE(bad_shape.has_value());
  EXPECT_NE(bad_shape.error().message.find("expected [1, tokens, 64]"), std::string::npos) << bad_shape.error().message;
}

TEST(StageRange, SplitEvenCoversTheGraph) {
  auto ckpt = Checkpoint::open(kFixtures / "llava_llama_gqa_sharded");
  ASSERT_TRUE(ckpt.has_value());
  auto graph = models::LayerGraph::build(ckpt->config(), models::Dtype::fp32);
  for (int k = 1; k <= graph.size(); ++k) {
    auto ranges = split_even(graph, k);
    ASSERT_EQ(static_cast<int>(ranges.size()), k);
    int next = 0;
    for (auto [a, b] : ranges) {
      EXPECT_EQ(a, next);
      EXPECT_LE(a, b);
      next = b + 1;
    }
    EXPECT_EQ(next, graph.size());
  }
}

}  // namespace
}  // namespace adaptlink::exec

namespace adaptlink::exec {
namespace {

// LLaVA-NeXT checkpoints (tests/fixtures/next_llama_mha, saved by transformers 5.17 in the legacy key layout): the
// other key layout and a sharded copy load and give transformers' tokens; a missing image_newline is named.
std::vector<int64_t> next_tokens(const fs::path& dir) {
  auto runner = LlavaRunner::load(dir, *parse_exec_options("fp32", "cpu"), {}, NextCheckpoints::accept);
  EXPECT_TRUE(runner.has_value()) << (runner ? "" : runner.error().to_string());
  if (!runner) return {};
  const auto expected = nlohmann::json::parse(slurp(kFixtures / "next_llama_mha" / "expected.json"));
  auto ref = read_safetensors(kFixtures / "next_llama_mha" / "reference.safetensors");
  EXPECT_TRUE(ref.has_value());
  const at::Tensor sizes = ref->at("image_sizes_1");
  GenerateRequest r{expected["cases"][1]["input_ids"].get<std::vector<int64_t>>(),
                    ref->at("pixel_values_1"),
                    {{static_cast<int>(sizes[0].item<int64_t>()), static_cast<int>(sizes[1].item<int64_t>())}}};
  GenerateOptions options;
  options.max_new_tokens = 10;
  auto out = (*runner)->generate_batch({r}, options, 1);
  EXPECT_TRUE(out.has_value()) << (out ? "" : out.error().to_string());
  return out ? out->front().generated : std::vector<int64_t>{};
}

TEST(LoaderNext, BothKeyLayoutsAndShardsLoadAndAgree) {
  const auto expected = nlohmann::json::parse(slurp(kFixtures / "next_llama_mha" / "expected.json"));
  const auto want = expected["cases"][1]["generated"].get<std::vector<int64_t>>();
  auto legacy = Checkpoint::open(kFixtures / "next_llama_mha", NextCheckpoints::accept);
  ASSERT_TRUE(legacy.has_value()) << legacy.error().to_string();
  EXPECT_EQ(legacy->key_layout(), "legacy");
  EXPECT_EQ(next_tokens(kFixtures / "next_llama_mha"), want);

  // transformers 5's layout: model.language_model.*, model.vision_tower.*, model.multi_modal_projector.*,
  // model.image_newline, lm_head.*.
  TempCopy v5("next_llama_mha");
  rewrite_header(v5.dir() / "model.safetensors", [](nlohmann::json& h) {
    nlohmann::json out;
    for (auto& [k, v] : h.items()) {
      std::string key = k;
      for (const auto& [from, to] :
           std::vector<std::pair<std::string, std::string>>{{"language_model.model.", "model.language_model."},
                                                            {"language_model.lm_head.", "lm_head."},
                                                            {"vision_tower.", "model.vision_tower."},
                                                            {"multi_modal_projector.", "model.multi_modal_projector."},
                                                            {"image_newline", "model.image_newline"}}) {
        if (key.rfind(from, 0) == 0) {
          key = to + key.substr(from.size());
          break;
        }
      }
      out[key] = v;
    }
    h = out;
  });
  auto other = Checkpoint::open(v5.dir(), NextCheckpoints::accept);
  ASSERT_TRUE(other.has_value()) << other.error().to_string();
  EXPECT_EQ(other->key_layout(), "transformers5");
  EXPECT_EQ(next_tokens(v5.dir()), want);

  // Two shards and an index.
  TempCopy sharded("next_llama_mha");
  auto all = read_safetensors(sharded.dir() / "model.safetensors");
  ASSERT_TRUE(all.has_value());
  std::vector<std::pair<std::string, at::Tensor>> a, b;
  nlohmann::json weight_map;
  for (const auto& [k, t] : *all) {
    const bool first = a.size() <= b.size();
    (first ? a : b).emplace_back(k, t);
    weight_map[k] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  ASSERT_TRUE(write_safetensors(sharded.dir() / "model-00001-of-00002.safetensors", a).has_value());
  ASSERT_TRUE(write_safetensors(sharded.dir() / "model-00002-of-00002.safetensors", b).has_value());
  spit(sharded.dir() / "model.safetensors.index.json", nlohmann::json{{"weight_map", weight_map}}.dump());
  ::unlink((sharded.dir() / "model.safetensors").c_str());
  auto shards = Checkpoint::open(sharded.dir(), NextCheckpoints::accept);
  ASSERT_TRUE(shards.has_value()) << shards.error().to_string();
  EXPECT_EQ(shards->files().size(), 2u);
  EXPECT_EQ(next_tokens(sharded.dir()), want);
}

TEST(LoaderNext, MissingImageNewlineIsNamed) {
  TempCopy c("next_llama_mha");
  rewrite_header(c.dir() / "model.safetensors", [](nlohmann::json& h) { h.erase("image_newline"); });
  auto ckpt = Checkpoint::open(c.dir(), NextCheckpoints::accept);
  ASSERT_TRUE(ckpt.has_value()) << ckpt.error().to_string();
  auto graph = models::LayerGraph::build(ckpt->config(), models::Dtype::fp32);
  expect_error(ckpt->check_nodes(graph, 0, graph.size() - 1), {"missing tensor", "image_newline", "model.safetensors"});
}

}  // namespace
}  // namespace adaptlink::exec

namespace adaptlink::exec {
namespace {

// A Mistral sliding window shorter than the context does not bound a request (the decoder applies the window;
// NextGolden's next_mistral_window checks its attention against transformers): only the context does.
TEST(ContextCheck, OnlyTheContextBoundsARequest) {
  auto config = models::parse_llava_config(
      nlohmann::json{
          {"text_config", {{"model_type", "mistral"}, {"sliding_window", 16}, {"max_position_embeddings", 256}}}},
      "config.json");
  ASSERT_TRUE(config.has_value()) << config.error().to_string();
  EXPECT_TRUE(check_context(*config, 10, 246).has_value());
  auto over = check_context(*config, 10, 247);
  ASSERT_FALSE(over.has_value());
  EXPECT_NE(over.error().message.find("at most 246 new tokens fit"), std::string::npos) << over.error().message;
}

}  // namespace
}  // namespace adaptlink::exec

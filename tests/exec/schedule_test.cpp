// Decode-first stage scheduling in the workers (the order itself is runtime::StageQueue's, tested in
// tests/runtime): the schedule names of the hello, and what makes preempting a prefill between nodes exact: a stage
// run node by node (chained Stage::forward sub-ranges, KV cache included) gives bitwise the outputs of one call, in
// the prefill and the decode steps after it.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "../../exec/src/runtime.hpp"  // internal: the hello's schedule parser
#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/model.hpp"
#include "adaptlink/exec/tensor_io.hpp"

namespace adaptlink::exec {
namespace {

using partition::Schedule;

const std::filesystem::path kFixtures = std::filesystem::path(ADAPTLINK_SOURCE_DIR) / "tests" / "fixtures";
const std::vector<std::string> kNames = {"llava_llama_mha_tied", "llava_mistral_gqa_full", "llava_llama_gqa_sharded",
                                         "llava_llama_tied_full_l1"};

TEST(Schedule, NamesRoundTripThroughTheHello) {
  for (auto s : {Schedule::decode_first, Schedule::fifo}) {
    auto parsed = detail::parse_schedule(partition::schedule_name(s));
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(*parsed, s);
  }
  EXPECT_EQ(partition::schedule_name(Schedule::decode_first), "decode-first");
  auto bad = detail::parse_schedule("lifo");
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message.find("decode-first or fifo"), std::string::npos);
}

// --- a stage node by node ---

class NodeByNode : public ::testing::TestWithParam<std::string> {};

// Runs `stage` on one step, one node per forward call.
Activation run_nodes(Stage& stage, const StepInput& step, Activation act) {
  for (int n = stage.first(); n <= stage.last(); ++n) {
    auto out = stage.forward(step, act, n, n);
    EXPECT_TRUE(out.has_value()) << "node " << n << ": " << out.error().to_string();
    if (!out) return {};
    act = std::move(out).value();
  }
  return act;
}

void expect_identical(const Activation& a, const Activation& b, const std::string& what) {
  EXPECT_EQ(a.kind, b.kind) << what;
  ASSERT_EQ(a.tensor.defined(), b.tensor.defined()) << what;
  if (a.tensor.defined()) {
    EXPECT_TRUE(at::equal(a.tensor, b.tensor)) << what << ": not bitwise identical";
  }
}

TEST_P(NodeByNode, ChainedNodesGiveBitwiseTheOneCallOutputsInThePrefillAndTheDecodeStepsAfterIt) {
  const auto name = GetParam();
  std::ifstream in(kFixtures / name / "expected.json");
  const auto ids = nlohmann::json::parse(in)["input_ids"].get<std::vector<int64_t>>();
  auto ref = read_safetensors(kFixtures / name / "reference.safetensors");
  ASSERT_TRUE(ref.has_value());
  auto ck = Checkpoint::open(kFixtures / name);
  ASSERT_TRUE(ck.has_value());
  const auto graph = models::LayerGraph::build(ck->config(), models::Dtype::fp32);
  const auto fp32 = *parse_exec_options("fp32", "cpu");
  // The whole model (every activation kind), and a stage of decoder layers only (its input from outside).
  const int n = graph.size();
  for (auto [first, last] : {std::pair{0, n - 1}, std::pair{graph.first_decoder_index(), n - 2}}) {
    auto one = Stage::load(*ck, graph, first, last, fp32);
    auto split = Stage::load(*ck, graph, first, last, fp32);
    ASSERT_TRUE(one.has_value() && split.has_value());
    // Text before the stage's first decoder layer, where it has none.
    auto embed = Stage::load(*ck, graph, 0, graph.text_embed_index(), fp32);
    ASSERT_TRUE(embed.has_value());
    // Two requests interleaved in each stage (image prompt, text-only prompt): their caches stay apart.
    std::vector<int64_t> text_ids;
    for (int64_t id : ids) {
      if (id != ck->config().image_token_index) text_ids.push_back(id);
    }
    const std::vector<std::pair<std::vector<int64_t>, Activation>> prompts = {
        {ids, {ActivationKind::pixels, ref->at("pixel_values")}}, {text_ids, {}}};
    for (int decode = 0; decode <= 3; ++decode) {
      for (size_t r = 0; r < prompts.size(); ++r) {
        StepInput step;
        step.request = static_cast<int64_t>(r) + 1;
        step.prefill = decode == 0;
        step.all_logits = step.prefill;
        step.input_ids = step.prefill
                             ? at::tensor(prompts[r].first, at::TensorOptions().dtype(at::kLong))
                             : at::tensor(std::vector<int64_t>{5 + decode}, at::TensorOptions().dtype(at::kLong));
        Activation input = step.prefill ? prompts[r].second : Activation{};
        if (first > 0) {
          auto e = (*embed)->forward(step, input);
          ASSERT_TRUE(e.has_value()) << e.error().to_string();
          input = *e;
        }
        auto want = (*one)->forward(step, input);
        ASSERT_TRUE(want.has_value()) << want.error().to_string();
        const auto got = run_nodes(**split, step, input);
        const std::string what = fmt::format("{} [{}, {}] request {} step {}", name, first, last, r + 1, decode);
        expect_identical(got, *want, what);
        EXPECT_EQ((*split)->cached_tokens(step.request), (*one)->cached_tokens(step.request)) << what;
      }
    }
  }
}

TEST_P(NodeByNode, PiecesMustLieInTheStageAndTakeWhatTheNodeBeforeProduces) {
  auto ck = Checkpoint::open(kFixtures / GetParam());
  ASSERT_TRUE(ck.has_value());
  const auto graph = models::LayerGraph::build(ck->config(), models::Dtype::fp32);
  const int first = graph.first_decoder_index();
  auto stage = Stage::load(*ck, graph, first, graph.size() - 1, *parse_exec_options("fp32", "cpu"));
  ASSERT_TRUE(stage.has_value());
  StepInput step;
  step.input_ids = at::tensor(std::vector<int64_t>{1, 5}, at::TensorOptions().dtype(at::kLong));
  const Activation hidden{ActivationKind::text_hidden, at::zeros({1, 2, ck->config().text.hidden_size})};
  for (auto [from, to] : {std::pair{first - 1, first}, std::pair{first, graph.size()}, std::pair{first + 1, first}}) {
    auto out = (*stage)->forward(step, hidden, from, to);
    ASSERT_FALSE(out.has_value()) << from << ".." << to;
    EXPECT_NE(out.error().message.find("not a part of stage"), std::string::npos) << out.error().message;
  }
  auto head_only = (*stage)->forward(step, {ActivationKind::none, at::Tensor()}, graph.size() - 1, graph.size() - 1);
  ASSERT_FALSE(head_only.has_value());
  EXPECT_NE(head_only.error().message.find("expects text_hidden"), std::string::npos) << head_only.error().message;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, NodeByNode, ::testing::ValuesIn(kNames));

}  // namespace
}  // namespace adaptlink::exec

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "adaptlink/exec/tokenizer.hpp"

namespace adaptlink::exec {
namespace {

const std::filesystem::path kFixtures = std::filesystem::path(ADAPTLINK_SOURCE_DIR) / "tests" / "fixtures";

Tokenizer load() {
  auto tok = Tokenizer::load(kFixtures / "tokenizer" / "tokenizer.model");
  EXPECT_TRUE(tok.has_value()) << (tok ? "" : tok.error().to_string());
  return std::move(tok).value();
}

TEST(Tokenizer, LlavaPromptMatchesSentencepiece) {
  // Reference: sentencepiece (Python) encoding each segment around <image>, recorded by make_fixtures.py.
  std::ifstream in(kFixtures / "llava_llama_mha_tied" / "expected.json");
  const auto e = nlohmann::json::parse(in);
  auto want = e["tokenizer"]["sentencepiece_segments"].get<std::vector<int64_t>>();
  auto tok = load();
  auto got = tokenize_with_images(tok, e["prompt_text"].get<std::string>(), -1, 1);
  EXPECT_EQ(got, want);
  EXPECT_EQ(llava_prompt_text(e["prompt"].get<std::string>(), true), e["prompt_text"].get<std::string>());
}

TEST(Tokenizer, MatchesSpmEncode) {
  // Expected ids from `spm_encode --model tests/fixtures/tokenizer/tokenizer.model --output_format=id`.
  auto tok = load();
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.vocab_size(), 400);
  const std::vector<std::pair<std::string, std::vector<int64_t>>> cases = {
#include "tokenizer_cases.inc"
  };
  for (const auto& [text, ids] : cases) EXPECT_EQ(tok.encode(text), ids) << "'" << text << "'";
}

TEST(Tokenizer, DecodeRoundTrips) {
  auto tok = load();
  for (std::string text : {"Describe the image in detail.", "What time is shown on the clock? 10:35", "Zebra \xc3\xa9t\xc3\xa9 \xe2\x9c\x93"}) {
    EXPECT_EQ(tok.decode(tok.encode(text)), text);
  }
}

TEST(Tokenizer, BadModelFileIsAnError) {
  const auto path = std::filesystem::temp_directory_path() / "adaptlink_bad_tokenizer.model";
  std::ofstream(path) << "\x0a\xff\xff\xff";
  auto tok = Tokenizer::load(path);
  ASSERT_FALSE(tok.has_value());
  EXPECT_NE(tok.error().to_string().find(path.string()), std::string::npos);
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace adaptlink::exec

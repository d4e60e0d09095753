// Sentencepiece tokenizer (tokenizer.model of LLaMA/Vicuna/Mistral checkpoints) and the LLaVA-1.5 prompt.
//
// A prompt is split at "<image>"; each text segment is encoded by sentencepiece on its own (with its
// dummy-prefix space, as transformers' legacy LlamaTokenizer does), the image placeholder becomes
// `image_tokens` copies of the image token id, and BOS goes first.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "adaptlink/error.hpp"

namespace adaptlink::exec {

class Tokenizer {
 public:
  static Expected<Tokenizer> load(const std::filesystem::path& model_file);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  [[nodiscard]] std::vector<int64_t> encode(std::string_view text) const;
  // Ids outside the sentencepiece vocabulary (image tokens, padding) and control tokens are skipped.
  [[nodiscard]] std::string decode(const std::vector<int64_t>& ids) const;
  [[nodiscard]] int vocab_size() const;
  [[nodiscard]] int bos_id() const;
  [[nodiscard]] int eos_id() const;

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The LLaVA-1.5 conversation template: "USER: <image>\n{prompt} ASSISTANT:" (without "<image>\n" when
// there is no image; a prompt that already holds "<image>" is used as the user turn as is).
std::string llava_prompt_text(std::string_view prompt, bool with_image);

// Token ids of `text` with each "<image>" expanded to `image_tokens` copies of `image_token_id`.
std::vector<int64_t> tokenize_with_images(const Tokenizer& tokenizer, std::string_view text, int64_t image_token_id,
                                          int image_tokens);

}  // namespace adaptlink::exec

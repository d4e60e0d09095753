// Single-process LLaVA generation over a chain of stages (one stage = the whole model by default).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <filesystem>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/exec/image.hpp"
#include "adaptlink/exec/model.hpp"
#include "adaptlink/models/graph.hpp"

namespace adaptlink::exec {

struct GenerateOptions {
  int max_new_tokens = 32;
  std::optional<std::vector<int64_t>> eos_ids;  // default: the checkpoint's (generation_config.json, config.json)
  bool keep_prefill_logits = false;              // return the prefill logits of every position
};

// One request of a batch: its prompt and (optional) pixel values.
struct GenerateRequest {
  std::vector<int64_t> input_ids;
  at::Tensor pixel_values;  // [crops, 3, H, W] float, or undefined
  std::vector<std::array<int, 2>> image_sizes;  // LLaVA-NeXT: each image's [height, width], in the crops' order
};

struct GenerateResult {
  std::vector<int64_t> generated;
  at::Tensor prefill_logits;  // [tokens, vocab] float32 on the CPU, when asked for
  int prompt_tokens = 0;
  double prefill_ms = 0;
  double decode_ms = 0;
};

class LlavaRunner {
 public:
  // Loads the checkpoint as `ranges` (contiguous node ranges covering the DAG in order); empty: one stage.
  static Expected<std::unique_ptr<LlavaRunner>> load(const std::filesystem::path& dir, const ExecOptions& options,
                                                     std::vector<std::pair<int, int>> ranges = {},
                                                     NextCheckpoints next = NextCheckpoints::refuse);

  // Greedy generation. pixel_values: [crops, 3, H, W] float, or undefined for a text-only prompt.
  Expected<GenerateResult> generate(const std::vector<int64_t>& input_ids, const at::Tensor& pixel_values,
                                    const GenerateOptions& options);
  // Greedy generation of several requests: each prefill alone, then their decode steps in batches of up to
  // `max_batch` (Stage::forward_batch through every stage), the requests taking turns in order as they go on; a
  // request leaves at its EOS or max_new_tokens. Results in the requests' order; decode_ms is each request's time
  // from the first batch to its last token. max_batch 1 is generate() for each, interleaved.
  Expected<std::vector<GenerateResult>> generate_batch(const std::vector<GenerateRequest>& requests,
                                                       const GenerateOptions& options, int max_batch);

  // Pixel values of an image file, preprocessed as preprocessor_config.json says.
  Expected<at::Tensor> pixel_values_for_image(const std::filesystem::path& image) const;

  [[nodiscard]] const Checkpoint& checkpoint() const { return checkpoint_; }
  [[nodiscard]] const models::LayerGraph& graph() const { return graph_; }
  [[nodiscard]] const std::vector<std::unique_ptr<Stage>>& stages() const { return stages_; }
  [[nodiscard]] const std::vector<int64_t>& default_eos_ids() const { return eos_ids_; }
  [[nodiscard]] const ImageProcessorConfig& image_processor() const { return image_processor_; }

 private:
  LlavaRunner(Checkpoint checkpoint, models::LayerGraph graph)
      : checkpoint_(std::move(checkpoint)), graph_(std::move(graph)) {}
  Checkpoint checkpoint_;
  models::LayerGraph graph_;
  std::vector<std::unique_ptr<Stage>> stages_;
  std::vector<int64_t> eos_ids_;
  ImageProcessorConfig image_processor_;
  int64_t next_request_ = 1;
};

// eos_token_id of the checkpoint's generation_config.json (an int or a list), else the text config's.
std::vector<int64_t> read_eos_ids(const std::filesystem::path& dir, const models::LlavaConfig& config);

// The checkpoint's preprocessor_config.json, or CLIP defaults at the vision tower's image size.
Expected<ImageProcessorConfig> checkpoint_image_processor(const std::filesystem::path& dir,
                                                          const models::LlavaConfig& config);
// [1, 3, H, W] float pixel values of an image file.
Expected<at::Tensor> pixel_values_for_image(const std::filesystem::path& image, const ImageProcessorConfig& processor);
// An image file's pixel values for the model of `config`: one CLIP crop (LLaVA-1.5, pixel_values_for_image), or
// LLaVA-NeXT's anyres crops (preprocess_anyres) with the image's [height, width] in `image_sizes` (empty otherwise).
struct ImagePixels {
  at::Tensor pixel_values;  // [crops, 3, H, W] float
  std::vector<std::array<int, 2>> image_sizes;
};
Expected<ImagePixels> image_pixels_for(const std::filesystem::path& image, const ImageProcessorConfig& processor,
                                       const models::LlavaConfig& config);

// Splits the DAG into `count` contiguous ranges with about equal weight bytes (at least one node each).
std::vector<std::pair<int, int>> split_even(const models::LayerGraph& graph, int count);

}  // namespace adaptlink::exec

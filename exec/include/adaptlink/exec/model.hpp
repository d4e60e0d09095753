// LLaVA in libtorch, one contiguous node range of the layer DAG at a time.
//
// The layer DAG (models::LayerGraph, topological order) is
//   vision_embed, vision_layer[0..V), projector, text_embed, decoder_layer[0..M), head
// where V is the number of CLIP layers the feature layer uses. A Stage owns the weights of nodes
// [first, last] only and runs them; what flows between stages is an Activation:
//
//   after vision_embed / vision_layer   vision_hidden   [crops, positions, vision hidden]
//   after projector                     image_features  [image tokens, text hidden]
//   after text_embed / decoder_layer    text_hidden     [1, tokens, text hidden]
//   after head                          logits          [1, tokens or 1, vocab] (float32)
//
// and the input of the first stage of a prefill is `pixels` ([crops, 3, H, W], or `none` without an
// image). Every stage also sees the step's token ids (StepInput), which text_embed embeds and which
// fix the RoPE positions. Decode steps skip vision nodes and the projector. Each stage keeps the KV
// cache of its decoder layers per request id.
//
// Numerics follow transformers' LlavaForConditionalGeneration (eager attention): CLIP with
// pre-layernorm and quick_gelu, the GELU projector, LLaMA/Mistral decoder layers (RMSNorm computed in
// fp32, RoPE with the config's theta in fp32, GQA, Mistral's sliding window where set, SiLU-gated MLP, softmax in
// fp32). LLaVA-NeXT: the text_embed stage lays each image's crops out by its size (pack_anyres_features).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/exec/checkpoint.hpp"
#include "adaptlink/models/graph.hpp"

namespace adaptlink::exec {

struct ExecOptions {
  at::ScalarType dtype = at::kFloat;  // weights and activations: kFloat or kBFloat16 (kHalf on CUDA)
  c10::Device device = c10::Device(c10::DeviceType::CPU);
};
// "fp32" | "bf16" | "fp16", "cpu" | "cuda" | "cuda:N"; errors for unknown names or a libtorch without CUDA.
Expected<ExecOptions> parse_exec_options(std::string_view dtype, std::string_view device);
bool cuda_available();

enum class ActivationKind { none, pixels, vision_hidden, image_features, text_hidden, logits };
std::string_view to_string(ActivationKind kind);

// LLaVA-NeXT: one image's projected crop features [crops, patches_per_side^2, text hidden] (the base view first, then
// the tiles row by row) laid out as transformers' LlavaNextModel.pack_image_features does: the base view's features,
// then the tiles' feature map unpadded to the image's aspect ratio with `newline` [text hidden] after each of its
// rows (models::LlavaConfig::anyres_layout). [config.image_tokens_for(width, height), text hidden]; errors name a
// shape that does not match the image.
Expected<at::Tensor> pack_anyres_features(const models::LlavaConfig& config, const at::Tensor& features, int width,
                                          int height, const at::Tensor& newline);

struct Activation {
  ActivationKind kind = ActivationKind::none;
  at::Tensor tensor;
};

struct StepInput {
  int64_t request = 0;
  at::Tensor input_ids;  // [tokens] int64 (CPU or device): the prompt in the prefill, one token per decode step
  bool prefill = true;
  bool all_logits = false;  // head: logits of every position (else only the last one)
  // LLaVA-NeXT prefill: each image's [height, width] (transformers' image_sizes), in the order of its crops in the
  // pixels; the text_embed stage lays the crops' features out by them (pack_anyres_features).
  std::vector<std::array<int, 2>> image_sizes;
};

class Stage {
 public:
  // Checks and loads the tensors of nodes [first, last] (and only those).
  static Expected<std::unique_ptr<Stage>> load(const Checkpoint& checkpoint, const models::LayerGraph& graph, int first,
                                               int last, const ExecOptions& options);
  ~Stage();

  // Runs the stage's nodes on `input`; errors for an input of the wrong kind or shape, or bad token ids.
  Expected<Activation> forward(const StepInput& step, const Activation& input);
  // Runs only nodes [from, to] (first() <= from <= to <= last()) on `input`, what node from - 1 produces (the
  // table above; the step's input when from == first()). Chaining pieces that cover [first, last] is the same
  // arithmetic as one call, so a prefill can stop between nodes (a worker serving a decode step first) and go on
  // later: the piece with the stage's first text node starts the request's KV cache, and the cached length
  // advances only with the piece holding its last one (the pieces in between attend at the same positions).
  Expected<Activation> forward(const StepInput& step, const Activation& input, int from, int to);
  // One decode step of each of `steps` (different requests, each with its own cache length) as one forward over the
  // whole stage: embeddings, norms, projections, MLP and head over the stacked tokens, attention per request against
  // its own KV cache and at its own RoPE position. `input` is text_hidden [batch, 1, hidden] (row i: steps[i]), or
  // none when the stage starts at text_embed; the output is text_hidden or logits [batch, 1, ...], row i of
  // steps[i]. Each row's arithmetic is its single step's (the matmuls take all rows at once, so only their
  // rounding may differ). Errors (a prefill among them, a request twice, a wrong shape) leave every cache as it was.
  Expected<Activation> forward_batch(std::span<const StepInput> steps, const Activation& input);
  void drop_request(int64_t request);
  [[nodiscard]] int64_t cached_tokens(int64_t request) const;

  [[nodiscard]] int first() const { return first_; }
  [[nodiscard]] int last() const { return last_; }
  [[nodiscard]] const ExecOptions& options() const { return options_; }
  [[nodiscard]] int64_t weight_bytes() const;
  // Canonical names of the tensors this stage holds.
  [[nodiscard]] std::vector<std::string> tensor_names() const;
  // Activation kind the stage expects in a prefill (the first node decides).
  [[nodiscard]] ActivationKind prefill_input_kind() const;

 private:
  struct KvCache;
  Stage() = default;
  const at::Tensor& w(const std::string& name) const;
  [[nodiscard]] ActivationKind prefill_input_kind(int node) const;
  Status check_input(const StepInput& step, const Activation& input, int from) const;
  KvCache* cache_for(const StepInput& step, int node);
  at::Tensor run_vision_embed(const at::Tensor& pixels) const;
  at::Tensor run_vision_layer(int layer, const at::Tensor& x) const;
  at::Tensor run_projector(const at::Tensor& vision_hidden) const;
  Expected<at::Tensor> run_text_embed(const StepInput& step, const at::Tensor& image_features) const;
  at::Tensor run_decoder_layer(int layer, const at::Tensor& x, KvCache& cache, int64_t past) const;
  // x [batch, T, hidden]: row b of request caches[b] with pasts[b] tokens cached (T == 1 when batch > 1).
  at::Tensor run_decoder_layer(int layer, const at::Tensor& x, std::span<KvCache* const> caches,
                               std::span<const int64_t> pasts) const;
  at::Tensor run_head(const at::Tensor& x, bool all_logits) const;
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight) const;

  models::LayerGraph graph_;
  int first_ = 0;
  int last_ = 0;
  ExecOptions options_;
  std::unordered_map<std::string, at::Tensor> weights_;
  at::Tensor inv_freq_;  // [head_dim / 2] float32 (RoPE)
  int first_text_ = -1;  // the stage's first and last nodes that use the KV cache (text_embed, decoder
  int last_text_ = -1;   // layers); -1: none
  std::map<int64_t, std::unique_ptr<KvCache>> caches_;
};

}  // namespace adaptlink::exec

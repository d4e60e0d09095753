// The layer DAG of a LLaVA model and the work each node does.
//
//   vision_embed -> vision_layer[0..V) -> projector -> text_embed (token embedding + image merge)
//                                                      -> decoder_layer[0..M) -> head (norm + lm_head)
//
// Nodes are stored in topological order (vision first); that order is the "layer index" used by
// plans. Vision nodes and the projector run once per image in the prefill only; text nodes run in
// the prefill (over all prompt and image tokens) and once per decoded token.
//
// Costs are closed forms (see docs in graph.cpp):
//   flops  = linear_flops_per_token * new_tokens + attn_flops_per_pair * query_key_pairs
//   bytes  = weight_read_bytes (read once per pass) + io_bytes_per_token * new_tokens
//            + kv_bytes_per_token * (past_tokens + new_tokens)   (KV read, decoder layers only)
// where query_key_pairs counts the attention scores a pass computes (causal for the decoder,
// bidirectional per crop for CLIP).
#pragma once

#include <boost/graph/adjacency_list.hpp>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "adaptlink/error.hpp"
#include "adaptlink/models/config.hpp"

namespace adaptlink::models {

enum class Dtype { fp32, bf16, fp16, int8, int4 };

Expected<Dtype> parse_dtype(std::string_view name);
std::string_view to_string(Dtype dtype);
double weight_bytes_per_param(Dtype dtype);  // 4, 2, 2, 1, 0.5
double activation_bytes(Dtype dtype);        // 4 for fp32, else 2 (activations and KV cache stay 16-bit)

enum class NodeKind { vision_embed, vision_layer, projector, text_embed, decoder_layer, head };
std::string_view to_string(NodeKind kind);

struct Node {
  std::string name;  // e.g. "vision.layer.3", "decoder.layer.17"
  NodeKind kind = NodeKind::decoder_layer;
  int layer = -1;  // index within its kind for vision_layer / decoder_layer, else -1
  long long params = 0;
  double weight_bytes = 0;  // params * weight_bytes_per_param (memory footprint)
  // Weight bytes one pass reads: weight_bytes, except the token embedding, whose lookup reads only the
  // rows of the tokens it embeds (counted in io_bytes_per_token instead), so here 0 plus its image newline.
  double weight_read_bytes = 0;

  // Per-token cost coefficients (see the file comment).
  double linear_flops_per_token = 0;  // 2 * matmul params (elementwise work is ignored)
  double attn_flops_per_pair = 0;     // 4 * attention width for attention layers, else 0
  double io_bytes_per_token = 0;      // activations read + written per token
  double kv_bytes_per_token = 0;      // KV cache kept per token (decoder layers), 0 elsewhere
  double out_bytes_per_token = 0;     // output activation per token (what crosses a cut after this node)

  [[nodiscard]] bool is_vision() const {
    return kind == NodeKind::vision_embed || kind == NodeKind::vision_layer || kind == NodeKind::projector;
  }
};

struct Cost {
  double flops = 0;
  double bytes = 0;
  Cost& operator+=(const Cost& o) {
    flops += o.flops;
    bytes += o.bytes;
    return *this;
  }
};

// What one request asks of the model.
struct RequestShape {
  int images = 1;
  int prompt_tokens = 64;  // text tokens of the prompt (the image tokens come on top)
  int output_tokens = 128;
  // Each image's size in pixels (0 x 0: the model's default_image_size()): LLaVA-NeXT's crops and image tokens follow
  // it (LlavaConfig::anyres_layout); LLaVA-1.5 resizes every image to one crop.
  int image_width = 0;
  int image_height = 0;
};

class LayerGraph {
 public:
  using Dag = boost::adjacency_list<boost::vecS, boost::vecS, boost::bidirectionalS>;

  static LayerGraph build(const LlavaConfig& config, Dtype dtype);

  [[nodiscard]] const LlavaConfig& config() const { return config_; }
  [[nodiscard]] Dtype dtype() const { return dtype_; }
  [[nodiscard]] const std::vector<Node>& nodes() const { return nodes_; }
  [[nodiscard]] const Node& node(int i) const { return nodes_.at(static_cast<size_t>(i)); }
  [[nodiscard]] int size() const { return static_cast<int>(nodes_.size()); }
  [[nodiscard]] const Dag& dag() const { return dag_; }

  [[nodiscard]] int text_embed_index() const { return text_embed_; }
  [[nodiscard]] int first_decoder_index() const { return text_embed_ + 1; }
  [[nodiscard]] int num_decoder_layers() const { return config_.text.num_hidden_layers; }
  [[nodiscard]] int head_index() const { return size() - 1; }

  // Tokens the text tower sees in the prefill: prompt + images * image tokens.
  [[nodiscard]] int prefill_tokens(const RequestShape& shape) const;
  // Context length (tokens in the KV cache) when the request finishes.
  [[nodiscard]] int max_context(const RequestShape& shape) const { return prefill_tokens(shape) + shape.output_tokens; }

  // Work of node i in the prefill of one request (vision nodes: all crops of all images).
  [[nodiscard]] Cost prefill_cost(int i, const RequestShape& shape) const;
  // Work of node i for one decode step with `past_tokens` already in the KV cache (vision: zero).
  [[nodiscard]] Cost decode_cost(int i, int past_tokens) const;
  // Bytes crossing a cut placed after node i: in the prefill, and per decode step (0 for vision).
  [[nodiscard]] double prefill_out_bytes(int i, const RequestShape& shape) const;
  [[nodiscard]] double decode_out_bytes(int i) const;

  // Sum of params over the graph's nodes, and the checkpoint total (adds unused vision layers).
  [[nodiscard]] long long graph_params() const;
  [[nodiscard]] long long total_params() const { return count_parameters(config_); }

 private:
  LlavaConfig config_;
  Dtype dtype_ = Dtype::fp16;
  std::vector<Node> nodes_;
  Dag dag_;
  int text_embed_ = 0;
};

}  // namespace adaptlink::models

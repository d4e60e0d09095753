// The layer DAG of a LLaVA model and its closed-form costs.
//
// Notation: Hv / Iv vision hidden / MLP size, P = CLIP positions per crop (patches + CLS = 577),
// N = patches per crop (576), F = features per crop after the select strategy, C = crops per image,
// Ht / It text hidden / MLP size, nh / nkv / d attention heads / KV heads / head dim, V vocab,
// a = activation bytes (4 for fp32, else 2), w = weight bytes per parameter.
//
// Per-node coefficients (flops count a multiply-add as 2; elementwise work such as norms, activations
// and residual adds is ignored):
//   vision_embed   linear = 2·(3·p²·Hv)·N/P per position (the patch conv runs on N of the P positions)
//                  io = (3·p²·N/P + Hv)·a (pixels read, embedding written), out = Hv·a
//   vision_layer   linear = 2·(4·Hv² + 2·Hv·Iv), attn = 4·Hv per query-key pair (QKᵀ and AV, 2·d each
//                  per head), io = 2·Hv·a, out = Hv·a
//   projector      linear = 2·(Hv·Ht + Ht²) per selected feature, io = (Hv + Ht)·a, out = Ht·a
//   text_embed     linear = 0 (a lookup), io = Ht·w (the embedding row read) + Ht·a (written), out = Ht·a;
//                  weight_read_bytes holds only the image newline (NeXT): a pass reads just its rows
//   decoder_layer  linear = 2·(Ht·nh·d + 2·Ht·nkv·d + nh·d·Ht + 3·Ht·It), attn = 4·nh·d,
//                  io = 2·Ht·a, kv = 2·nkv·d·a, out = Ht·a
//   head           linear = 2·V·Ht, io = (Ht + V)·a (hidden read, logits written), out = 4 (a token id)
//
// Work of one pass:  flops = linear·tokens + attn·pairs,
//                    bytes = weight_read_bytes + io·tokens + kv·(past + tokens)
//   prefill, vision nodes:  tokens = images·C·P, pairs = images·C·P² (bidirectional per crop); nothing
//                           at all when the request has no image
//   prefill, projector:     tokens = images·C·F
//   prefill, text nodes:    tokens = T = prompt + images·image_tokens_for(image size), pairs = T(T+1)/2
//                           (causal; with a sliding window W: Σ_{i=1..T} min(i, W)), past = 0
//   prefill, head:          tokens = 1 (generate() keeps only the last position's logits)
//   decode step:            text nodes 1 token with past + 1 pairs (min(past + 1, W) with a window);
//                           vision nodes and the projector do nothing
// Bytes crossing a cut after node i:
//   prefill: vision_embed / vision_layer images·C·P·Hv·a; projector images·C·F·Ht·a;
//            text_embed / decoder T·Ht·a; head 4
//   decode:  text_embed / decoder Ht·a; head 4; vision nodes 0
#include "adaptlink/models/graph.hpp"

#include <algorithm>
#include <cctype>
#include <string>

namespace adaptlink::models {

// ---- dtypes ------------------------------------------------------------------------------------

Expected<Dtype> parse_dtype(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower == "fp32" || lower == "float32") return Dtype::fp32;
  if (lower == "bf16" || lower == "bfloat16") return Dtype::bf16;
  if (lower == "fp16" || lower == "float16") return Dtype::fp16;
  if (lower == "int8") return Dtype::int8;
  if (lower == "int4") return Dtype::int4;
  return make_error("unknown dtype '{}' (expected fp32, bf16, fp16, int8 or int4)", name);
}

std::string_view to_string(Dtype dtype) {
  switch (dtype) {
    case Dtype::fp32:
      return "fp32";
    case Dtype::bf16:
      return "bf16";
    case Dtype::fp16:
      return "fp16";
    case Dtype::int8:
      return "int8";
    case Dtype::int4:
      return "int4";
  }
  return "?";
}

double weight_bytes_per_param(Dtype dtype) {
  switch (dtype) {
    case Dtype::fp32:
      return 4;
    case Dtype::bf16:
    case Dtype::fp16:
      return 2;
    case Dtype::int8:
      return 1;
    case Dtype::int4:
      return 0.5;
  }
  return 2;
}

double activation_bytes(Dtype dtype) { return dtype == Dtype::fp32 ? 4 : 2; }

std::string_view to_string(NodeKind kind) {
  switch (kind) {
    case NodeKind::vision_embed:
      return "vision_embed";
    case NodeKind::vision_layer:
      return "vision_layer";
    case NodeKind::projector:
      return "projector";
    case NodeKind::text_embed:
      return "text_embed";
    case NodeKind::decoder_layer:
      return "decoder_layer";
    case NodeKind::head:
      return "head";
  }
  return "?";
}

// ---- building ----------------------------------------------------------------------------------

namespace {

Node make_node(std::string name, NodeKind kind, int layer, long long params, double bytes_per_param) {
  Node node;
  node.name = std::move(name);
  node.kind = kind;
  node.layer = layer;
  node.params = params;
  node.weight_bytes = static_cast<double>(params) * bytes_per_param;
  node.weight_read_bytes = node.weight_bytes;
  return node;
}

// Query-key pairs of causal attention over `tokens` new tokens after `past` cached ones, limited to a
// sliding window of `window` keys when window > 0.
double causal_pairs(double past, double tokens, int window) {
  // Σ_{i=past+1..past+tokens} i, or with a window Σ min(i, W).
  auto prefix = [window](double n) {  // Σ_{i=1..n} min(i, W)
    if (window <= 0 || n <= window) return n * (n + 1) / 2;
    return static_cast<double>(window) * (window + 1) / 2 + (n - window) * window;
  };
  return prefix(past + tokens) - prefix(past);
}

}  // namespace

LayerGraph LayerGraph::build(const LlavaConfig& config, Dtype dtype) {
  LayerGraph graph;
  graph.config_ = config;
  graph.dtype_ = dtype;
  const double w = weight_bytes_per_param(dtype);
  const double a = activation_bytes(dtype);
  const VisionConfig& v = config.vision;
  const TextConfig& t = config.text;
  const long long hv = v.hidden_size;
  const long long iv = v.intermediate_size;
  const long long ht = t.hidden_size;
  const long long it = t.intermediate_size;
  const long long vocab = t.vocab_size;
  const double patches_per_position = static_cast<double>(v.num_patches()) / v.num_positions();
  std::vector<Node>& nodes = graph.nodes_;

  // vision_embed: patch conv [3·p², Hv] (no bias), class embedding, position embedding, pre_layrnorm.
  {
    const long long conv = static_cast<long long>(v.num_channels) * v.patch_size * v.patch_size * hv;
    Node node = make_node("vision.embed", NodeKind::vision_embed, -1,
                          conv + hv + static_cast<long long>(v.num_positions()) * hv + 2 * hv, w);
    node.linear_flops_per_token = 2.0 * static_cast<double>(conv) * patches_per_position;
    node.io_bytes_per_token =
        (static_cast<double>(v.num_channels) * v.patch_size * v.patch_size * patches_per_position + hv) * a;
    node.out_bytes_per_token = hv * a;
    nodes.push_back(std::move(node));
  }

  // vision_layer: CLIP encoder layer (q, k, v, out with bias; fc1, fc2 with bias; two LayerNorms).
  const long long vision_layer_params = 4 * (hv * hv + hv) + (hv * iv + iv) + (iv * hv + hv) + 4 * hv;
  for (int i = 0; i < config.vision_layers_used(); ++i) {
    Node node = make_node(fmt::format("vision.layer.{}", i), NodeKind::vision_layer, i, vision_layer_params, w);
    node.linear_flops_per_token = 2.0 * static_cast<double>(4 * hv * hv + 2 * hv * iv);
    node.attn_flops_per_pair = 4.0 * static_cast<double>(hv);  // heads · head_dim = Hv
    node.io_bytes_per_token = 2.0 * hv * a;
    node.out_bytes_per_token = hv * a;
    nodes.push_back(std::move(node));
  }

  // projector: linear_1 [Hv -> Ht], GELU, linear_2 [Ht -> Ht].
  {
    const long long bias = config.multimodal_projector_bias ? 2 * ht : 0;
    Node node = make_node("projector", NodeKind::projector, -1, hv * ht + ht * ht + bias, w);
    node.linear_flops_per_token = 2.0 * static_cast<double>(hv * ht + ht * ht);
    node.io_bytes_per_token = static_cast<double>(hv + ht) * a;
    node.out_bytes_per_token = ht * a;
    nodes.push_back(std::move(node));
  }

  // text_embed: token embedding [V, Ht] + merge of the image features (+ NeXT's image_newline [Ht]).
  {
    const long long newline = config.model_type == "llava_next" ? ht : 0;
    Node node = make_node("text.embed", NodeKind::text_embed, -1, vocab * ht + newline, w);
    node.weight_read_bytes = static_cast<double>(newline) * w;
    node.io_bytes_per_token = ht * w + ht * a;
    node.out_bytes_per_token = ht * a;
    graph.text_embed_ = static_cast<int>(nodes.size());
    nodes.push_back(std::move(node));
  }

  // decoder_layer: RMSNorm, q [Ht, nh·d], k/v [Ht, nkv·d], o [nh·d, Ht], RMSNorm, gate/up [Ht, It], down.
  {
    const long long q_width = static_cast<long long>(t.num_attention_heads) * t.head_dim;
    const long long kv_width = static_cast<long long>(t.num_key_value_heads) * t.head_dim;
    const long long matmul = ht * q_width + 2 * ht * kv_width + q_width * ht + 3 * ht * it;
    long long params = matmul + 2 * ht;
    if (t.attention_bias) params += q_width + 2 * kv_width + ht;
    if (t.mlp_bias) params += 2 * it + ht;
    for (int i = 0; i < t.num_hidden_layers; ++i) {
      Node node = make_node(fmt::format("decoder.layer.{}", i), NodeKind::decoder_layer, i, params, w);
      node.linear_flops_per_token = 2.0 * static_cast<double>(matmul);
      node.attn_flops_per_pair = 4.0 * static_cast<double>(q_width);
      node.io_bytes_per_token = 2.0 * ht * a;
      node.kv_bytes_per_token = 2.0 * static_cast<double>(kv_width) * a;
      node.out_bytes_per_token = ht * a;
      nodes.push_back(std::move(node));
    }
  }

  // head: final RMSNorm + lm_head [Ht, V]. With tied embeddings the lm_head weights are counted here too:
  // a stage that holds the head must hold them even though the checkpoint stores them once.
  {
    Node node = make_node("head", NodeKind::head, -1, ht + vocab * ht, w);
    node.linear_flops_per_token = 2.0 * static_cast<double>(vocab * ht);
    node.io_bytes_per_token = static_cast<double>(ht + vocab) * a;
    node.out_bytes_per_token = 4;  // the sampled token id (int32)
    nodes.push_back(std::move(node));
  }

  // The DAG: one vertex per node, a chain in stored order.
  graph.dag_ = Dag(nodes.size());
  for (size_t i = 0; i + 1 < nodes.size(); ++i) boost::add_edge(i, i + 1, graph.dag_);
  return graph;
}

// ---- costs -------------------------------------------------------------------------------------

int LayerGraph::prefill_tokens(const RequestShape& shape) const {
  return shape.prompt_tokens + shape.images * config_.image_tokens_for(shape.image_width, shape.image_height);
}

Cost LayerGraph::prefill_cost(int i, const RequestShape& shape) const {
  const Node& n = node(i);
  double tokens = 0;
  double pairs = 0;
  double kv_tokens = 0;
  const double crops =
      static_cast<double>(shape.images) * config_.vision_crops_for(shape.image_width, shape.image_height);
  switch (n.kind) {
    case NodeKind::vision_embed:
    case NodeKind::vision_layer: {
      const double positions = config_.vision.num_positions();
      tokens = crops * positions;
      pairs = n.kind == NodeKind::vision_layer ? crops * positions * positions : 0;
      break;
    }
    case NodeKind::projector:
      tokens = crops * config_.vision_features_per_crop();
      break;
    case NodeKind::text_embed:
      tokens = prefill_tokens(shape);
      break;
    case NodeKind::decoder_layer:
      tokens = prefill_tokens(shape);
      pairs = causal_pairs(0, tokens, config_.text.sliding_window);
      kv_tokens = tokens;  // the prefill writes the KV of every token (past = 0)
      break;
    case NodeKind::head:
      tokens = 1;
      break;
  }
  if (tokens <= 0) return {};  // e.g. vision nodes of a text-only request: no pass, no weight reads
  return Cost{n.linear_flops_per_token * tokens + n.attn_flops_per_pair * pairs,
              n.weight_read_bytes + n.io_bytes_per_token * tokens + n.kv_bytes_per_token * kv_tokens};
}

Cost LayerGraph::decode_cost(int i, int past_tokens) const {
  const Node& n = node(i);
  if (n.is_vision()) return {};
  double pairs = 0;
  double kv_tokens = 0;
  if (n.kind == NodeKind::decoder_layer) {
    pairs = causal_pairs(past_tokens, 1, config_.text.sliding_window);
    kv_tokens = pairs;  // KV entries read (the window's worth with a sliding window), incl. the new one
  }
  return Cost{n.linear_flops_per_token + n.attn_flops_per_pair * pairs,
              n.weight_read_bytes + n.io_bytes_per_token + n.kv_bytes_per_token * kv_tokens};
}

double LayerGraph::prefill_out_bytes(int i, const RequestShape& shape) const {
  const Node& n = node(i);
  const double crops =
      static_cast<double>(shape.images) * config_.vision_crops_for(shape.image_width, shape.image_height);
  switch (n.kind) {
    case NodeKind::vision_embed:
    case NodeKind::vision_layer:
      return crops * config_.vision.num_positions() * n.out_bytes_per_token;
    case NodeKind::projector:
      return crops * config_.vision_features_per_crop() * n.out_bytes_per_token;
    case NodeKind::text_embed:
    case NodeKind::decoder_layer:
      return prefill_tokens(shape) * n.out_bytes_per_token;
    case NodeKind::head:
      return n.out_bytes_per_token;
  }
  return 0;
}

double LayerGraph::decode_out_bytes(int i) const {
  const Node& n = node(i);
  return n.is_vision() ? 0 : n.out_bytes_per_token;
}

long long LayerGraph::graph_params() const {
  long long total = 0;
  for (const Node& n : nodes_) total += n.params;
  return total;
}

}  // namespace adaptlink::models

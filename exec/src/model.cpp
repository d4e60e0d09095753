#include "adaptlink/exec/model.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/Context.h>

#include <cmath>

#include "adaptlink/exec/tensor_io.hpp"

namespace adaptlink::exec {

using models::NodeKind;

bool cuda_available() { return at::hasCUDA(); }

Expected<ExecOptions> parse_exec_options(std::string_view dtype, std::string_view device) {
  ExecOptions o;
  if (dtype == "fp32" || dtype == "float32") {
    o.dtype = at::kFloat;
  } else if (dtype == "bf16" || dtype == "bfloat16") {
    o.dtype = at::kBFloat16;
  } else if (dtype == "fp16" || dtype == "float16") {
    o.dtype = at::kHalf;
  } else {
    return make_error("unknown dtype '{}' (expected fp32, bf16 or fp16)", dtype);
  }
  if (device == "cpu") {
    o.device = c10::Device(c10::DeviceType::CPU);
  } else if (device.substr(0, 4) == "cuda") {
    if (!at::hasCUDA()) return make_error("--device {}: this libtorch has no CUDA support (or no GPU is visible)", device);
    try {
      o.device = c10::Device(std::string(device));
    } catch (const std::exception&) {
      return make_error("bad device '{}' (expected cpu, cuda or cuda:N)", device);
    }
  } else {
    return make_error("unknown device '{}' (expected cpu or cuda)", device);
  }
  if (o.dtype == at::kHalf && o.device.is_cpu()) return make_error("fp16 runs on cuda only (use fp32 or bf16 on cpu)");
  return o;
}

std::string_view to_string(ActivationKind kind) {
  switch (kind) {
    case ActivationKind::none:
      return "none";
    case ActivationKind::pixels:
      return "pixels";
    case ActivationKind::vision_hidden:
      return "vision_hidden";
    case ActivationKind::image_features:
      return "image_features";
    case ActivationKind::text_hidden:
      return "text_hidden";
    case ActivationKind::logits:
      return "logits";
  }
  return "?";
}

// Per-request, per-decoder-layer key/value cache with amortised growth.
struct Stage::KvCache {
  struct Layer {
    at::Tensor k;  // [1, kv_heads, capacity, head_dim]
    at::Tensor v;
  };
  std::map<int, Layer> layers;
  int64_t length = 0;  // tokens cached (same for every layer of the stage)

  // Appends [1, kvh, T, hd] keys/values at `past` and returns views over [0, past + T).
  std::pair<at::Tensor, at::Tensor> append(int layer, const at::Tensor& k, const at::Tensor& v, int64_t past) {
    auto& l = layers[layer];
    const int64_t needed = past + k.size(2);
    if (!l.k.defined() || l.k.size(2) < needed) {
      int64_t capacity = std::max<int64_t>(needed, l.k.defined() ? l.k.size(2) * 2 : 64);
      auto grow = [&](const at::Tensor& old, const at::Tensor& like) {
        at::Tensor t = at::empty({like.size(0), like.size(1), capacity, like.size(3)}, like.options());
        if (old.defined() && past > 0) t.narrow(2, 0, past).copy_(old.narrow(2, 0, past));
        return t;
      };
      l.k = grow(l.k, k);
      l.v = grow(l.v, v);
    }
    l.k.narrow(2, past, k.size(2)).copy_(k);
    l.v.narrow(2, past, v.size(2)).copy_(v);
    return {l.k.narrow(2, 0, needed), l.v.narrow(2, 0, needed)};
  }
};

Stage::~Stage() = default;

Expected<std::unique_ptr<Stage>> Stage::load(const Checkpoint& checkpoint, const models::LayerGraph& graph, int first,
                                             int last, const ExecOptions& options) {
  auto ok = checkpoint.check_nodes(graph, first, last);
  if (!ok) return ok.error();
  std::unique_ptr<Stage> stage(new Stage());
  stage->graph_ = graph;
  stage->first_ = first;
  stage->last_ = last;
  stage->options_ = options;
  c10::AutoGradMode no_grad(false);
  for (int n = first; n <= last; ++n) {
    const auto kind = graph.node(n).kind;
    if (kind == NodeKind::text_embed || kind == NodeKind::decoder_layer) {
      if (stage->first_text_ < 0) stage->first_text_ = n;
      stage->last_text_ = n;
    }
    for (const auto& req : node_tensors(graph, n, checkpoint.has_lm_head())) {
      if (stage->weights_.count(req.name)) continue;
      const auto* t = checkpoint.find(req.name);
      stage->weights_[req.name] = load_tensor(*t->file, *t->info, options.dtype, options.device);
    }
  }
  const auto& text = graph.config().text;
  // transformers: inv_freq = 1 / theta ** (arange(0, dim, 2).float() / dim), in float32.
  at::Tensor exponents = at::arange(0, text.head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
                         static_cast<double>(text.head_dim);
  stage->inv_freq_ = (1.0 / at::pow(text.rope_theta, exponents)).to(options.device);
  return stage;
}

const at::Tensor& Stage::w(const std::string& name) const {
  auto it = weights_.find(name);
  ADAPTLINK_CHECK(it != weights_.end(), "stage [{}, {}] has no tensor '{}'", first_, last_, name);
  return it->second;
}

int64_t Stage::weight_bytes() const {
  int64_t total = 0;
  for (const auto& [_, t] : weights_) total += static_cast<int64_t>(t.nbytes());
  return total;
}

std::vector<std::string> Stage::tensor_names() const {
  std::vector<std::string> names;
  for (const auto& [name, _] : weights_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

ActivationKind Stage::prefill_input_kind() const { return prefill_input_kind(first_); }

ActivationKind Stage::prefill_input_kind(int node) const {
  switch (graph_.node(node).kind) {
    case NodeKind::vision_embed:
      return ActivationKind::pixels;
    case NodeKind::vision_layer:
    case NodeKind::projector:
      return ActivationKind::vision_hidden;
    case NodeKind::text_embed:
      return ActivationKind::image_features;
    case NodeKind::decoder_layer:
    case NodeKind::head:
      return ActivationKind::text_hidden;
  }
  return ActivationKind::none;
}

int64_t Stage::cached_tokens(int64_t request) const {
  auto it = caches_.find(request);
  return it == caches_.end() ? 0 : it->second->length;
}

void Stage::drop_request(int64_t request) { caches_.erase(request); }

namespace {
// x [..., in] times w [out, in]^T (+ bias). One row of fp32 on the CPU goes through BLAS's matrix-vector product:
// OpenBLAS's gemm with one row is about 3x slower than its gemv (bench/results/blas_choice.json), and a decode step
// of one request is one row.
at::Tensor affine(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias = at::Tensor()) {
  const int64_t in = x.size(-1);
  if (x.numel() == in && x.is_cpu() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = w.size(0);
    at::Tensor y = at::mv(w, x.reshape({in}));
    if (bias.defined()) y = y + bias;
    return y.view(shape);
  }
  return bias.defined() ? at::linear(x, w, bias) : at::linear(x, w);
}
}  // namespace

// ---- vision ------------------------------------------------------------------------------------

Expected<at::Tensor> pack_anyres_features(const models::LlavaConfig& config, const at::Tensor& features, int width,
                                          int height, const at::Tensor& newline) {
  const auto l = config.anyres_layout(width, height);
  const int64_t side = config.vision.patches_per_side();
  if (features.dim() != 3 || features.size(0) != l.crops() || features.size(1) != side * side) {
    return make_error(
        "image features have shape {}, expected [{}, {}, hidden] for a {}x{} image ({} crops of {} "
        "features)",
        shape_string(features.sizes().vec()), l.crops(), side * side, width, height, l.crops(), side * side);
  }
  const int64_t hidden = features.size(2);
  if (newline.dim() != 1 || newline.size(0) != hidden) {
    return make_error("image_newline has shape {}, expected [{}]", shape_string(newline.sizes().vec()), hidden);
  }
  // [tiles, side, side, hidden] -> [hidden, tile_rows * side, tile_cols * side], as transformers permutes it.
  at::Tensor map = features.narrow(0, 1, l.crops() - 1)
                       .reshape({l.tile_rows, l.tile_cols, side, side, hidden})
                       .permute({4, 0, 2, 1, 3})
                       .reshape({hidden, l.tile_rows * side, l.tile_cols * side});
  // unpad_image: centred, as many rows / columns off each side.
  const int64_t top = (l.tile_rows * side - l.feature_rows) / 2;
  const int64_t left = (l.tile_cols * side - l.feature_cols) / 2;
  map = map.narrow(1, top, l.feature_rows).narrow(2, left, l.feature_cols);
  map = at::cat({map, newline.to(map.scalar_type()).view({hidden, 1, 1}).expand({hidden, l.feature_rows, 1})}, 2);
  return at::cat({features[0], map.reshape({hidden, -1}).transpose(0, 1)}, 0);
}

at::Tensor Stage::run_vision_embed(const at::Tensor& pixels) const {
  const auto& v = graph_.config().vision;
  const int64_t crops = pixels.size(0);
  const int64_t p = v.patch_size;
  const int64_t g = v.image_size / v.patch_size;
  // The patch convolution (stride = kernel, no bias) as a matmul over unfolded patches:
  // [crops, 3, g*p, g*p] -> [crops, g, g, 3, p, p] -> [crops, g*g, 3*p*p].
  at::Tensor x = pixels.to(options_.dtype)
                     .narrow(2, 0, g * p)
                     .narrow(3, 0, g * p)
                     .reshape({crops, v.num_channels, g, p, g, p})
                     .permute({0, 2, 4, 1, 3, 5})
                     .reshape({crops, g * g, v.num_channels * p * p});
  const at::Tensor& conv = w("vision.embeddings.patch_embedding.weight");  // [hv, 3, p, p]
  at::Tensor patches = at::matmul(x, conv.reshape({conv.size(0), -1}).t());  // [crops, N, hv]
  at::Tensor cls = w("vision.embeddings.class_embedding").reshape({1, 1, -1}).expand({crops, 1, patches.size(2)});
  at::Tensor h = at::cat({cls, patches}, 1) + w("vision.embeddings.position_embedding.weight").unsqueeze(0);
  return at::layer_norm(h, {h.size(2)}, w("vision.pre_layrnorm.weight"), w("vision.pre_layrnorm.bias"),
                        v.layer_norm_eps);
}

at::Tensor Stage::run_vision_layer(int layer, const at::Tensor& x) const {
  const auto& v = graph_.config().vision;
  const std::string p = fmt::format("vision.encoder.layers.{}.", layer);
  const int64_t crops = x.size(0);
  const int64_t n = x.size(1);
  const int64_t heads = v.num_attention_heads;
  const int64_t hd = v.hidden_size / heads;
  const double eps = v.layer_norm_eps;

  at::Tensor h = at::layer_norm(x, {x.size(2)}, w(p + "layer_norm1.weight"), w(p + "layer_norm1.bias"), eps);
  auto proj = [&](const char* name) {
    return affine(h, w(p + "self_attn." + name + ".weight"), w(p + "self_attn." + name + ".bias"))
        .view({crops, n, heads, hd})
        .transpose(1, 2);  // [crops, heads, n, hd]
  };
  at::Tensor q = proj("q_proj");
  at::Tensor k = proj("k_proj");
  at::Tensor vv = proj("v_proj");
  at::Tensor scores = at::matmul(q, k.transpose(2, 3)) * (1.0 / std::sqrt(static_cast<double>(hd)));
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  at::Tensor attn = at::matmul(probs, vv).transpose(1, 2).reshape({crops, n, heads * hd});
  attn = affine(attn, w(p + "self_attn.out_proj.weight"), w(p + "self_attn.out_proj.bias"));
  at::Tensor r = x + attn;

  h = at::layer_norm(r, {r.size(2)}, w(p + "layer_norm2.weight"), w(p + "layer_norm2.bias"), eps);
  h = affine(h, w(p + "mlp.fc1.weight"), w(p + "mlp.fc1.bias"));
  if (v.hidden_act == "quick_gelu") {
    h = h * at::sigmoid(h * 1.702);
  } else {
    h = at::gelu(h);
  }
  h = affine(h, w(p + "mlp.fc2.weight"), w(p + "mlp.fc2.bias"));
  return r + h;
}

at::Tensor Stage::run_projector(const at::Tensor& vision_hidden) const {
  const auto& config = graph_.config();
  at::Tensor x = vision_hidden;
  if (config.vision_feature_select_strategy == "default") x = x.narrow(1, 1, x.size(1) - 1);  // drop CLS
  x = x.reshape({-1, x.size(2)});  // [crops * features, hv]
  const bool bias = config.multimodal_projector_bias;
  at::Tensor h = bias ? affine(x, w("projector.linear_1.weight"), w("projector.linear_1.bias"))
                      : affine(x, w("projector.linear_1.weight"));
  h = at::gelu(h);
  return bias ? affine(h, w("projector.linear_2.weight"), w("projector.linear_2.bias"))
              : affine(h, w("projector.linear_2.weight"));
}

// ---- text --------------------------------------------------------------------------------------

Expected<at::Tensor> Stage::run_text_embed(const StepInput& step, const at::Tensor& image_features) const {
  const auto& config = graph_.config();
  at::Tensor ids = step.input_ids.to(at::kLong).to(options_.device);
  if (ids.dim() != 1 || ids.size(0) == 0) return make_error("input_ids must be a non-empty list of token ids");
  const int64_t vocab = config.text.vocab_size;
  if (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= vocab) {
    return make_error("token ids must lie in [0, {}) (the vocabulary), got {}..{}", vocab, ids.min().item<int64_t>(),
                      ids.max().item<int64_t>());
  }
  at::Tensor h = at::embedding(w("text.embed_tokens.weight"), ids);  // [T, ht]
  at::Tensor features = image_features;
  if (features.defined() && config.model_type == "llava_next") {
    // The projector's output, crop by crop, laid out per image as transformers' pack_image_features does.
    if (step.image_sizes.empty()) {
      return make_error("a LLaVA-NeXT prefill with pixels needs each image's size (image_sizes, [height, width])");
    }
    const int64_t per_crop = static_cast<int64_t>(config.vision.patches_per_side()) * config.vision.patches_per_side();
    const at::Tensor crops = features.reshape({-1, per_crop, features.size(-1)});
    std::vector<at::Tensor> images;
    int64_t next = 0;
    for (const auto& [height, width] : step.image_sizes) {
      const int64_t n = config.vision_crops_for(width, height);
      if (next + n > crops.size(0)) break;
      auto packed = pack_anyres_features(config, crops.narrow(0, next, n), width, height, w("image_newline"));
      if (!packed) return packed.error();
      images.push_back(*packed);
      next += n;
    }
    if (images.size() != step.image_sizes.size() || next != crops.size(0)) {
      int64_t want = 0;
      for (const auto& [height, width] : step.image_sizes) want += config.vision_crops_for(width, height);
      return make_error("the images' sizes need {} crops, the pixels hold {}", want, crops.size(0));
    }
    features = at::cat(images, 0);
  }
  if (features.defined()) {
    at::Tensor mask = ids.eq(config.image_token_index);
    const int64_t slots = mask.sum().item<int64_t>();
    if (slots != features.size(0)) {
      return make_error("the prompt has {} image tokens (id {}) but the image gives {} features", slots,
                        config.image_token_index, features.size(0));
    }
    // transformers: inputs_embeds.masked_scatter(image_mask, image_features), in order.
    h = h.masked_scatter(mask.unsqueeze(1).expand_as(h), features.to(h.scalar_type()));
  }
  return h.unsqueeze(0);  // [1, T, ht]
}

at::Tensor Stage::rms_norm(const at::Tensor& x, const at::Tensor& weight) const {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor variance = xf.pow(2).mean(-1, true);
  xf = xf * at::rsqrt(variance + graph_.config().text.rms_norm_eps);
  return weight * xf.to(x.scalar_type());
}

namespace {
at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}
}  // namespace

at::Tensor Stage::run_decoder_layer(int layer, const at::Tensor& x, KvCache& cache, int64_t past) const {
  KvCache* one[] = {&cache};
  const int64_t pasts[] = {past};
  return run_decoder_layer(layer, x, one, pasts);
}

at::Tensor Stage::run_decoder_layer(int layer, const at::Tensor& x, std::span<KvCache* const> caches,
                                    std::span<const int64_t> pasts) const {
  const auto& t = graph_.config().text;
  const std::string p = fmt::format("text.layers.{}.", layer);
  const int64_t B = x.size(0);
  const int64_t T = x.size(1);
  const int64_t nh = t.num_attention_heads;
  const int64_t kvh = t.num_key_value_heads;
  const int64_t hd = t.head_dim;
  const int64_t rep = nh / kvh;
  auto dense = [&](const at::Tensor& in, const std::string& name, bool bias) {
    return bias ? affine(in, w(p + name + ".weight"), w(p + name + ".bias")) : affine(in, w(p + name + ".weight"));
  };

  at::Tensor h = rms_norm(x, w(p + "input_layernorm.weight"));
  at::Tensor q = dense(h, "self_attn.q_proj", t.attention_bias).view({B, T, nh, hd}).transpose(1, 2);
  at::Tensor k = dense(h, "self_attn.k_proj", t.attention_bias).view({B, T, kvh, hd}).transpose(1, 2);
  at::Tensor v = dense(h, "self_attn.v_proj", t.attention_bias).view({B, T, kvh, hd}).transpose(1, 2);

  // RoPE (transformers' rotate_half form), cos/sin computed in float32 then cast: positions past .. past + T - 1 of
  // one request, or each request's own position (batch > 1, one token each).
  const auto fopts = at::TensorOptions().dtype(at::kFloat).device(options_.device);
  at::Tensor pos;
  if (B == 1) {
    pos = at::arange(pasts[0], pasts[0] + T, fopts);
  } else {
    pos = at::tensor(std::vector<int64_t>(pasts.begin(), pasts.end()), at::TensorOptions().dtype(at::kLong))
              .to(fopts);
  }
  at::Tensor freqs = at::outer(pos, inv_freq_);  // [T or B, hd/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos().to(q.scalar_type());
  at::Tensor sin = emb.sin().to(q.scalar_type());
  if (B > 1) {
    cos = cos.view({B, 1, 1, hd});
    sin = sin.view({B, 1, 1, hd});
  }
  q = q * cos + rotate_half(q) * sin;
  k = k * cos + rotate_half(k) * sin;

  // Attention per request, against its own cache.
  std::vector<at::Tensor> rows;
  rows.reserve(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t past = pasts[static_cast<size_t>(b)];
    auto [keys, values] = caches[static_cast<size_t>(b)]->append(layer, k.narrow(0, b, 1), v.narrow(0, b, 1), past);
    const int64_t S = keys.size(2);  // [1, kvh, S, hd]
    // GQA without copying the cache: group the query heads that share a KV head.
    at::Tensor qg = q.narrow(0, b, 1).reshape({1, kvh, rep * T, hd});
    at::Tensor scores = at::matmul(qg, keys.transpose(2, 3)) * (1.0 / std::sqrt(static_cast<double>(hd)));
    // Mistral's sliding window (transformers: key j is seen by query i when i - j < sliding_window).
    const int64_t window = t.sliding_window;
    const bool windowed = window > 0 && past + T > window;
    if (T > 1 || windowed) {
      // Causal: query i (absolute position past + i) sees keys j <= past + i (and j > past + i - window).
      at::Tensor qpos = at::arange(past, past + T, at::TensorOptions().dtype(at::kLong).device(options_.device));
      at::Tensor kpos = at::arange(0, S, at::TensorOptions().dtype(at::kLong).device(options_.device));
      at::Tensor masked = kpos.unsqueeze(0).gt(qpos.unsqueeze(1));  // [T, S]
      if (windowed) masked = masked.logical_or(kpos.unsqueeze(0).le(qpos.unsqueeze(1) - window));
      scores = scores.view({1, kvh, rep, T, S}).masked_fill(masked, -std::numeric_limits<float>::infinity());
      scores = scores.view({1, kvh, rep * T, S});
    }
    at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    rows.push_back(at::matmul(probs, values)  // [1, kvh, rep*T, hd]
                       .view({1, nh, T, hd})
                       .transpose(1, 2)
                       .reshape({1, T, nh * hd}));
  }
  at::Tensor attn = B == 1 ? rows.front() : at::cat(rows, 0);
  at::Tensor r = x + dense(attn, "self_attn.o_proj", t.attention_bias);

  h = rms_norm(r, w(p + "post_attention_layernorm.weight"));
  at::Tensor gate = dense(h, "mlp.gate_proj", t.mlp_bias);
  at::Tensor up = dense(h, "mlp.up_proj", t.mlp_bias);
  return r + dense(at::silu(gate) * up, "mlp.down_proj", t.mlp_bias);
}

at::Tensor Stage::run_head(const at::Tensor& x, bool all_logits) const {
  at::Tensor h = all_logits ? x : x.narrow(1, x.size(1) - 1, 1);
  h = rms_norm(h, w("text.norm.weight"));
  const auto& config = graph_.config();
  const at::Tensor& head = config.tie_word_embeddings ? w("text.embed_tokens.weight") : w("lm_head.weight");
  return affine(h, head).to(at::kFloat);
}

// ---- stage -------------------------------------------------------------------------------------

// The input must be what node `from` consumes.
Status Stage::check_input(const StepInput& step, const Activation& cur, int from) const {
  const auto& text = graph_.config().text;
  const NodeKind from_kind = graph_.node(from).kind;
  const bool from_is_vision = graph_.node(from).is_vision();
  if (step.prefill) {
    const ActivationKind want = prefill_input_kind(from);
    const bool ok = cur.kind == want ||
                    (cur.kind == ActivationKind::none && (from_is_vision || want == ActivationKind::image_features));
    if (!ok) {
      return make_error("stage [{}, {}] expects {} in the prefill, got {}", first_, last_, to_string(want),
                        to_string(cur.kind));
    }
  } else if (!from_is_vision && from_kind != NodeKind::text_embed && cur.kind != ActivationKind::text_hidden) {
    return make_error("stage [{}, {}] expects text_hidden in a decode step, got {}", first_, last_, to_string(cur.kind));
  }
  if (cur.kind == ActivationKind::pixels) {
    const auto& v = graph_.config().vision;
    const auto& s = cur.tensor.sizes();
    if (cur.tensor.dim() != 4 || s[1] != v.num_channels || s[2] != v.image_size || s[3] != v.image_size) {
      return make_error("pixel_values have shape {}, expected [crops, {}, {}, {}]", shape_string(s.vec()),
                        v.num_channels, v.image_size, v.image_size);
    }
    if (s[0] < 1 || s[0] > graph_.config().max_crops()) {
      return make_error("pixel_values hold {} crops: a request fits 1 to {} in the model's context of {}", s[0],
                        graph_.config().max_crops(), text.max_position_embeddings);
    }
  }
  if (cur.kind == ActivationKind::text_hidden &&
      (cur.tensor.dim() != 3 || cur.tensor.size(0) != 1 || cur.tensor.size(2) != text.hidden_size)) {
    return make_error("text hidden state has shape {}, expected [1, tokens, {}]", shape_string(cur.tensor.sizes().vec()),
                      text.hidden_size);
  }
  return Ok{};
}

// The request's KV cache for text node `node`: a prefill starts a new one at the stage's first text node (a later
// piece of the same prefill continues the one its first piece started).
Stage::KvCache* Stage::cache_for(const StepInput& step, int node) {
  auto& slot = caches_[step.request];
  if ((step.prefill && node == first_text_) || !slot) slot = std::make_unique<KvCache>();
  return slot.get();
}

Expected<Activation> Stage::forward(const StepInput& step, const Activation& input) {
  return forward(step, input, first_, last_);
}

Expected<Activation> Stage::forward(const StepInput& step, const Activation& input, int from, int to) {
  if (from < first_ || to > last_ || from > to) {
    return make_error("nodes [{}, {}] are not a part of stage [{}, {}]", from, to, first_, last_);
  }
  c10::AutoGradMode no_grad(false);
  Activation cur = input;
  if (cur.tensor.defined() && cur.tensor.device() != options_.device) cur.tensor = cur.tensor.to(options_.device);
  auto ok = check_input(step, cur, from);
  if (!ok) return ok.error();

  KvCache* cache = nullptr;
  int64_t past = 0;    // tokens cached before this step (the length only advances once the step's last text node ran)
  int64_t tokens = 0;  // new tokens of this step in the text tower
  for (int n = from; n <= to; ++n) {
    const auto& node = graph_.node(n);
    if (node.is_vision()) {
      if (!step.prefill || cur.kind == ActivationKind::none) continue;  // no image / decode: vision nodes idle
      switch (node.kind) {
        case NodeKind::vision_embed:
          cur = {ActivationKind::vision_hidden, run_vision_embed(cur.tensor)};
          break;
        case NodeKind::vision_layer:
          cur = {ActivationKind::vision_hidden, run_vision_layer(node.layer, cur.tensor)};
          break;
        case NodeKind::projector:
          cur = {ActivationKind::image_features, run_projector(cur.tensor)};
          break;
        default:
          break;
      }
      continue;
    }
    if (cache == nullptr && (node.kind == NodeKind::text_embed || node.kind == NodeKind::decoder_layer)) {
      cache = cache_for(step, n);
      past = cache->length;
      // Checked before anything is allocated for them: the step's positions must fit the model's context.
      const int64_t incoming = node.kind == NodeKind::text_embed ? step.input_ids.numel() : cur.tensor.size(1);
      const int64_t context = graph_.config().text.max_position_embeddings;
      if (past + incoming > context) {
        return make_error("the step would take the request to {} positions ({} cached + {} new), past the model's "
                          "context of {} (max_position_embeddings)",
                          past + incoming, past, incoming, context);
      }
    }
    switch (node.kind) {
      case NodeKind::text_embed: {
        at::Tensor features = (step.prefill && cur.kind == ActivationKind::image_features) ? cur.tensor : at::Tensor();
        auto h = run_text_embed(step, features);
        if (!h) return h.error();
        cur = {ActivationKind::text_hidden, *h};
        tokens = cur.tensor.size(1);
        break;
      }
      case NodeKind::decoder_layer:
        tokens = cur.tensor.size(1);
        cur = {ActivationKind::text_hidden, run_decoder_layer(node.layer, cur.tensor, *cache, past)};
        break;
      case NodeKind::head:
        cur = {ActivationKind::logits, run_head(cur.tensor, step.all_logits)};
        break;
      default:
        break;
    }
  }
  if (cache != nullptr && to >= last_text_) cache->length = past + tokens;
  // A decode step through vision nodes only carries nothing.
  if (!step.prefill && graph_.node(to).is_vision()) cur = {ActivationKind::none, at::Tensor()};
  return cur;
}

Expected<Activation> Stage::forward_batch(std::span<const StepInput> steps, const Activation& input) {
  if (steps.empty()) return make_error("an empty batch");
  if (steps.size() == 1) return forward(steps.front(), input);
  c10::AutoGradMode no_grad(false);
  const auto& text = graph_.config().text;
  const auto batch = static_cast<int64_t>(steps.size());
  // Checked before any cache changes: decode steps of distinct requests with their caches, one token each.
  std::vector<KvCache*> caches;
  std::vector<int64_t> pasts, ids;
  for (const auto& step : steps) {
    if (step.prefill) return make_error("a batch runs decode steps only (request {} is a prefill)", step.request);
    for (size_t i = 0; i < caches.size(); ++i) {
      if (steps[i].request == step.request) return make_error("request {} appears twice in one batch", step.request);
    }
    KvCache* cache = nullptr;
    if (first_text_ >= 0) {
      auto it = caches_.find(step.request);
      if (it == caches_.end() || !it->second) {
        return make_error("request {} has no KV cache on stage [{}, {}] (no prefill ran here)", step.request, first_,
                          last_);
      }
      cache = it->second.get();
      if (cache->length + 1 > text.max_position_embeddings) {
        return make_error("request {} would reach {} positions, past the model's context of {}", step.request,
                          cache->length + 1, text.max_position_embeddings);
      }
    }
    caches.push_back(cache);
    pasts.push_back(cache != nullptr ? cache->length : 0);
    if (step.input_ids.numel() != 1) {
      return make_error("a decode step carries one token id, request {} has {}", step.request, step.input_ids.numel());
    }
    ids.push_back(step.input_ids.to(at::kLong).reshape({1}).item<int64_t>());
  }
  int from = first_;
  while (from <= last_ && graph_.node(from).is_vision()) ++from;  // a decode step skips the vision nodes
  if (from > last_) return Activation{};
  Activation cur = input;
  if (cur.tensor.defined() && cur.tensor.device() != options_.device) cur.tensor = cur.tensor.to(options_.device);
  if (graph_.node(from).kind == NodeKind::text_embed) {
    for (int64_t id : ids) {
      if (id < 0 || id >= text.vocab_size) {
        return make_error("token ids must lie in [0, {}) (the vocabulary), got {}", text.vocab_size, id);
      }
    }
    at::Tensor t = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).to(options_.device);
    cur = {ActivationKind::text_hidden, at::embedding(w("text.embed_tokens.weight"), t).unsqueeze(1)};  // [B, 1, H]
    ++from;
  } else if (cur.kind != ActivationKind::text_hidden || cur.tensor.dim() != 3 || cur.tensor.size(0) != batch ||
             cur.tensor.size(1) != 1 || cur.tensor.size(2) != text.hidden_size) {
    return make_error("a batch of {} decode steps expects text_hidden [{}, 1, {}], got {} {}", batch, batch,
                      text.hidden_size, to_string(cur.kind),
                      cur.tensor.defined() ? shape_string(cur.tensor.sizes().vec()) : std::string("(none)"));
  }
  for (int n = from; n <= last_; ++n) {
    const auto& node = graph_.node(n);
    if (node.kind == NodeKind::decoder_layer) {
      cur = {ActivationKind::text_hidden, run_decoder_layer(node.layer, cur.tensor, caches, pasts)};
    } else if (node.kind == NodeKind::head) {
      cur = {ActivationKind::logits, run_head(cur.tensor, false)};
    }
  }
  if (last_text_ >= 0) {
    for (auto* cache : caches) cache->length += 1;
  }
  return cur;
}

}  // namespace adaptlink::exec

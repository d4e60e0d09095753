// Tests of the layer DAG: structure, topological order, and closed-form costs checked against numbers
// computed here independently from the config (not from the node coefficients).
#include <gtest/gtest.h>

#include <boost/graph/topological_sort.hpp>
#include <iterator>
#include <vector>

#include "adaptlink/models/config.hpp"
#include "adaptlink/models/graph.hpp"

namespace adaptlink::models {
namespace {

LlavaConfig preset(std::string_view name) {
  auto config = load_preset(name);
  EXPECT_TRUE(config.has_value()) << (config ? "" : config.error().to_string());
  return config ? *config : LlavaConfig{};
}

LayerGraph graph_of(std::string_view name, Dtype dtype = Dtype::fp16) { return LayerGraph::build(preset(name), dtype); }

constexpr double kKiB = 1024.0;
constexpr double kMiB = 1024.0 * 1024.0;

// ---- dtypes ------------------------------------------------------------------------------------

TEST(Dtype, ParseAndPrint) {
  for (Dtype d : {Dtype::fp32, Dtype::bf16, Dtype::fp16, Dtype::int8, Dtype::int4}) {
    auto parsed = parse_dtype(to_string(d));
    ASSERT_TRUE(parsed.has_value()) << to_string(d);
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(*parse_dtype("float16"), Dtype::fp16);
  EXPECT_EQ(*parse_dtype("bfloat16"), Dtype::bf16);
  EXPECT_EQ(*parse_dtype("float32"), Dtype::fp32);
  EXPECT_EQ(*parse_dtype("FP16"), Dtype::fp16);
  auto bad = parse_dtype("fp8");
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message.find("'fp8'"), std::string::npos);
  EXPECT_NE(bad.error().message.find("int4"), std::string::npos);
}

TEST(Dtype, Sizes) {
  EXPECT_EQ(weight_bytes_per_param(Dtype::fp32), 4);
  EXPECT_EQ(weight_bytes_per_param(Dtype::bf16), 2);
  EXPECT_EQ(weight_bytes_per_param(Dtype::fp16), 2);
  EXPECT_EQ(weight_bytes_per_param(Dtype::int8), 1);
  EXPECT_EQ(weight_bytes_per_param(Dtype::int4), 0.5);
  EXPECT_EQ(activation_bytes(Dtype::fp32), 4);
  for (Dtype d : {Dtype::bf16, Dtype::fp16, Dtype::int8, Dtype::int4}) EXPECT_EQ(activation_bytes(d), 2);
}

// ---- structure ---------------------------------------------------------------------------------

TEST(Graph, NodeLayoutOfLlava15_7b) {
  const LayerGraph g = graph_of("llava-1.5-7b");
  // vision_embed + 23 CLIP layers (feature layer -2) + projector + text_embed + 32 decoders + head.
  ASSERT_EQ(g.size(), 1 + 23 + 1 + 1 + 32 + 1);
  EXPECT_EQ(g.node(0).kind, NodeKind::vision_embed);
  EXPECT_EQ(g.node(0).name, "vision.embed");
  EXPECT_EQ(g.node(1).kind, NodeKind::vision_layer);
  EXPECT_EQ(g.node(1).layer, 0);
  EXPECT_EQ(g.node(23).name, "vision.layer.22");
  EXPECT_EQ(g.node(24).kind, NodeKind::projector);
  EXPECT_EQ(g.text_embed_index(), 25);
  EXPECT_EQ(g.node(25).kind, NodeKind::text_embed);
  EXPECT_EQ(g.first_decoder_index(), 26);
  EXPECT_EQ(g.num_decoder_layers(), 32);
  EXPECT_EQ(g.node(26 + 17).name, "decoder.layer.17");
  EXPECT_EQ(g.node(26 + 17).layer, 17);
  EXPECT_EQ(g.head_index(), g.size() - 1);
  EXPECT_EQ(g.node(g.head_index()).kind, NodeKind::head);
  for (int i = 0; i < g.size(); ++i) {
    EXPECT_EQ(g.node(i).is_vision(), i <= 24) << i;
    EXPECT_DOUBLE_EQ(g.node(i).weight_bytes, 2.0 * static_cast<double>(g.node(i).params)) << i;
  }
  EXPECT_EQ(to_string(NodeKind::decoder_layer), "decoder_layer");
}

TEST(Graph, StoredOrderIsTopological) {
  for (const auto& name : preset_names()) {
    const LayerGraph g = graph_of(name);
    const auto& dag = g.dag();
    ASSERT_EQ(static_cast<int>(boost::num_vertices(dag)), g.size());
    EXPECT_EQ(static_cast<int>(boost::num_edges(dag)), g.size() - 1);
    // Every edge goes forward in the stored order.
    for (auto [it, end] = boost::edges(dag); it != end; ++it) {
      EXPECT_LT(boost::source(*it, dag), boost::target(*it, dag));
    }
    // boost::topological_sort writes vertices in reverse topological order; the chain has one order.
    std::vector<LayerGraph::Dag::vertex_descriptor> reversed;
    boost::topological_sort(dag, std::back_inserter(reversed));
    ASSERT_EQ(static_cast<int>(reversed.size()), g.size());
    for (int i = 0; i < g.size(); ++i) EXPECT_EQ(static_cast<int>(reversed[g.size() - 1 - i]), i);
  }
}

TEST(Graph, ParamsAccountForUnusedVisionWeightsAndTiedHead) {
  for (const auto& name : preset_names()) {
    const LayerGraph g = graph_of(name);
    const auto& v = g.config().vision;
    const long long hv = v.hidden_size;
    const long long vision_layer =
        4 * (hv * hv + hv) + 2 * hv * v.intermediate_size + v.intermediate_size + hv + 4 * hv;
    const long long unused = (v.num_hidden_layers - g.config().vision_layers_used()) * vision_layer;
    const long long post_layernorm = 2 * hv;
    // graph_params + unused CLIP layers + CLIP post_layernorm == checkpoint total (untied).
    EXPECT_EQ(g.graph_params() + unused + post_layernorm, g.total_params()) << name;
    EXPECT_EQ(g.total_params(), count_parameters(g.config())) << name;
  }
  // Tied embeddings: the head still carries the lm_head weights, so they count twice in the graph.
  LlavaConfig tied = preset("llava-1.5-7b");
  tied.tie_word_embeddings = true;
  const LayerGraph g = LayerGraph::build(tied, Dtype::fp16);
  const long long lm_head = 32064LL * 4096;
  const long long unused_and_post = 12'596'224LL + 2 * 1024;
  EXPECT_EQ(g.graph_params() + unused_and_post - lm_head, count_parameters(tied));
  EXPECT_EQ(g.node(g.head_index()).params, 4096 + lm_head);
}

TEST(Graph, LlavaNextImageNewlineLivesInTextEmbed) {
  const LayerGraph next = graph_of("llava-v1.6-vicuna-7b");
  const LayerGraph v15 = graph_of("llava-1.5-7b");
  EXPECT_EQ(next.node(next.text_embed_index()).params, v15.node(v15.text_embed_index()).params + 4096);
}

// ---- per-token sizes from the reference sheet --------------------------------------------------

TEST(Graph, PerTokenSizesOf7bAtFp16) {
  const LayerGraph g = graph_of("llava-1.5-7b");
  const Node& layer = g.node(g.first_decoder_index());
  EXPECT_EQ(layer.kv_bytes_per_token, 16 * kKiB);
  EXPECT_EQ(layer.out_bytes_per_token, 8 * kKiB);
  double kv_total = 0;
  for (const Node& n : g.nodes()) kv_total += n.kv_bytes_per_token;
  EXPECT_EQ(kv_total, 512 * kKiB);
  // A 576-token image prefill moves 4.5 MiB across each 7B stage boundary.
  const RequestShape image_only{1, 0, 1};
  EXPECT_EQ(g.prefill_out_bytes(g.first_decoder_index() + 3, image_only), 4.5 * kMiB);
  EXPECT_EQ(g.decode_out_bytes(g.first_decoder_index() + 3), 8 * kKiB);

  const LayerGraph g13 = graph_of("llava-1.5-13b");
  EXPECT_EQ(g13.node(g13.first_decoder_index()).kv_bytes_per_token, 20 * kKiB);

  // Mistral: 8 KV heads -> a quarter of the MHA KV cache.
  const LayerGraph m = graph_of("llava-v1.6-mistral-7b");
  EXPECT_EQ(m.node(m.first_decoder_index()).kv_bytes_per_token, 4 * kKiB);

  // fp32 doubles activations; int4 halves weights but keeps 16-bit activations.
  const LayerGraph g32 = graph_of("llava-1.5-7b", Dtype::fp32);
  EXPECT_EQ(g32.node(g32.first_decoder_index()).kv_bytes_per_token, 32 * kKiB);
  const LayerGraph g4 = graph_of("llava-1.5-7b", Dtype::int4);
  EXPECT_EQ(g4.node(g4.first_decoder_index()).kv_bytes_per_token, 16 * kKiB);
  EXPECT_DOUBLE_EQ(g4.node(g4.first_decoder_index()).weight_bytes, 0.5 * 202'383'360.0);
}

// ---- FLOPs and bytes ---------------------------------------------------------------------------

TEST(Cost, DecoderLayerPrefillMatchesClosedForm) {
  struct Case {
    const char* preset;
    double hidden, heads, kv_heads, head_dim, mlp;
  };
  for (const Case& c : {Case{"llava-1.5-7b", 4096, 32, 32, 128, 11008}, Case{"llava-1.5-13b", 5120, 40, 40, 128, 13824},
                        Case{"llava-v1.6-mistral-7b", 4096, 32, 8, 128, 14336}}) {
    const LayerGraph g = graph_of(c.preset);
    const RequestShape shape{1, 64, 16};
    const double image_tokens = std::string_view(c.preset).find("v1.6") != std::string_view::npos ? 2928 : 576;
    const double t = 64 + image_tokens;
    ASSERT_EQ(g.prefill_tokens(shape), t);
    // Matmul weights of one layer: q, o [h, heads·d], k, v [h, kv·d], gate/up/down [h, mlp].
    const double params =
        2 * c.hidden * c.heads * c.head_dim + 2 * c.hidden * c.kv_heads * c.head_dim + 3 * c.hidden * c.mlp;
    const double pairs = t * (t + 1) / 2;
    const double attention_width = c.heads * c.head_dim;
    const double expected = 2 * params * t + 4 * attention_width * pairs;
    for (int i = g.first_decoder_index(); i < g.head_index(); ++i) {
      EXPECT_DOUBLE_EQ(g.prefill_cost(i, shape).flops, expected) << c.preset << " node " << i;
    }
    // Within 1e-4 of 2·(all layer params)·tokens + 4·hidden·pairs (the norms are 2·hidden params).
    const double with_norms = 2 * (params + 2 * c.hidden) * t + 4 * c.hidden * pairs;
    EXPECT_NEAR(g.prefill_cost(g.first_decoder_index(), shape).flops / with_norms, 1.0, 1e-4);

    // Bytes: weights once + activations in/out + KV written.
    const double a = 2;
    const double expected_bytes =
        2 * (params + 2 * c.hidden) + 2 * c.hidden * a * t + 2 * c.kv_heads * c.head_dim * a * t;
    EXPECT_DOUBLE_EQ(g.prefill_cost(g.first_decoder_index(), shape).bytes, expected_bytes) << c.preset;

    // Decode with 700 tokens cached: one token, 701 pairs, 701 KV entries read.
    const double decode_flops = 2 * params + 4 * attention_width * 701;
    EXPECT_DOUBLE_EQ(g.decode_cost(g.first_decoder_index(), 700).flops, decode_flops) << c.preset;
    const double decode_bytes = 2 * (params + 2 * c.hidden) + 2 * c.hidden * a + 2 * c.kv_heads * c.head_dim * a * 701;
    EXPECT_DOUBLE_EQ(g.decode_cost(g.first_decoder_index(), 700).bytes, decode_bytes) << c.preset;
  }
}

TEST(Cost, VisionNodesOverAllCrops) {
  const LayerGraph g = graph_of("llava-v1.6-vicuna-7b");
  const RequestShape shape{2, 10, 5};
  const double crops = 2 * 5;
  const double hv = 1024, iv = 4096, p = 577;
  const Cost layer = g.prefill_cost(1, shape);
  EXPECT_DOUBLE_EQ(layer.flops, 2 * (4 * hv * hv + 2 * hv * iv) * crops * p + 4 * hv * crops * p * p);
  // Vision embed: the conv runs over the 576 patches of each crop.
  EXPECT_NEAR(g.prefill_cost(0, shape).flops, 2 * (3 * 14 * 14 * hv) * crops * 576, 1.0);
  // Projector over the selected features (576 per crop).
  const int proj = g.text_embed_index() - 1;
  EXPECT_DOUBLE_EQ(g.prefill_cost(proj, shape).flops, 2 * (hv * 4096 + 4096.0 * 4096) * crops * 576);
  EXPECT_DOUBLE_EQ(g.prefill_out_bytes(proj, shape), crops * 576 * 4096 * 2);
  EXPECT_DOUBLE_EQ(g.prefill_out_bytes(5, shape), crops * 577 * 1024 * 2);
  EXPECT_EQ(g.prefill_tokens(shape), 10 + 2 * 2928);
  // Vision does nothing in decode, and nothing for a text-only request.
  for (int i = 0; i <= proj; ++i) {
    EXPECT_EQ(g.decode_cost(i, 100).flops, 0);
    EXPECT_EQ(g.decode_cost(i, 100).bytes, 0);
    EXPECT_EQ(g.decode_out_bytes(i), 0);
    EXPECT_EQ(g.prefill_cost(i, RequestShape{0, 32, 8}).bytes, 0);
    EXPECT_EQ(g.prefill_out_bytes(i, RequestShape{0, 32, 8}), 0);
  }
}

TEST(Cost, EmbedAndHead) {
  const LayerGraph g = graph_of("llava-1.5-7b");
  const RequestShape shape{1, 64, 16};
  const int embed = g.text_embed_index();
  EXPECT_EQ(g.prefill_cost(embed, shape).flops, 0);
  // A lookup reads only the rows it embeds, not the whole [32064, 4096] table.
  EXPECT_DOUBLE_EQ(g.decode_cost(embed, 10).bytes, 4096 * 2 + 4096 * 2);
  EXPECT_DOUBLE_EQ(g.node(embed).weight_bytes, 32064.0 * 4096 * 2);

  // The head computes logits for the last position only, in prefill and decode alike.
  const int head = g.head_index();
  EXPECT_DOUBLE_EQ(g.prefill_cost(head, shape).flops, 2.0 * 32064 * 4096);
  EXPECT_DOUBLE_EQ(g.decode_cost(head, 500).flops, 2.0 * 32064 * 4096);
  EXPECT_EQ(g.prefill_out_bytes(head, shape), 4);
  EXPECT_EQ(g.decode_out_bytes(head), 4);
  EXPECT_EQ(g.max_context(shape), 64 + 576 + 16);
}

TEST(Cost, SlidingWindowLimitsPairsAndKvReads) {
  LlavaConfig c = preset("llava-v1.6-mistral-7b");
  c.text.sliding_window = 4096;
  const LayerGraph g = LayerGraph::build(c, Dtype::fp16);
  const int d = g.first_decoder_index();
  const double width = 32 * 128;
  const double linear = g.node(d).linear_flops_per_token;
  const RequestShape shape{0, 5000, 1};
  const double pairs = 4096.0 * 4097 / 2 + (5000.0 - 4096) * 4096;
  EXPECT_DOUBLE_EQ(g.prefill_cost(d, shape).flops, linear * 5000 + 4 * width * pairs);
  EXPECT_DOUBLE_EQ(g.decode_cost(d, 10000).flops, linear + 4 * width * 4096);
  EXPECT_DOUBLE_EQ(g.decode_cost(d, 100).flops, linear + 4 * width * 101);
}

}  // namespace
}  // namespace adaptlink::models

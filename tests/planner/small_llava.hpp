// A small LLaVA with full-size layers for planner tests: 2 CLIP-L layers (feature layer -1) and
// 6 LLaMA-7B decoder layers, 11 nodes; ~2.7 GB of fp16 weights.
#pragma once

#include "adaptlink/models/config.hpp"

namespace adaptlink::testing {

inline models::LlavaConfig small_llava() {
  models::LlavaConfig c;
  c.vision.hidden_size = 1024;
  c.vision.intermediate_size = 4096;
  c.vision.num_hidden_layers = 2;
  c.vision.num_attention_heads = 16;
  c.vision.image_size = 336;
  c.vision.patch_size = 14;
  c.vision_feature_layer = -1;
  c.text.hidden_size = 4096;
  c.text.intermediate_size = 11008;
  c.text.num_hidden_layers = 6;
  c.text.num_attention_heads = 32;
  c.text.num_key_value_heads = 32;
  c.text.head_dim = 128;
  c.text.vocab_size = 32064;
  return c;
}

}  // namespace adaptlink::testing

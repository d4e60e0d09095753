#!/usr/bin/env python3
"""Tiny random LLaVA-NeXT checkpoints made with transformers (LlavaNextForConditionalGeneration), and what
transformers computes on them for several images (wide, tall, square-ish, smaller than a tile): the pixel values and
image_sizes of LlavaNextImageProcessor, the input ids with the image tokens expanded, the prefill logits and the
greedy tokens. The checkpoints' own files (config.json, model.safetensors, preprocessor_config.json) are as
save_pretrained writes them.

Run where torch, transformers, safetensors and Pillow are installed (the GPU machine; CPU, fp32, eager attention):

    python3 tools/make_next_fixtures.py --images tests/fixtures/images --extra tests/fixtures/next_pixels \\
        --out /tmp/next-fixtures
"""
import argparse
import json
import os
import platform

import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                          LlavaNextImageProcessor, MistralConfig)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
MAX_NEW_TOKENS = 10
# 28-pixel crops of 7-pixel patches: 16 features a crop.
FIXTURES = [
    dict(name="next_llama_mha", text_type="llama", hidden=64, inter=128, layers=2, heads=4, kv_heads=4, vocab=320,
         image_token=300, theta=10000.0, v_layers=2, v_hidden=32, v_heads=4, v_inter=64, feature_layer=-2,
         pinpoints=[[28, 56], [56, 28], [56, 56]]),
    dict(name="next_mistral_gqa", text_type="mistral", hidden=64, inter=96, layers=3, heads=4, kv_heads=2, vocab=288,
         image_token=280, theta=1e6, v_layers=3, v_hidden=32, v_heads=2, v_inter=64, feature_layer=-1,
         pinpoints=[[28, 28], [28, 84], [84, 28], [56, 56]]),
    # A sliding window shorter than every request (44 to 80 positions): prefill and decode both windowed.
    dict(name="next_mistral_window", text_type="mistral", hidden=64, inter=96, layers=2, heads=4, kv_heads=2,
         vocab=288, image_token=280, theta=1e6, v_layers=2, v_hidden=32, v_heads=2, v_inter=64, feature_layer=-2,
         pinpoints=[[28, 56], [56, 28], [56, 56]], sliding_window=24),
]
IMAGES = ["test.png", "wide.png", "tall.png", "small.png"]


def build(f):
    text_cls = LlamaConfig if f["text_type"] == "llama" else MistralConfig
    text = text_cls(hidden_size=f["hidden"], intermediate_size=f["inter"], num_hidden_layers=f["layers"],
                    num_attention_heads=f["heads"], num_key_value_heads=f["kv_heads"], vocab_size=f["vocab"],
                    max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=f["theta"], tie_word_embeddings=False,
                    bos_token_id=1, eos_token_id=2, pad_token_id=None, initializer_range=0.08,
                    **({"sliding_window": f["sliding_window"]} if "sliding_window" in f else {}))
    vision = CLIPVisionConfig(hidden_size=f["v_hidden"], intermediate_size=f["v_inter"],
                              num_hidden_layers=f["v_layers"], num_attention_heads=f["v_heads"], image_size=28,
                              patch_size=7, projection_dim=16, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    config = LlavaNextConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                             image_token_index=f["image_token"], projector_hidden_act="gelu",
                             vision_feature_select_strategy="default", vision_feature_layer=f["feature_layer"],
                             image_grid_pinpoints=f["pinpoints"], tie_word_embeddings=False)
    for attr in ("image_token_index", "image_token_id"):
        try:
            setattr(config, attr, f["image_token"])
        except Exception:  # noqa: BLE001
            pass
    return config


def perturb(model, gen):
    for name, p in model.named_parameters():
        if p.dim() == 1:
            noise = torch.randn(p.shape, generator=gen)
            p.data = 1.0 + 0.1 * noise if ("norm" in name or "layrnorm" in name) else 0.05 * noise


def image_tokens(model, pixel_values, image_sizes):
    inner = getattr(model, "model", model)
    with torch.no_grad():
        feats = inner.get_image_features(pixel_values=pixel_values, image_sizes=image_sizes,
                                         vision_feature_layer=model.config.vision_feature_layer,
                                         vision_feature_select_strategy="default")
        feats = getattr(feats, "pooler_output", feats)
        first = feats[0] if isinstance(feats, (list, tuple)) else feats
        if first.dim() == 2:  # already packed (transformers 5): [tokens, hidden]
            return int(first.shape[0])
        _, lens = inner.pack_image_features(list(feats), image_sizes, vision_feature_select_strategy="default",
                                            image_newline=inner.image_newline)
    return int(lens[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True)
    ap.add_argument("--extra", required=True, help="where wide.png and tall.png are")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    versions = {"transformers": transformers.__version__, "torch": torch.__version__,
                "python": platform.python_version()}
    for f in FIXTURES:
        d = os.path.join(args.out, f["name"])
        os.makedirs(d, exist_ok=True)
        config = build(f)
        processor = LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                            image_grid_pinpoints=f["pinpoints"], resample=3, image_mean=CLIP_MEAN,
                                            image_std=CLIP_STD, do_pad=True)
        # The seed whose greedy runs are farthest from a near tie and not one token repeated.
        best = None
        for seed in range(30):
            model = make_model(config, seed)
            ref, cases = run_cases(f, model, processor, args)
            score = min(c["min_margin"] for c in cases)
            varied = all(len(set(c["generated"])) >= 3 for c in cases)
            print(f"{f['name']} seed {seed}: min margin {score:.4g} varied {varied}", flush=True)
            if varied and (best is None or score > best[0]):
                best = (score, seed, model, ref, cases)
            if varied and score > 2e-2:
                break
        assert best is not None, "no seed gives varied greedy tokens"
        _, seed, model, ref, cases = best
        model.save_pretrained(d, safe_serialization=True)
        processor.save_pretrained(d)
        save_file(ref, os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(d, "expected.json"), "w") as fh:
            json.dump({"name": f["name"], "spec": f, "seed": seed, "cases": cases, "versions": versions,
                       "files": sorted(os.listdir(d))}, fh, indent=1)
            fh.write("\n")


def make_model(config, seed):
    torch.manual_seed(seed)
    try:
        model = LlavaNextForConditionalGeneration._from_config(config, attn_implementation="eager")
    except Exception:  # noqa: BLE001
        model = LlavaNextForConditionalGeneration(config)
    model = model.float().eval()
    perturb(model, torch.Generator().manual_seed(1000 + seed))
    return model


def run_cases(f, model, processor, args):
    ref, cases = {}, []
    gen = torch.Generator().manual_seed(1234)
    for i, name in enumerate(IMAGES):
        path = os.path.join(args.extra if name in ("wide.png", "tall.png") else args.images, name)
        img = Image.open(path)
        got = processor(images=img, return_tensors="pt")
        pixel_values, image_sizes = got["pixel_values"].float(), got["image_sizes"]
        n = image_tokens(model, pixel_values, image_sizes)
        pre = torch.randint(3, f["image_token"], (3,), generator=gen).tolist()
        post = torch.randint(3, f["image_token"], (5,), generator=gen).tolist()
        input_ids = torch.tensor([[1] + pre + [f["image_token"]] * n + post], dtype=torch.long)
        with torch.no_grad():
            logits = model(input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes).logits[0]
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 pixel_values=pixel_values, image_sizes=image_sizes,
                                 max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1, eos_token_id=2,
                                 pad_token_id=2, output_scores=True, return_dict_in_generate=True)
        seq = out.sequences[0, input_ids.shape[1]:].tolist()
        margins = [float(torch.topk(s[0].float(), 2).values.diff().abs()) for s in out.scores]
        ref[f"input_ids_{i}"] = input_ids[0].contiguous()
        ref[f"pixel_values_{i}"] = pixel_values[0].contiguous()
        ref[f"image_sizes_{i}"] = image_sizes[0].to(torch.int64).contiguous()
        ref[f"logits_{i}"] = logits.float().contiguous()
        ref[f"generated_{i}"] = torch.tensor(seq, dtype=torch.long)
        cases.append({"image": name, "image_size": [int(x) for x in image_sizes[0]], "crops": int(pixel_values.shape[1]),
                      "image_tokens": n, "input_ids": input_ids[0].tolist(), "generated": seq, "min_margin": min(margins),
                      "logit_scale": float(logits.abs().max())})
    return ref, cases


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden LLaVA-NeXT (anyres) image layouts from transformers' own code: for several pinpoint grids, both feature
select strategies and images of many aspect ratios, the pinpoint transformers chooses (select_best_resolution), the
CLIP crops (image_size_to_num_patches) and the image tokens the text tower sees (LlavaNextModel.pack_image_features
on features of the right shape: base crop, unpadded tiles, one image_newline per row). tests/models checks
models::LlavaConfig's anyres functions against them.

--pack FILE writes inputs and outputs of pack_image_features itself (seeded random projected features and
image_newline, the tiny grid, several image sizes) for exec's packing. It also writes golden anyres pixel values
(--pixels DIR): for a tiny processor (28-pixel crops, four pinpoints) and
the test images plus a wide and a tall one cut from test.png, what transformers' LlavaNextImageProcessor returns
(`pixel_values`, its `image_sizes`) and the same steps written out with Pillow + numpy (`pixel_values_pil`: the
behaviour exec/ implements with Pillow's resampler).

Run where torch, transformers and Pillow are installed (the GPU machine; CPU only, a few seconds):

    python3 tools/make_next_goldens.py --out tests/fixtures/next_image_layouts.json \
        --images tests/fixtures/images --pixels tests/fixtures/next_pixels --pack tests/fixtures/next_pack.safetensors
"""
import argparse
import json
import math
import os
import platform

import numpy as np
from PIL import Image
from safetensors.torch import save_file

import torch
import transformers
from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

# name, CLIP input size, patch size, pinpoints [height, width]
GRIDS = [
    ("v1.6", 336, 14, [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
    ("wide-grids", 336, 14, [[336, 336], [336, 672], [672, 336], [336, 1344], [1344, 336], [1008, 1008]]),
    ("tiny", 32, 8, [[32, 64], [64, 32], [64, 64], [96, 32]]),
]
# [width, height]: square, wide, tall, smaller than a tile, panoramas, odd sizes
IMAGES_336 = [[672, 672], [336, 336], [1024, 768], [768, 1024], [1920, 1080], [1080, 1920], [640, 480], [200, 150],
              [100, 400], [4000, 300], [300, 4000], [337, 335], [1344, 336], [336, 1344], [1000, 1000], [10, 2000],
              [1, 1], [2000, 10], [799, 601]]
IMAGES_TINY = [[32, 32], [64, 48], [48, 64], [100, 20], [20, 100], [7, 9], [200, 200], [65, 33], [1, 1], [96, 32]]


def model_for(image_size, patch, pinpoints, strategy):
    vision = CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1,
                              image_size=image_size, patch_size=patch)
    text = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=64)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints,
                             vision_feature_select_strategy=strategy, image_token_index=63)
    model = LlavaNextForConditionalGeneration(config).eval()
    return model, getattr(model, "model", model)


CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PIXEL_TILE = 28
PIXEL_PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28]]


def pil_anyres(image, size, pinpoints):
    """LlavaNextImageProcessor's steps with Pillow + numpy."""
    image = image.convert("RGB")
    w, h = image.size
    best_h, best_w = select_best_resolution([h, w], pinpoints)
    scale_w, scale_h = best_w / w, best_h / h
    if scale_w < scale_h:
        new_w, new_h = best_w, min(math.ceil(h * scale_w), best_h)
    else:
        new_w, new_h = min(math.ceil(w * scale_h), best_w), best_h
    canvas = Image.new("RGB", (best_w, best_h), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h), resample=Image.BICUBIC), ((best_w - new_w) // 2, (best_h - new_h) // 2))
    crops = [image.resize((size, size), resample=Image.BICUBIC)]
    crops += [canvas.crop((x, y, x + size, y + size)) for y in range(0, best_h, size) for x in range(0, best_w, size)]
    out = [((np.asarray(c, dtype=np.float64) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)
           for c in crops]
    return torch.from_numpy(np.stack(out).astype(np.float32))


def make_pixels(src, out):
    from transformers import LlavaNextImageProcessor
    os.makedirs(out, exist_ok=True)
    base = Image.open(os.path.join(src, "test.png")).convert("RGB")  # 80 x 60
    base.crop((0, 20, 80, 36)).save(os.path.join(out, "wide.png"))  # 80 x 16
    base.crop((30, 0, 42, 60)).save(os.path.join(out, "tall.png"))  # 12 x 60
    processor = LlavaNextImageProcessor(size={"shortest_edge": PIXEL_TILE},
                                        crop_size={"height": PIXEL_TILE, "width": PIXEL_TILE},
                                        image_grid_pinpoints=PIXEL_PINPOINTS, resample=3, image_mean=CLIP_MEAN,
                                        image_std=CLIP_STD, do_pad=True)
    summary = {}
    for name in ("test.png", "small.png", "gray.png", "test.jpg", "wide.png", "tall.png"):
        path = os.path.join(out if name in ("wide.png", "tall.png") else src, name)
        got = processor(images=Image.open(path), return_tensors="pt")
        pv = got["pixel_values"][0].float().contiguous()
        ref = pil_anyres(Image.open(path), PIXEL_TILE, PIXEL_PINPOINTS).contiguous()
        stem = name.replace(".", "_")
        save_file({"pixel_values": pv, "pixel_values_pil": ref,
                   "image_sizes": got["image_sizes"][0].to(torch.int64).contiguous()},
                  os.path.join(out, f"{stem}.safetensors"))
        summary[stem] = {"crops": int(pv.shape[0]), "image_size": [int(x) for x in got["image_sizes"][0]],
                         "max_abs_processor_vs_pil": float((pv - ref).abs().max()) if pv.shape == ref.shape else None,
                         "processor_class": type(processor).__name__}
    with open(os.path.join(out, "pixels.json"), "w") as f:
        json.dump({"tile": PIXEL_TILE, "pinpoints": PIXEL_PINPOINTS, "images": summary,
                   "transformers": transformers.__version__}, f, indent=1)
        f.write("\n")
    print("pixels:", json.dumps(summary))


PACK_SIZES = [[32, 32], [64, 48], [48, 64], [100, 20], [20, 100], [200, 200], [65, 33], [1, 1], [2000, 10],
              [10, 2000]]


def make_pack(path):
    name, image_size, patch, pinpoints = GRIDS[2]  # tiny
    torch.manual_seed(7)
    model, inner = model_for(image_size, patch, pinpoints, "default")
    hidden = model.config.text_config.hidden_size
    with torch.no_grad():
        inner.image_newline.copy_(torch.randn(hidden))
    per_crop = (image_size // patch) ** 2
    tensors = {"image_newline": inner.image_newline.detach().clone().contiguous(),
               "sizes": torch.tensor(PACK_SIZES, dtype=torch.int64)}
    for i, (width, height) in enumerate(PACK_SIZES):
        crops = int(image_size_to_num_patches(image_size=(height, width), grid_pinpoints=pinpoints, patch_size=image_size))
        feats = torch.randn(crops, per_crop, hidden)
        with torch.no_grad():
            packed, _ = inner.pack_image_features([feats], torch.tensor([[height, width]]),
                                                  vision_feature_select_strategy="default",
                                                  image_newline=inner.image_newline)
        tensors[f"features_{i}"] = feats.contiguous()
        # One image: the packed tokens are all of it (a tensor [tokens, hidden], or a list of one).
        packed = packed if isinstance(packed, torch.Tensor) else packed[0]
        assert packed.dim() == 2, packed.shape
        tensors[f"packed_{i}"] = packed.detach().contiguous()
    save_file(tensors, path)
    print(f"wrote {path}: {len(PACK_SIZES)} images, grid {name} {pinpoints}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", help="the test images (tests/fixtures/images)")
    ap.add_argument("--pixels", help="where the golden pixel values go (tests/fixtures/next_pixels)")
    ap.add_argument("--pack", help="where pack_image_features' goldens go (tests/fixtures/next_pack.safetensors)")
    args = ap.parse_args()
    if args.pack:
        make_pack(args.pack)
    if args.pixels:
        make_pixels(args.images, args.pixels)
    cases = []
    for name, image_size, patch, pinpoints in GRIDS:
        for strategy in ("default", "full"):
            model, inner = model_for(image_size, patch, pinpoints, strategy)
            per_side = image_size // patch
            per_crop = per_side * per_side + (1 if strategy == "full" else 0)
            hidden = model.config.text_config.hidden_size
            images = []
            for width, height in (IMAGES_TINY if image_size == 32 else IMAGES_336):
                best = select_best_resolution([height, width], pinpoints)
                crops = int(image_size_to_num_patches(image_size=(height, width), grid_pinpoints=pinpoints,
                                                      patch_size=image_size))
                entry = {"width": width, "height": height, "best": [int(best[0]), int(best[1])], "crops": crops}
                features = [torch.zeros(crops, per_crop, hidden)]
                try:
                    with torch.no_grad():
                        _, lens = inner.pack_image_features(features, torch.tensor([[height, width]]),
                                                            vision_feature_select_strategy=strategy,
                                                            image_newline=inner.image_newline)
                    entry["tokens"] = int(lens[0])
                except Exception as e:  # what transformers does with it, recorded
                    entry["error"] = f"{type(e).__name__}: {e}"[:200]
                images.append(entry)
            cases.append({"grid": name, "image_size": image_size, "patch_size": patch, "pinpoints": pinpoints,
                          "strategy": strategy, "images": images})
    out = {"generated_by": "tools/make_next_goldens.py", "transformers": transformers.__version__,
           "torch": torch.__version__, "python": platform.python_version(), "cases": cases}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {sum(len(c['images']) for c in cases)} images over {len(cases)} cases")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Builds the golden fixtures of exec/ (tests/fixtures/): tiny random LLaVA checkpoints made with transformers,
plus what transformers computes on them (prefill logits, hidden states, greedy tokens, pixel values).

Run where torch, transformers, safetensors, sentencepiece and Pillow are installed (the GPU machine has them;
everything runs on its CPU in fp32):

    python3 tools/make_fixtures.py --src tests/fixtures --out /tmp/fixtures

--src holds the committed inputs (images/*.png, tokenizer/tokenizer.model); --out receives one directory per
fixture and images/*.safetensors. The versions used are written to --out/versions.json.
"""
import argparse
import json
import os
import platform
import shutil
import sys
import traceback

import numpy as np
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, MistralConfig

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# name, text tower, vision tower, LLaVA options. Sizes are tiny on purpose (a few hundred KB per checkpoint).
FIXTURES = [
    dict(name="llava_llama_mha_tied", text_type="llama", hidden=64, inter=128, layers=2, heads=4, kv_heads=4,
         vocab=416, image_token=400, theta=10000.0, eps=1e-5, tie=True, v_layers=3, v_hidden=32, v_heads=4, v_inter=64,
         image=28, feature_layer=-2, strategy="default", tokenizer=True, layout="native", shard=None),
    dict(name="llava_mistral_gqa_full", text_type="mistral", hidden=64, inter=96, layers=3, heads=4, kv_heads=2,
         vocab=320, image_token=300, theta=1e6, eps=1e-5, tie=False, v_layers=2, v_hidden=48, v_heads=4, v_inter=96,
         image=42, feature_layer=-1, strategy="full", tokenizer=False, layout="other", shard=None),
    dict(name="llava_llama_gqa_sharded", text_type="llama", hidden=96, inter=160, layers=4, heads=6, kv_heads=2,
         vocab=352, image_token=340, theta=10000.0, eps=1e-6, tie=False, v_layers=4, v_hidden=32, v_heads=2,
         v_inter=80, image=56, feature_layer=-2, strategy="default", tokenizer=False, layout="native", shard="300KB"),
    dict(name="llava_llama_tied_full_l1", text_type="llama", hidden=32, inter=64, layers=2, heads=2, kv_heads=1,
         vocab=300, image_token=299, theta=500000.0, eps=1e-5, tie=True, v_layers=3, v_hidden=32, v_heads=4,
         v_inter=64, image=28, feature_layer=-3, strategy="full", tokenizer=False, layout="other", shard=None),
]

PROMPT = "What is shown in this picture?"
MAX_NEW_TOKENS = 12


def log(*args):
    print(*args, flush=True)


def pil_reference(image, size):
    """CLIPImageProcessor's steps written out with PIL + numpy: the behaviour exec/ implements."""
    image = image.convert("RGB")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = np.asarray(image.resize((new_w, new_h), resample=Image.BICUBIC), dtype=np.float64)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top:top + size, left:left + size] / 255.0
    crop = (crop - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    return torch.from_numpy(crop.transpose(2, 0, 1)[None].astype(np.float32).copy())


def make_processor(size):
    from transformers import CLIPImageProcessor
    kwargs = dict(do_resize=True, size={"shortest_edge": size}, resample=3, do_center_crop=True,
                  crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255,
                  do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
    return CLIPImageProcessor(**kwargs)


def image_pixels(processor, image):
    out = processor(images=image, return_tensors="pt")
    return out["pixel_values"].float()


def build_config(f):
    text_cls = LlamaConfig if f["text_type"] == "llama" else MistralConfig
    text = text_cls(hidden_size=f["hidden"], intermediate_size=f["inter"], num_hidden_layers=f["layers"],
                    num_attention_heads=f["heads"], num_key_value_heads=f["kv_heads"], vocab_size=f["vocab"],
                    max_position_embeddings=256, rms_norm_eps=f["eps"], rope_theta=f["theta"],
                    tie_word_embeddings=f["tie"], bos_token_id=1, eos_token_id=2, pad_token_id=None,
                    initializer_range=0.08)
    vision = CLIPVisionConfig(hidden_size=f["v_hidden"], intermediate_size=f["v_inter"],
                              num_hidden_layers=f["v_layers"], num_attention_heads=f["v_heads"], image_size=f["image"],
                              patch_size=14, projection_dim=16, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    kwargs = dict(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=f["image_token"],
                  projector_hidden_act="gelu", vision_feature_select_strategy=f["strategy"],
                  vision_feature_layer=f["feature_layer"], tie_word_embeddings=f["tie"])
    config = LlavaConfig(**kwargs)
    # Whichever spelling this version uses.
    for attr in ("image_token_index", "image_token_id"):
        try:
            setattr(config, attr, f["image_token"])
        except Exception:  # noqa: BLE001
            pass
    try:
        config.text_config.tie_word_embeddings = f["tie"]
    except Exception:  # noqa: BLE001
        pass
    config.tie_word_embeddings = f["tie"]
    return config


def perturb(model, gen):
    """Random init leaves norms at 1 and biases at 0; perturb them so a forgotten bias or norm shows up."""
    for name, p in model.named_parameters():
        if p.dim() == 1:
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name or "layrnorm" in name:
                p.data = 1.0 + 0.1 * noise
            else:
                p.data = 0.05 * noise


def lm_head_tied(model):
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    return emb.data_ptr() == out.data_ptr()


def greedy(model, input_ids, pixel_values, eos):
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=pixel_values,
                         max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1, eos_token_id=eos,
                         pad_token_id=eos, output_scores=True, return_dict_in_generate=True)
    seq = out.sequences[0, input_ids.shape[1]:].tolist()
    margins = []
    for s in out.scores:
        top = torch.topk(s[0].float(), 2).values
        margins.append(float(top[0] - top[1]))
    return seq, margins


def rename_layout(tensors, to_legacy):
    """transformers 4.x ('language_model.model.*') <-> 5.x ('model.language_model.*') key layouts."""
    pairs = [("model.language_model.", "language_model.model."), ("model.vision_tower.", "vision_tower."),
             ("model.multi_modal_projector.", "multi_modal_projector."), ("lm_head.", "language_model.lm_head."),
             ("model.image_newline", "image_newline")]
    out = {}
    for k, v in tensors.items():
        nk = k
        for new, old in pairs:
            src, dst = (new, old) if to_legacy else (old, new)
            if k.startswith(src):
                nk = dst + k[len(src):]
                break
        out[nk] = v
    return out


def tokenizer_ids(tok_path, text):
    """Token ids of `text` by the tokenizers this version offers; the C++ side matches 'sentencepiece_segments'."""
    import sentencepiece as spm
    result = {}
    sp = spm.SentencePieceProcessor(model_file=tok_path)
    ids = [1]
    parts = text.split("<image>")
    for i, part in enumerate(parts):
        if i > 0:
            ids.append(-1)  # placeholder for the image token
        if part:
            ids.extend(sp.encode(part))
    result["sentencepiece_segments"] = ids
    for cls_name, kwargs in (("LlamaTokenizer", dict(legacy=True)), ("LlamaTokenizer", dict(legacy=False)),
                             ("LlamaTokenizerFast", dict(legacy=True, from_slow=True)),
                             ("LlamaTokenizerFast", dict(legacy=False, from_slow=True))):
        key = f"{cls_name}(legacy={kwargs['legacy']})"
        try:
            cls = getattr(transformers, cls_name)
            tok = cls(vocab_file=tok_path, add_bos_token=True, add_eos_token=False, **kwargs)
            tok.add_tokens([transformers.AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
            result[key] = tok(text)["input_ids"]
            result[key + ".image_id"] = tok.convert_tokens_to_ids("<image>")
        except Exception as e:  # noqa: BLE001
            result[key] = f"error: {type(e).__name__}: {e}"
    return result


def make_fixture(f, src, out, images, versions):
    d = os.path.join(out, f["name"])
    os.makedirs(d, exist_ok=True)
    config = build_config(f)
    img = Image.open(os.path.join(src, "images", "test.png"))
    processor = make_processor(f["image"])
    pixel_values = image_pixels(processor, img)
    n_patches = (f["image"] // 14) ** 2
    n_image_tokens = n_patches + (1 if f["strategy"] == "full" else 0)

    tok_info = None
    prompt_text = None
    if f["tokenizer"]:
        shutil.copy(os.path.join(src, "tokenizer", "tokenizer.model"), os.path.join(d, "tokenizer.model"))
        prompt_text = f"USER: <image>\n{PROMPT} ASSISTANT:"
        tok_info = tokenizer_ids(os.path.join(d, "tokenizer.model"), prompt_text)
        ids = [f["image_token"]] * n_image_tokens
        input_ids = []
        for t in tok_info["sentencepiece_segments"]:
            input_ids.extend(ids if t == -1 else [t])
    else:
        gen = torch.Generator().manual_seed(1234)
        pre = torch.randint(3, f["image_token"], (4,), generator=gen).tolist()
        post = torch.randint(3, f["image_token"], (6,), generator=gen).tolist()
        input_ids = [1] + pre + [f["image_token"]] * n_image_tokens + post
    input_ids_t = torch.tensor([input_ids], dtype=torch.long)

    best = None
    for seed in range(40):
        torch.manual_seed(seed)
        try:
            model = LlavaForConditionalGeneration._from_config(config, attn_implementation="eager")
        except Exception:  # noqa: BLE001
            model = LlavaForConditionalGeneration(config)
        model = model.float().eval()
        perturb(model, torch.Generator().manual_seed(1000 + seed))
        if f["tie"]:
            model.tie_weights()
        with torch.no_grad():
            seq, margins = greedy(model, input_ids_t, pixel_values, 2)
        score = min(margins)
        log(f"  {f['name']} seed {seed}: generated {seq} min margin {score:.4g}")
        if best is None or score > best[0]:
            best = (score, seed, model, seq, margins)
        if score > 2e-2 and len(seq) >= 6:
            break
    _, seed, model, seq, margins = best
    tied = lm_head_tied(model)
    assert tied == f["tie"], f"tie mismatch: model tied={tied}, wanted {f['tie']}"

    with torch.no_grad():
        out_fw = model(input_ids=input_ids_t, pixel_values=pixel_values, output_hidden_states=True)
        logits = out_fw.logits[0].float().contiguous()
        text_hidden = torch.stack([h[0] for h in out_fw.hidden_states]).float().contiguous()
        image_feats = out_fw.image_hidden_states
        vt = model.vision_tower if hasattr(model, "vision_tower") else model.model.vision_tower
        vout = vt(pixel_values, output_hidden_states=True)
        vision_hidden = torch.stack([h[0] for h in vout.hidden_states]).float().contiguous()
    ref = {"input_ids": input_ids_t[0].contiguous(), "pixel_values": pixel_values.contiguous(), "logits": logits,
           "text_hidden_states": text_hidden, "vision_hidden_states": vision_hidden,
           "generated": torch.tensor(seq, dtype=torch.long)}
    if image_feats is not None:
        if isinstance(image_feats, (list, tuple)):
            image_feats = torch.cat([t.reshape(-1, t.shape[-1]) for t in image_feats])
        ref["image_features"] = image_feats.reshape(-1, image_feats.shape[-1]).float().contiguous()

    # A second run whose EOS is the 4th greedy token: generation must stop right after emitting it.
    eos_stop = None
    if len(seq) >= 4:
        eos = seq[3]
        with torch.no_grad():
            seq_eos, _ = greedy(model, input_ids_t, pixel_values, eos)
        eos_stop = {"eos_token_id": eos, "generated": seq_eos}

    save_kwargs = {}
    if f["shard"]:
        save_kwargs["max_shard_size"] = f["shard"]
    try:
        model.save_pretrained(d, safe_serialization=True, **save_kwargs)
    except TypeError:
        model.save_pretrained(d, **save_kwargs)
    processor.save_pretrained(d)
    files = sorted(os.listdir(d))
    native_keys = []
    for fn in files:
        if fn.endswith(".safetensors"):
            native_keys.extend(load_file(os.path.join(d, fn)).keys())
    native_layout = "transformers5" if any(k.startswith("model.language_model.") for k in native_keys) else "legacy"
    layout = native_layout
    if f["layout"] == "other":
        assert not f["shard"]
        path = os.path.join(d, "model.safetensors")
        tensors = load_file(path)
        tensors = rename_layout(tensors, to_legacy=(native_layout == "transformers5"))
        save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})
        layout = "legacy" if native_layout == "transformers5" else "transformers5"
    save_file(ref, os.path.join(d, "reference.safetensors"), metadata={"format": "pt"})

    expected = {
        "name": f["name"], "spec": f, "seed": seed, "input_ids": input_ids, "image_tokens": n_image_tokens,
        "generated": seq, "margins": margins, "min_margin": min(margins),
        "logit_scale": float(logits.abs().max()), "eos_stop": eos_stop, "tied": tied, "key_layout": layout,
        "native_key_layout": native_layout, "files": sorted(os.listdir(d)), "versions": versions,
        "prompt": PROMPT if f["tokenizer"] else None, "prompt_text": prompt_text, "tokenizer": tok_info,
        "text_hidden_states_count": int(text_hidden.shape[0]),
        "processor_class": type(processor).__name__,
    }
    with open(os.path.join(d, "expected.json"), "w") as fh:
        json.dump(expected, fh, indent=1)
    log(f"{f['name']}: seed {seed} layout {layout} tied {tied} generated {seq} eos_stop {eos_stop} "
        f"logit scale {expected['logit_scale']:.4g} files {expected['files']}")


def make_images(src, out, versions):
    d = os.path.join(out, "images")
    os.makedirs(d, exist_ok=True)
    img_src = os.path.join(src, "images")
    # A JPEG made by Pillow (libjpeg) from test.png, to check stb's decoder against it.
    Image.open(os.path.join(img_src, "test.png")).convert("RGB").save(os.path.join(d, "test.jpg"), quality=92)
    shutil.copy(os.path.join(d, "test.jpg"), os.path.join(out, "test.jpg"))
    summary = {}
    for name in ("test.png", "small.png", "gray.png", "test.jpg"):
        path = os.path.join(img_src if name.endswith(".png") else d, name)
        for size in (28, 42, 56):
            img = Image.open(path)
            processor = make_processor(size)
            pv = image_pixels(processor, img)
            ref = pil_reference(Image.open(path), size)
            decoded = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8).copy())
            tensors = {"pixel_values": pv.contiguous(), "pixel_values_pil": ref.contiguous(),
                       "decoded_rgb": decoded.contiguous()}
            try:
                from transformers import CLIPImageProcessorFast
                fast = CLIPImageProcessorFast(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                              image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3)
                tensors["pixel_values_fast"] = fast(images=img, return_tensors="pt")["pixel_values"].float().contiguous()
            except Exception as e:  # noqa: BLE001
                log(f"  no fast processor: {e}")
            stem = name.replace(".", "_")
            save_file(tensors, os.path.join(d, f"{stem}_{size}.safetensors"))
            summary[f"{stem}_{size}"] = {"max_abs_processor_vs_pil": float((pv - ref).abs().max()),
                                         "processor_class": type(processor).__name__}
    with open(os.path.join(d, "images.json"), "w") as fh:
        json.dump({"summary": summary, "versions": versions}, fh, indent=1)
    log("images:", json.dumps(summary))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(4)
    os.makedirs(args.out, exist_ok=True)
    import PIL
    versions = {"transformers": transformers.__version__, "torch": torch.__version__, "python": platform.python_version(),
                "pillow": PIL.__version__, "numpy": np.__version__}
    try:
        import safetensors
        versions["safetensors"] = safetensors.__version__
        import sentencepiece
        versions["sentencepiece"] = sentencepiece.__version__
    except Exception:  # noqa: BLE001
        pass
    log("versions:", versions)
    with open(os.path.join(args.out, "versions.json"), "w") as fh:
        json.dump(versions, fh, indent=1)
    failures = 0
    try:
        make_images(args.src, args.out, versions)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        failures += 1
    for f in FIXTURES:
        if args.only and f["name"] not in args.only.split(","):
            continue
        try:
            make_fixture(f, args.src, args.out, None, versions)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            failures += 1
    log("failures:", failures)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

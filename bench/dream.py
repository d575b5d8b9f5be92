"""Dream on a full-size random-init SD1.5 in fp16: Dreamy next to stock diffusers, same weights, one process.

    python -m bench.dream [--repeats 5] [--batch 4] [--out results.json]

Stock is ``StableDiffusionPipeline`` built from the very same modules, with the preset's DDIM
scheduler assigned after construction (as the recipe does), per-seed CPU generators, no safety
checker. Reports s/image at batch 1 and at ``--batch``, peak memory, whether the images are
finite, and how exactly ours matches stock (identical / max |delta| / PSNR).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import build_full_sd15, compare, emit, timed, versions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from dreamy.dream import decode, denoise, dream_iter, encode_prompt, initial_noise
    from dreamy.presets import load_preset
    from dreamy.recipe import resolve
    from dreamy.sources import load_model

    folder = build_full_sd15(Path(tempfile.mkdtemp()) / "sd15-random")
    model = load_model(str(folder), device="cuda")  # through our folder loader, fp16
    preset = load_preset("biased-dreams")
    d = preset.dream
    stock = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    stock.scheduler = DDIMScheduler(**d.scheduler)
    stock.set_progress_bar_config(disable=True)

    def stock_images(seeds):
        out = stock(d.prompt, negative_prompt=d.negative_prompt, guidance_scale=d.guidance,
                    num_inference_steps=d.steps, width=d.width, height=d.height, num_images_per_prompt=len(seeds),
                    generator=[torch.Generator("cpu").manual_seed(s) for s in seeds])
        return [np.asarray(im) for im in out.images]

    def our_images(seeds, batch_size=1):
        return [np.asarray(r.image) for r in dream_iter(model, preset, seeds, batch_size=batch_size)]

    seeds1, seedsb = [0], list(range(args.batch))
    result: dict = {"bench": "dream", "model": "full-size SD1.5 architecture, random weights, fp16",
                    "recipe": "biased-dreams: 512x512, 50 DDIM steps, guidance 3.0", "versions": versions()}

    torch.cuda.reset_peak_memory_stats()
    result["stock_b1"] = timed(lambda: stock_images(seeds1), args.repeats)
    result["stock_b1"]["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    result["ours_b1"] = timed(lambda: our_images(seeds1), args.repeats)
    result["ours_b1"]["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    result[f"stock_b{args.batch}"] = timed(lambda: stock_images(seedsb), max(2, args.repeats // 2))
    result[f"ours_b{args.batch}"] = timed(lambda: our_images(seedsb, args.batch), max(2, args.repeats // 2))
    for key in list(result):
        if key.startswith(("stock_b", "ours_b")):
            n = int(key.split("_b")[1])
            result[key]["s_per_image"] = result[key]["median_s"] / n
            result[key]["images_per_s"] = n / result[key]["median_s"]
    result["speedup_b1"] = result["stock_b1"]["median_s"] / result["ours_b1"]["median_s"]

    # exactness: ours vs stock per seed at batch 1, and ours batched vs ours alone
    stock_b1 = {s: stock_images([s])[0] for s in seedsb}
    ours_b1 = {s: our_images([s])[0] for s in seedsb}
    ours_bn = dict(zip(seedsb, our_images(seedsb, args.batch), strict=True))
    result["exact_vs_stock_b1"] = [compare(ours_b1[s], stock_b1[s]) for s in seedsb]
    result["batch_invariance"] = [compare(ours_bn[s], ours_b1[s]) for s in seedsb]
    stock_bn = dict(zip(seedsb, stock_images(seedsb), strict=True))
    result["stock_batch_spread"] = [compare(stock_bn[s], stock_b1[s]) for s in seedsb]

    # finiteness of the fp16 latents and of the decoded image (before the uint8 conversion)
    recipe = resolve(preset).replace(seed=0)
    lat = denoise(model, recipe, initial_noise(model, 0, d.width, d.height),
                  encode_prompt(model, d.prompt), encode_prompt(model, d.negative_prompt))
    images, upcast = decode(model, lat)
    result["finite"] = {"latents": bool(torch.isfinite(lat).all()), "vae_upcast_needed": upcast,
                        "image_std": float(np.asarray(images[0]).std())}
    emit(result, args.out)


if __name__ == "__main__":
    main()

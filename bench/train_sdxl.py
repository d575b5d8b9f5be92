"""Train a preset's SDXL recipe (word-style: pivotal tuning + rank-16 UNet LoRA, fp16, 1024 px) through Dreamy's
``train()`` on a FULL-SIZE random-init SDXL, one process.

    python -m bench.train --arch sdxl --preset word-style --steps 100 --out X.json
    python -m bench.train_sdxl --preset word-style --steps 100 --out X.json     # the same
    python -m bench.train_sdxl --tiny --steps 4                                # CPU smoke test on tiny-sdxl, 64 px

The model has SDXL base 1.0's architecture (dreamy/models/configs/sdxl: UNet 2.6 B parameters, both text
encoders at full width with CLIP's 49408-token vocabulary, so pivotal tuning trains embedding matrices of
the real size) with random weights, written to disk as a diffusers folder and loaded by ``train()`` as a
user's folder would be. The recipe is the preset's own (every locked value), only ``max_train_steps``,
the checkpoint (one, at the end) and the validation (off) changed; 8 captioned photos. Reported:
seconds per step (median after ``--warmup``; the pivot, where the text encoders stop training, falls
inside), peak GPU memory (``torch.cuda.max_memory_allocated`` over the run), first/last loss and whether
every loss was finite. Speed does not depend on weight values; the losses of a random model mean nothing.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import CONFIGS, emit, versions


def write_full_vocab_tokenizer(folder: Path, pad_token: str) -> Path:
    """A CLIP tokenizer with CLIP's 49408 ids (the byte vocabulary, unused fillers, BOS 49406, EOS 49407), so the
    text encoders keep their real embedding size and pivotal tuning appends its tokens at 49408."""
    from dreamy.models.clip_vocab import BOS, EOS, _write, byte_symbols

    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += [f"<unused{i}>" for i in range(49406 - len(tokens))] + [BOS, EOS]
    return _write(folder, {t: i for i, t in enumerate(tokens)}, [], pad_token=pad_token)


def build_full_sdxl(folder: Path, seed: int = 0) -> Path:
    """A full-size SDXL base 1.0 diffusers folder with random weights (fp16 on disk, as the Hub's variant)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    src = CONFIGS / "sdxl"
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(src / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(src / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(src / "text_encoder"))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(src / "text_encoder_2"))
    for name, m in (("unet", unet), ("vae", vae), ("text_encoder", text), ("text_encoder_2", text_2)):
        m.to(torch.float16).save_pretrained(folder / name)
    del unet, vae, text, text_2
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text((src / "scheduler" / "scheduler_config.json").read_text())
    write_full_vocab_tokenizer(folder / "tokenizer", "<|endoftext|>")
    write_full_vocab_tokenizer(folder / "tokenizer_2", "!")  # SDXL's second tokenizer pads with "!"
    (folder / "model_index.json").write_text((src / "model_index.json").read_text())
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


def captioned_photos(folder: Path, n: int, size: int) -> Path:
    """``n`` smooth colour-field photos a quarter wider than ``size`` (so the center crop is recorded), each
    with a caption file, as the maker's training set has them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize((size + size // 4, size), Image.Resampling.BICUBIC).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(f"a figure {i} dancing on a white background", encoding="utf-8")
    return folder


def run(base: str, photos: Path, preset: str, steps: int, warmup: int, overrides: dict, device: str | None) -> dict:
    from dreamy.training import StepDone, train

    models = Path(tempfile.mkdtemp(prefix="bench-train-sdxl-"))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, losses, last = [], [], time.perf_counter()
    t0 = last
    try:
        for ev in train(photos, name="bench", preset=preset, base=base, models_dir=models, unlock=True,
                        overrides={"max_train_steps": steps, "checkpointing_steps": steps, "validation_seeds": "",
                                   **overrides}, device=device):
            now = time.perf_counter()
            if isinstance(ev, StepDone):
                times.append(now - last)
                losses.append(ev.loss)
            last = now
    finally:
        shutil.rmtree(models, ignore_errors=True)
    timed = times[warmup:] or times
    return {
        "s_per_step_median": statistics.median(timed),
        "s_per_step_mean": statistics.fmean(timed),
        "steps_timed": len(timed),
        "steps_total": len(times),
        "wall_s": time.perf_counter() - t0,
        "peak_vram_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "finite_loss": all(math.isfinite(v) for v in losses),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.train_sdxl")
    ap.add_argument("--preset", default="word-style")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--tiny", action="store_true", help="tiny-sdxl at 64 px on the CPU (smoke test)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="another [train] override, e.g. --set optimizer=prodigy --set learning_rate=1.0")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from dreamy.cli.helpers import parse_setting
    from dreamy.recipes.presets import load_preset

    overrides = dict(parse_setting(x) for x in args.set)
    s = load_preset(args.preset).train
    work = Path(tempfile.mkdtemp(prefix="bench-train-sdxl-data-"))
    try:
        if args.tiny:
            base, resolution, device, label = "tiny-sdxl", 64, "cpu", "tiny-sdxl"
            overrides = {"resolution": resolution, **overrides}
        else:
            base = str(build_full_sdxl(work / "sdxl-random"))
            resolution, device, label = s.resolution, None, "SDXL base 1.0 architecture, random init"
        photos = captioned_photos(work / "photos", 8, overrides.get("resolution", resolution))
        result = {"versions": versions(), "preset": args.preset, "model": label, "steps": args.steps,
                  "warmup": min(args.warmup, max(0, args.steps - 1)), "resolution": overrides.get("resolution", resolution),
                  "recipe": {k: getattr(s, k) for k in ("mode", "optimizer", "learning_rate", "text_encoder_lr",
                                                         "lora_rank", "ti_fraction", "mixed_precision")},
                  "overrides": overrides}
        result["ours"] = run(base, photos, args.preset, args.steps, result["warmup"], overrides, device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()

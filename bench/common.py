"""Shared benchmark helpers: full-size random-init models from our shipped configs, timing, exactness."""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

CONFIGS = Path(__file__).resolve().parent.parent / "dreamy" / "configs"


def versions() -> dict:
    import diffusers
    import transformers

    info = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def build_full_sd15(folder: Path, seed: int = 0) -> Path:
    """A full-size SD1.5 diffusers folder with random weights (speed does not depend on weight values)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreamy.clip_vocab import write_byte_tokenizer

    src = CONFIGS / "sd15"
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(src / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(src / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(src / "text_encoder"))
    for name, m in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        m.to(torch.float16).save_pretrained(folder / name)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text((src / "scheduler" / "scheduler_config.json").read_text())
    write_byte_tokenizer(folder / "tokenizer")  # token ids only steer the (random) text encoder
    (folder / "model_index.json").write_text((src / "model_index.json").read_text())
    return folder


def timed(fn, repeats: int, warmup: int = 1) -> dict:
    """Median and spread of wall-clock seconds per call, the GPU synchronised around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Exactness of two uint8 images: identical, max |delta| and PSNR (dB; inf when identical)."""
    d = a.astype(np.float64) - b.astype(np.float64)
    mse = float((d**2).mean())
    return {"identical": bool(np.array_equal(a, b)), "max_abs": float(np.abs(d).max()),
            "psnr_db": math.inf if mse == 0 else 10 * math.log10(255**2 / mse)}


def emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)

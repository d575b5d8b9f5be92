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

CONFIGS = Path(__file__).resolve().parent.parent / "dreamy" / "models" / "configs"


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

    from dreamy.models.clip_vocab import write_byte_tokenizer

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


def summarise(comparisons: list[dict]) -> dict:
    """Many per-seed ``compare`` results as one: all identical?, worst max |delta|, worst PSNR."""
    return {"n": len(comparisons), "identical_all": all(c["identical"] for c in comparisons),
            "max_abs_max": max(c["max_abs"] for c in comparisons),
            "psnr_db_min": min(c["psnr_db"] for c in comparisons)}


def gpu_state() -> dict:
    """Clocks, power, temperature and throttle reasons as nvidia-smi reads them (recorded, never set)."""
    import subprocess

    state: dict = {}
    for q in ("name,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu",
              "clocks_throttle_reasons.active,clocks_throttle_reasons.hw_slowdown,"
              "clocks_throttle_reasons.hw_thermal_slowdown,clocks_throttle_reasons.sw_thermal_slowdown,"
              "clocks_throttle_reasons.sw_power_cap"):
        try:
            out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out and "Field" not in out:
            state.update(zip(q.split(","), (v.strip() for v in out.split(",")), strict=False))
    return state


def gpu_probe() -> dict:
    """A health reading: bf16 4096^3 matmul TFLOP/s (H100 SXM ~600-750 when not throttled) plus gpu_state().

    Clocks and throttling move during a run (a hot card slows down several-fold), so the benchmark
    takes this before and after each section and interleaves the arms it compares.
    """
    if not torch.cuda.is_available():
        return {}
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    end.synchronize()
    ms = start.elapsed_time(end) / 20
    return {"matmul_tflops": 2 * 4096**3 / (ms / 1000) / 1e12, **gpu_state()}


def emit(result: dict, out: str | None, quiet: bool = False) -> None:
    text = json.dumps(result, indent=2, default=str)
    if not quiet:
        print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)

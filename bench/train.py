"""Train the full recipe on a full-size random-init SD1.5: Dreamy next to a stock loop, one process.

    python -m bench.train [--steps 60] [--warmup 10] [--variants default,fused,fused+compile] [--out X.json]
    python -m bench.train --tiny          # CPU smoke test of this script on the tiny model
    python -m bench.train --e2e [--steps 300 --every 100] [--out X.json]   # end to end, see run_e2e
    python -m bench.train --arch sdxl --preset word-style --steps 100 --out X.json   # SDXL: bench/train_sdxl.py

"Stock" is the loop of diffusers' ``examples/dreambooth/train_dreambooth.py`` for the recipe
(``--train_text_encoder --use_8bit_adam --mixed_precision fp16``, lr 2e-6 constant, batch 1,
512 px, no prior preservation): fp32 UNet + text encoder, fp16 VAE, accelerate's fp16 autocast +
GradScaler (plain autocast + GradScaler when accelerate is missing), bitsandbytes AdamW8bit over
both models, the VAE encoding every step, a per-step PIL crop, clip 1.0, zero_grad without
freeing. Dreamy is ``dreamy.training.train`` on the ``sweet-spot`` preset with validation off and a
checkpoint only at the end, once per variant. Both start from the very same weights; reported:
seconds per step (median after warm-up), peak GPU memory during the steps, first/last loss.
"""

from __future__ import annotations

import argparse
import gc
import itertools
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

from bench.common import build_full_sd15, emit, versions

VARIANTS = {
    "default": {},
    "fused": {"fused_params": True},
    "fused+compile": {"fused_params": True, "compile_unet": True},
    "fused+checkpointing": {"fused_params": True, "gradient_checkpointing": True},
}


def make_photos(folder: Path, n: int, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth, photo-like colour fields
        Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC).save(folder / f"photo{i}.png")
    return folder


def _cuda() -> bool:
    return torch.cuda.is_available()


def _reset_peak() -> None:
    if _cuda():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if _cuda() else None


def _summary(times: list[float], losses: list[float], warmup: int) -> dict:
    timed = times[warmup:] or times
    return {
        "s_per_step_median": statistics.median(timed),
        "s_per_step_mean": statistics.fmean(timed),
        "steps_timed": len(timed),
        "steps_total": len(times),
        "peak_vram_gb": _peak_gb(),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "finite_loss": all(math.isfinite(v) for v in losses),
    }


def run_ours(base: str, photos: Path, steps: int, warmup: int, extra: dict, resolution: int) -> dict:
    from dreamy.training import Finished, Notice, Started, StepDone, train

    models = Path(tempfile.mkdtemp(prefix="bench-train-"))
    overrides = {"max_train_steps": steps, "checkpointing_steps": steps, "validation_seeds": "",
                 "resolution": resolution, **extra}
    times, losses, notes = [], [], []
    last = None
    try:
        for ev in train(photos, name="bench", preset="sweet-spot", base=base, overrides=overrides, unlock=True,
                        models_dir=models):
            now = time.perf_counter()
            if isinstance(ev, Started):
                _reset_peak()
                last = time.perf_counter()
            elif isinstance(ev, StepDone):
                times.append(now - last)
                losses.append(ev.loss)
                last = now
            elif isinstance(ev, Notice):
                notes.append(ev.message)
            elif isinstance(ev, Finished):
                break
            if isinstance(ev, StepDone) and ev.step == steps:
                result = _summary(times, losses, warmup)  # before the final checkpoint is written
    finally:
        shutil.rmtree(models, ignore_errors=True)
    result["notes"] = notes
    return result


def run_stock(folder: Path, photos: Path, steps: int, warmup: int, resolution: int) -> dict:
    import bitsandbytes as bnb
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    device = torch.device("cuda" if _cuda() else "cpu")
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    vae.requires_grad_(False)
    half = torch.float16 if device.type == "cuda" else torch.float32
    vae.to(device, dtype=half)
    unet.to(device).train()
    text_encoder.to(device).train()
    optimizer = bnb.optim.AdamW8bit(itertools.chain(unet.parameters(), text_encoder.parameters()), lr=2e-6,
                                    betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    mode = "accelerate"
    try:
        from accelerate import Accelerator

        accelerator = Accelerator(mixed_precision="fp16" if device.type == "cuda" else "no",
                                  cpu=device.type == "cpu")
        unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
        backward, clip = accelerator.backward, accelerator.clip_grad_norm_
        step_fn = optimizer.step
    except ImportError:  # the same arithmetic accelerate sets up for fp16
        mode = "manual autocast + GradScaler"
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        forward_unet, forward_te = unet.forward, text_encoder.forward
        unet.forward = torch.autocast(device.type, dtype=half, enabled=device.type == "cuda")(forward_unet)
        text_encoder.forward = torch.autocast(device.type, dtype=half, enabled=device.type == "cuda")(forward_te)

        def backward(loss):
            scaler.scale(loss).backward()

        def clip(params, max_norm):
            scaler.unscale_(optimizer)
            return torch.nn.utils.clip_grad_norm_(params, max_norm)

        def step_fn():
            scaler.step(optimizer)
            scaler.update()

    images = [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.png"))]
    ids = tokenizer("a photo of sks person", padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    params = list(itertools.chain(unet.parameters(), text_encoder.parameters()))
    order = np.random.default_rng(0)
    times, losses = [], []
    _reset_peak()
    last = time.perf_counter()
    for _ in range(steps):
        im = images[order.integers(len(images))]  # the example's per-step PIL transform
        w, h = im.size
        left, top = order.integers(0, w - resolution + 1), order.integers(0, h - resolution + 1)
        arr = np.asarray(im.crop((left, top, left + resolution, top + resolution)), dtype=np.float32)
        pixels = (torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1).to(device, dtype=half)
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,), device=device).long()
        noisy = noise_scheduler.add_noise(latents, noise, t)
        encoder_hidden_states = text_encoder(ids)[0]
        pred = unet(noisy, t, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        backward(loss)
        clip(params, 1.0)
        step_fn()
        optimizer.zero_grad(set_to_none=False)
        losses.append(loss.detach().item())  # the example logs the loss every step
        now = time.perf_counter()
        times.append(now - last)
        last = now
    result = _summary(times, losses, warmup)
    result["precision"] = mode
    return result  # the models go with this frame


def run_e2e(base: str, photos: Path, steps: int, every: int, resolution: int, extrapolate_to: int,
            validation: dict | None = None) -> dict:
    """The user's own ``train()`` call, end to end: the ``sweet-spot`` recipe with its defaults (speed
    choices, validation seeds and Dream preset) for ``steps`` steps, a checkpoint and a validation row
    every ``every``. Timed from the call to ``Finished``; a step's pure time is the time between the event
    before it and its ``StepDone``. Extrapolated to ``extrapolate_to`` steps (said so in the result):
    fixed costs once, the checkpoint overhead per checkpoint, the median step for the rest."""
    from dreamy.training import CheckpointSaved, Finished, Notice, Started, StepDone, ValidationDone, train

    models = Path(tempfile.mkdtemp(prefix="bench-train-e2e-"))
    overrides = {"max_train_steps": steps, "checkpointing_steps": every, "resolution": resolution}
    step_s: list[float] = []
    marks: dict[str, float] = {}
    saved_at: dict[int, float] = {}
    validation_s: dict[int, float] = {}
    notes: list[str] = []
    sizes: dict[str, int] = {}
    timeline: list[tuple[str, int, float]] = []  # (event, step, seconds since the call): where the time went
    t0 = last = time.perf_counter()
    try:
        for ev in train(photos, name="e2e", preset="sweet-spot", base=base, overrides=overrides, unlock=True,
                        models_dir=models, validation=validation):
            now = time.perf_counter()
            if isinstance(ev, Started):
                _reset_peak()
                marks["started_s"] = now - t0
            elif isinstance(ev, StepDone):
                step_s.append(now - last)
                if ev.step == 1:
                    marks["first_step_done_s"] = now - t0
            elif isinstance(ev, CheckpointSaved):
                saved_at[ev.step] = now
            elif isinstance(ev, ValidationDone):
                validation_s[ev.step] = now - saved_at.get(ev.step, last)
            elif isinstance(ev, Notice):
                notes.append(ev.message)
            elif isinstance(ev, Finished):
                marks["wall_s"] = now - t0
                for f in sorted((ev.run_dir / "checkpoints").glob(f"step-{steps:04d}/**/*")):
                    if f.is_file():
                        sizes[str(f.relative_to(ev.run_dir / "checkpoints" / f"step-{steps:04d}"))] = f.stat().st_size
            timeline.append((type(ev).__name__, ev.step, round(now - t0, 3)))
            last = now
            print(f"[e2e] {now - t0:8.1f}s {ev.describe()}", flush=True)
    finally:
        shutil.rmtree(models, ignore_errors=True)
    warm = 10
    median = statistics.median(step_s[warm:])
    warmup_extra = sum(step_s[:warm]) - warm * median  # the first steps' compile and warm-up
    before_first = marks["first_step_done_s"] - step_s[0]  # set-up, the base model's row, the fast-path capture
    at = {s: t for kind, s, t in timeline if kind == "StepDone"}
    last_step_at = at[steps]
    tail = marks["wall_s"] - last_step_at  # the last checkpoint: its snapshot, row, meter and the last write
    # Period k: from checkpoint k's step to the next checkpoint's, beyond the median steps: the loop's hold at
    # the checkpoint and the steps its background write and row slowed. The first pays once-only costs
    # (pinned host buffers, first write); the later ones are the steady cost each checkpoint adds.
    periods = [at[m + every] - at[m] - every * median for m in range(every, steps, every)]
    per_ckpt = statistics.mean(periods[1:] or periods) if periods else 0.0
    fixed = at[min(every, steps)] - min(every, steps) * median + ((periods[0] - per_ckpt) if periods else 0.0)
    n = extrapolate_to
    e2e_n = fixed + n * median + (n // every - 1) * per_ckpt + tail
    return {
        "steps": steps, "checkpointing_steps": every, "peak_vram_gb": _peak_gb(),
        "s_per_step_median": median, "steps_per_s": 1.0 / median,
        "pure_step_s": steps * median, "wall_s": marks["wall_s"], "ratio_e2e_over_pure": marks["wall_s"] / (steps * median),
        "set_up_and_step0_row_s": before_first, "first_steps_extra_s": warmup_extra,
        "per_checkpoint_overhead_s": per_ckpt, "checkpoint_periods_extra_s": periods,
        "last_checkpoint_and_end_s": tail, "validation_row_s": validation_s,
        "checkpoint_files_bytes": sizes, "checkpoint_bytes": sum(sizes.values()),
        "extrapolated": {"to_steps": n, "how": "fixed (set-up, step-0 row, warm-up, the first checkpoint's "
                         f"once-only costs) once + median step x {n} + the steady per-checkpoint overhead (its hold "
                         f"and the steps it slowed; mean of the checkpoints after the first) x {n // every - 1} + the "
                         f"last checkpoint and end once; measured on {steps} steps",
                         "wall_s": e2e_n, "pure_step_s": n * median, "ratio_e2e_over_pure": e2e_n / (n * median)},
        "timeline": timeline,
        "notes": notes,
    }


def _free() -> None:
    gc.collect()
    if _cuda():
        torch.cuda.empty_cache()


def main() -> None:
    import sys

    if "--arch" in sys.argv:  # --arch sdxl: bench/train_sdxl.py (a preset's SDXL recipe, full-size random init)
        i = sys.argv.index("--arch")
        arch = sys.argv[i + 1] if i + 1 < len(sys.argv) else ""
        rest = sys.argv[1:i] + sys.argv[i + 2 :]
        if arch == "sdxl":
            from bench.train_sdxl import main as sdxl_main

            sdxl_main(rest)
            return
        if arch != "sd15":
            raise SystemExit(f"--arch must be sd15 or sdxl, got {arch!r}")
        sys.argv[1:] = rest
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--variants", default="default,fused,fused+compile",
                    help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--no-stock", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="the tiny model at 64 px on the CPU (smoke test)")
    ap.add_argument("--e2e", action="store_true", help="end to end: the sweet-spot recipe through train(), with "
                    "checkpoints and validation every --every steps, beside the stock step")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--extrapolate-to", type=int, default=1200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.e2e and args.steps == 60:
        args.steps = 300
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # optional CPU 4-bit kernels: not used

    work = Path(tempfile.mkdtemp(prefix="bench-train-data-"))
    try:
        if args.tiny:
            from dreamy.models.tiny import ensure_tiny_model

            folder, base, resolution = ensure_tiny_model(), "tiny", 64
        else:
            folder = build_full_sd15(work / "sd15-random")
            base, resolution = str(folder), 512
        photos = make_photos(work / "photos", 8, resolution + resolution // 4)
        result = {"versions": versions(), "steps": args.steps, "warmup": args.warmup, "resolution": resolution,
                  "model": "tiny" if args.tiny else "SD1.5 architecture, random init", "ours": {}}
        if args.e2e:
            if not args.no_stock:
                result["stock"] = run_stock(folder, photos, 40, args.warmup, resolution)
                _free()
            small = {"width": 64, "height": 64, "steps": 4} if args.tiny else None
            result["e2e"] = run_e2e(base, photos, args.steps, args.every, resolution, args.extrapolate_to, small)
            if "stock" in result:
                result["e2e"]["speedup_step_vs_stock"] = (result["stock"]["s_per_step_median"]
                                                          / result["e2e"]["s_per_step_median"])
            emit(result, args.out)
            return
        if not args.no_stock:
            result["stock"] = run_stock(folder, photos, args.steps, args.warmup, resolution)
            _free()
        for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
            result["ours"][name] = run_ours(base, photos, args.steps, args.warmup, VARIANTS[name], resolution)
            _free()
        if "stock" in result:
            stock_s = result["stock"]["s_per_step_median"]
            result["speedup_vs_stock"] = {k: stock_s / v["s_per_step_median"] for k, v in result["ours"].items()}
        emit(result, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def markdown(r: dict) -> str:
    """The Train table of docs/benchmarks.md from one result (``--e2e``: the end-to-end table)."""
    if "e2e" in r:
        e, x = r["e2e"], r["e2e"]["extrapolated"]
        stock = (r.get("stock") or {}).get("s_per_step_median")
        return "\n".join([
            "| default step | stock step | stock ÷ default | set-up + step-0 row | per checkpoint | last checkpoint + end "
            f"| {e['steps']} steps: wall / pure | {x['to_steps']} steps (extrapolated): wall / pure | peak VRAM |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {e['s_per_step_median']:.3f} s | {'—' if stock is None else format(stock, '.3f') + ' s'} | "
            f"{'—' if stock is None else format(stock / e['s_per_step_median'], '.2f')} | "
            f"{e['set_up_and_step0_row_s']:.1f} s | {e['per_checkpoint_overhead_s']:.1f} s | "
            f"{e.get('last_checkpoint_and_end_s', float('nan')):.1f} s | {e['wall_s']:.1f} / {e['pure_step_s']:.1f} s = "
            f"{e['ratio_e2e_over_pure']:.2f} | {x['wall_s']:.1f} / {x['pure_step_s']:.1f} s = "
            f"**{x['ratio_e2e_over_pure']:.2f}** | {e['peak_vram_gb']:.1f} GB |"])
    rows = ["| loop | s / step (median) | × stock | peak VRAM | loss first → last (finite) |", "|---|---|---|---|---|"]
    arms = ([("stock (train_dreambooth-equivalent)", r["stock"], 1.0)] if "stock" in r else []) + [
        (f"Dreamy `{name}`", arm, (r.get("speedup_vs_stock") or {}).get(name)) for name, arm in r["ours"].items()]
    for label, arm, ratio in arms:
        rows.append(f"| {label} | {arm['s_per_step_median']:.3f} | {'—' if ratio is None else format(ratio, '.2f')} | "
                    f"{arm['peak_vram_gb']:.2f} GB | {arm['first_loss']:.3f} → {arm['last_loss']:.3f} "
                    f"{'✓' if arm['finite_loss'] else '✗'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()

"""The corridor meter's cost per checkpoint on a full-size random-init SD1.5 (issue #20), one GPU.

    python -m bench.corridor [--out X.json]
    python -m bench.corridor --tiny      # CPU smoke test of this script on the tiny model

Times ``corridor_run.measure_raw`` for one checkpoint (8 photos and 4 validation dreams at 512 px,
as the sweet-spot recipe makes them) in the two forms it runs in: the training loop's live weights
(fp32 masters under fp16 autocast, the hook after each validation) and a checkpoint loaded in fp16
(``measure_run``). Beside it, what the loop already spends per checkpoint: the 4 validation renders
(sweet-spot's dream preset: 50 DDIM steps, guidance 3) and 100 training steps at the per-step time
docs/benchmarks.md reports for the default loop. Speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import build_full_sd15, timed, versions

STEP_S = 0.254  # docs/benchmarks.md: Dreamy's default loop, s/step (H100, sweet-spot recipe, 512 px)
STEPS_PER_CHECKPOINT = 100  # sweet-spot's checkpointing_steps


def _pictures(folder: Path, names: list[str], size: int, seed: int) -> None:
    """Smooth random pictures (a low-resolution noise field, upscaled): photo-like spectra, not white noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        small = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(folder / name)


def fake_run(root: Path, resolution: int, size: int) -> tuple[Path, Path]:
    """A run folder with run.json and validation dreams of steps 0 and 100 (seeds 0-3), and 8 photos."""
    photos, run = root / "photos", root / "run"
    _pictures(photos, [f"{i}.png" for i in range(8)], resolution, 1)
    _pictures(run / "validation", [f"step{s:06d}-seed{k:06d}.png" for s in (0, 100) for k in range(4)], size, 2)
    settings = {"resolution": resolution, "instance_prompt": "a photo of sks person", "trigger_word": "sks",
                "captions": "prompt"}
    (run / "run.json").write_text(json.dumps({"recipe": {"preset": "sweet-spot", "settings": settings}}))
    return run, photos


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from dreamy.models.sources import load_model
    from dreamy.recipes.recipe import resolve
    from dreamy.training import corridor_run as cr
    from dreamy.training.data import prepare_images
    from dreamy.training.validation import render_seeds

    cuda = torch.cuda.is_available() and not args.tiny
    work = Path(tempfile.mkdtemp(prefix="bench-corridor-"))
    source = "tiny" if args.tiny else str(build_full_sd15(work / "sd15-random"))
    resolution = 64 if args.tiny else 512
    run, photos = fake_run(work, resolution, resolution)
    device = "cuda" if cuda else "cpu"
    dream = resolve("sweet-spot", "dream", {"width": resolution, "height": resolution, "steps": 5} if args.tiny
                    else None, unlock=True)
    images = prepare_images(photos, resolution=resolution, prompt="a photo of sks person", trigger="sks").images
    out: dict = {"model": "tiny" if args.tiny else "SD1.5 architecture, random init", "versions": versions(),
                 "resolution": resolution, "photos": len(images), "dreams_per_step": 4}

    ckpt = load_model(source, device=device, precision="fp16")  # measure_run's form
    ps = cr.photo_set(ckpt, images, resolution, "sks")
    out["photo_set"] = timed(lambda: cr.photo_set(ckpt, images, resolution, "sks"), args.repeats)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out["checkpoint_fp16"] = timed(lambda: cr.measure_raw(ckpt, ps, run, 100), args.repeats)
    if cuda:
        out["checkpoint_fp16"]["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30

    live = load_model(source, device=device, precision="fp32")  # the loop's: fp32 masters, fp16 compute
    if cuda:
        live.vae.to(torch.float16)
        live.dtype = torch.float16
    out["live_autocast"] = timed(lambda: cr.measure_raw(live, ps, run, 100), args.repeats)
    out["validation_4_seeds"] = timed(lambda: list(render_seeds(live, dream, [0, 1, 2, 3])), 2)
    interval = STEPS_PER_CHECKPOINT * STEP_S + out["validation_4_seeds"]["median_s"]
    out["between_checkpoints_s"] = interval
    out["meter_share_of_interval"] = out["live_autocast"]["median_s"] / interval
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Dream on a full-size random-init SD1.5 in fp16: Dreamy's fast path next to stock diffusers, one process.

    python -m bench.dream [--repeats 5] [--batch 16] [--levels graph,compile] [--budget-s 480] [--out r.json]
    python -m bench.dream --ttfi FOLDER [--level graph]     # time to first image, in a fresh process

Stock is ``StableDiffusionPipeline`` built from the very same modules, with the preset's DDIM
scheduler assigned after construction (as the recipe does), per-seed CPU generators, no safety
checker. For stock and for each fast-path level it reports s/image at batch 1, images/s at
``--batch`` (a sweep of two batches, as the studio runs it), warm-up/capture/compile cost,
exactness against stock (identical / max |delta| / PSNR) at batch 1 and at ``--batch``, and each
seed's batch-vs-alone spread next to stock's own.

The arms are timed interleaved (stock, graph, compile, stock, ...) because an H100's clocks drift
with its temperature; a matmul probe with nvidia-smi's clocks and throttle reasons is recorded
around every section. The compile level runs on a second copy of the model (it switches the
weights to channels_last). Peak memory and time to first image come from fresh processes
(``--ttfi``), where nothing else holds GPU memory. Sections past ``--budget-s`` are skipped (and
recorded), and the JSON is rewritten after every section, so a cut-off run keeps its numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from bench.common import build_full_sd15, compare, emit, gpu_probe, summarise, versions

SEEDS = [0, 1, 2, 3]  # exactness is checked on these


def ttfi(folder: str, level: str, batch: int) -> dict:
    """A studio start in this fresh process: imports, load, capture (+ compile), first image; then
    peak memory at batch 1 and over a sweep of two batches of ``batch`` (nothing else on the GPU)."""
    t0 = time.perf_counter()
    from dreamy.dreaming.dreams import dream_iter
    from dreamy.models.sources import load_model

    torch.cuda.init()
    t1 = time.perf_counter()
    model = load_model(folder, device="cuda")
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    image = next(dream_iter(model, "biased-dreams", [0], fast=level)).image
    t3 = time.perf_counter()
    next(dream_iter(model, "biased-dreams", [1], fast=level))
    t4 = time.perf_counter()
    out = {"level": level, "import_s": t1 - t0, "load_s": t2 - t1, "first_image_s": t3 - t2,
           "total_s": t3 - t0, "second_image_s": t4 - t3, "image_std": float(np.asarray(image).std()),
           "path": model._dreamy_runner.level if getattr(model, "_dreamy_runner", None) else "generic",
           "b1_peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
           "b1_peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30}
    if batch > 1:
        model._dreamy_runner = None  # as a studio switching batch size: the b1 capture is let go
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        sweep = list(range(2 * batch))
        list(dream_iter(model, "biased-dreams", sweep, batch_size=batch, fast=level))
        t2 = time.perf_counter()
        list(dream_iter(model, "biased-dreams", sweep, batch_size=batch, fast=level))  # captured: steady state
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        out.update({f"b{batch}_first_sweep_s": t2 - t, f"b{batch}_sweep_images_per_s": len(sweep) / (t3 - t2),
                    f"b{batch}_peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
                    f"b{batch}_peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30})
    return out


def time_to_first_image(result: dict, folder: Path, level: str, batch: int, left) -> None:
    """Run ``--ttfi`` in a fresh process and file its figures under result["ttfi"]."""
    ttfi_all = result.setdefault("ttfi", {})
    if left() < (50 if level == "graph" else 150):
        result["skipped"].append(f"ttfi {level} (budget)")
        return
    try:
        p = subprocess.run([sys.executable, "-m", "bench.dream", "--ttfi", str(folder), "--level", level,
                            "--batch", str(batch)], capture_output=True, text=True, timeout=max(30, left() - 10))
        line = [x for x in p.stdout.splitlines() if x.startswith("{")]
        ttfi_all[level] = json.loads(line[-1]) if line else {"error": p.stderr[-1500:]}
    except subprocess.TimeoutExpired:
        ttfi_all[level] = {"error": "timed out"}


class _Records(logging.Handler):
    """Keeps the fast path's warnings (a fallback, a failed capture) in the result."""

    def __init__(self, into: list) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(self.format(record)[-3000:])


def _stats(times: list[float], n: int) -> dict:
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "max_s": max(times), "repeats": len(times),
            "s_per_image": med / n, "images_per_s": n / med}


def interleaved(arms: dict, calls: dict, rounds: int, warmup: int) -> dict:
    """Time each arm's call once per round, arms in turn (ABCABC...), so drift hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(warmup + rounds):
        for name, fn in arms.items():
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return {k: _stats(v, calls[k]) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16, help="the sweep batch size ('best batch')")
    ap.add_argument("--levels", default="graph,compile")
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip sections that would end past this")
    ap.add_argument("--out", default=None)
    ap.add_argument("--ttfi", default=None, metavar="FOLDER")
    ap.add_argument("--level", default="graph")
    ap.add_argument("--ttfi-only", action="store_true", help="only the fresh-process time-to-first-image section")
    args = ap.parse_args(argv)
    if args.ttfi:
        print(json.dumps(ttfi(args.ttfi, args.level, args.batch)))
        return {}
    if args.ttfi_only:
        t0 = time.perf_counter()
        result = {"bench": "dream-ttfi", "versions": versions(), "skipped": []}
        folder = build_full_sd15(Path(tempfile.mkdtemp()) / "sd15-random")
        torch.cuda.empty_cache()
        for lv in [v for v in args.levels.split(",") if v]:
            time_to_first_image(result, folder, lv, args.batch, lambda: args.budget_s - (time.perf_counter() - t0))
            emit(result, args.out, quiet=True)
        print(json.dumps(result.get("ttfi"), indent=1, default=str))
        return result

    t_start = time.perf_counter()

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from dreamy.dreaming.blocks import encode_prompt
    from dreamy.dreaming.dreams import dream_iter
    from dreamy.models.sources import load_model
    from dreamy.recipes.presets import load_preset

    B = args.batch
    levels = [v for v in args.levels.split(",") if v]
    result: dict = {"bench": "dream", "model": "full-size SD1.5 architecture, random weights, fp16",
                    "recipe": "biased-dreams: 512x512, 50 DDIM steps, guidance 3.0",
                    "command": "python -m bench.dream " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "versions": versions(), "probes": {"start": gpu_probe()}, "skipped": [], "log": []}
    logging.getLogger("dreamy.dreaming.fast").setLevel(logging.DEBUG)
    logging.getLogger("dreamy.dreaming.fast").addHandler(_Records(result["log"]))

    def save() -> None:
        emit(result, args.out, quiet=True)

    def probe(name: str) -> None:
        result["probes"][name] = gpu_probe()
        save()

    folder = build_full_sd15(Path(tempfile.mkdtemp()) / "sd15-random")
    t = time.perf_counter()
    model = load_model(str(folder), device="cuda")  # through our folder loader, fp16
    result["load_s"] = time.perf_counter() - t
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

    models = {"graph": model}  # stock and the bit-exact level share weights; compile gets its own copy

    def ours(level, seeds, batch):
        return [np.asarray(r.image)
                for r in dream_iter(models[level], preset, list(seeds), batch_size=batch, fast=level)]

    def first_call(level: str, batch: int) -> list:
        """The call that captures (and compiles): its cost is the level's warm-up, reported apart."""
        t = time.perf_counter()
        images = ours(level, range(batch), batch)
        runner = getattr(models[level], "_dreamy_runner", None)
        if runner is None or runner.level != level:
            raise RuntimeError(f"the {level} level fell back ({'; '.join(result['log'])[-800:]})")
        arm = result.setdefault(level, {"path": {"graph": "cuda-graph", "compile": "cuda-graph+compile"}[level]})
        arm[f"first_call_b{batch}_s"] = time.perf_counter() - t
        arm[f"b{batch}_setup"] = runner.stats
        return images

    # stock's footprint at batch 1, before anything else holds GPU memory (also its first warm-up)
    torch.cuda.reset_peak_memory_stats()
    stock_images([0])
    result["stock_b1_memory"] = {"peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
                                 "peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30}

    # ---- warm-ups and captures at batch 1 (the bit-exact level first: nothing else is worth the time without it)
    try:
        first_call("graph", 1)
    except Exception as e:
        result["smoke_error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
        save()
        print(json.dumps(result, indent=1, default=str)[-6000:])
        return result
    if "compile" in levels and left() > 300:
        try:
            models["compile"] = load_model(str(folder), device="cuda")
            first_call("compile", 1)
        except Exception as e:
            result["compile_error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
            models.pop("compile", None)
    elif "compile" in levels:
        result["skipped"].append("compile (budget)")
    live = [lv for lv in levels if lv in models]
    probe("after_b1_setup")

    # ---- batch 1, interleaved ----------------------------------------------------------------
    arms = {"stock": lambda: stock_images([0])} | {lv: (lambda lv=lv: ours(lv, [0], 1)) for lv in live}
    b1 = interleaved(arms, {k: 1 for k in arms}, args.repeats, warmup=1)
    result["stock_b1"] = b1["stock"]
    for lv in live:
        result[lv]["b1"] = b1[lv] | {"speedup_vs_stock": b1["stock"]["median_s"] / b1[lv]["median_s"]}
        result[lv]["b1"]["parts_ms"] = models[lv]._dreamy_runner.time_parts()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        encode_prompt(model, d.prompt)
    torch.cuda.synchronize()
    result["text_encoder_ms_per_call"] = (time.perf_counter() - t) / 5 * 1000
    probe("after_b1_timing")

    # ---- exactness at batch 1, and stock's own spread under a pinned SDPA backend
    ref_b1 = {s: stock_images([s])[0] for s in SEEDS}
    ours_b1 = {lv: {s: ours(lv, [s], 1)[0] for s in SEEDS} for lv in live}
    for lv in live:
        result[lv]["exact_vs_stock_b1"] = summarise([compare(ours_b1[lv][s], ref_b1[s]) for s in SEEDS])
    from torch.nn.attention import SDPBackend, sdpa_kernel

    spread = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:  # math as the fall-back for shapes the pinned backend refuses (the VAE's 512-wide head)
            with sdpa_kernel([backend, SDPBackend.MATH]):
                spread[name] = summarise([compare(stock_images([s])[0], ref_b1[s]) for s in SEEDS[:2]])
        except RuntimeError as e:
            spread[name] = {"error": str(e)[:200]}
    result["stock_backend_spread"] = spread  # stock vs itself with the SDPA backend pinned: the tolerance
    probe("after_exactness")

    # ---- best batch: captures (+ compiles) at B, then stock's batch call and our two-batch sweeps, interleaved
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ref_bB = stock_images(range(B))  # also stock's warm-up at this shape
    weights = sum(p.numel() * p.element_size() for m in (model.unet, model.vae, model.text_encoder)
                  for p in m.parameters())
    # other arms hold memory in this process too, so: stock's own weights + its working set above what was resident
    result[f"stock_b{B}_memory"] = {"peak_allocated_gb": (weights + torch.cuda.max_memory_allocated() - resident) / 2**30}
    result["stock_batch_spread"] = summarise([compare(ref_bB[s], ref_b1[s]) for s in SEEDS])
    for lv in list(live):
        if left() < (40 if lv == "graph" else 170):
            result["skipped"].append(f"{lv} b{B} (budget)")
            live.remove(lv)
            continue
        try:
            imgs = first_call(lv, B)
        except Exception as e:
            result[lv][f"b{B}_error"] = f"{type(e).__name__}: {e}"
            live.remove(lv)
            continue
        result[lv][f"exact_vs_stock_b{B}"] = summarise([compare(imgs[s], ref_bB[s]) for s in range(B)])
        result[lv]["batch_invariance"] = summarise([compare(imgs[s], ours_b1[lv][s]) for s in SEEDS])
    save()
    sweep = list(range(2 * B))  # two batches: the second is queued while the first is handed over
    arms = {"stock": lambda: stock_images(range(B))} | {lv: (lambda lv=lv: ours(lv, sweep, B)) for lv in live}
    rounds = 2 if left() > 120 else 1
    bB = interleaved(arms, {"stock": B} | {lv: len(sweep) for lv in live}, rounds, warmup=0)
    result[f"stock_b{B}"] = bB["stock"]
    for lv in live:
        result[lv][f"sweep_b{B}"] = bB[lv] | {
            "speedup_vs_stock_b1": result["stock_b1"]["median_s"] / bB[lv]["s_per_image"],
            f"speedup_vs_stock_b{B}": bB["stock"]["s_per_image"] / bB[lv]["s_per_image"]}
        result[lv][f"parts_ms_b{B}"] = models[lv]._dreamy_runner.time_parts(3)
    probe("after_best_batch")

    # ---- time to first image and clean peak memory, in fresh processes (compile reuses Inductor's disk cache);
    # this process lets go of its captures first, or at batch 32 it would hold most of the GPU
    from dreamy.dreaming.fast import drop_fast_state

    for m in models.values():
        drop_fast_state(m)
    models.clear()
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    for lv in levels:
        if lv in result and "b1" in result[lv]:
            time_to_first_image(result, folder, lv, B, left)
            save()
    probe("end")
    result["wall_s"] = time.perf_counter() - t_start
    save()
    print(markdown(result))
    return result


def _fmt(x, spec=".2f") -> str:
    return "—" if x is None else format(x, spec)


def _exact(e: dict | None) -> str:
    if not e:
        return "—"
    if e.get("identical_all"):
        return "bit-identical"
    psnr = e["psnr_db_min"]
    return f"max Δ {e['max_abs_max']:.0f}/255, PSNR ≥ {'∞' if math.isinf(psnr) else format(psnr, '.1f')} dB"


def markdown(r: dict) -> str:
    """The Dream table of docs/benchmarks.md from one result."""
    B = next((int(m[1]) for k in r if (m := re.fullmatch(r"stock_b(\d+)", k)) and m[1] != "1"), 16)
    rows = ["| path | batch | s / image (median) | images / s | × stock b1 | peak VRAM allocated / reserved | "
            "exactness vs stock (same batch) |", "|---|---|---|---|---|---|---|"]
    s1, sB = r.get("stock_b1", {}), r.get(f"stock_b{B}", {})
    m1, mB = r.get("stock_b1_memory", {}), r.get(f"stock_b{B}_memory", {})
    rows.append(f"| stock `StableDiffusionPipeline` | 1 | {_fmt(s1.get('s_per_image'), '.3f')} | "
                f"{_fmt(s1.get('images_per_s'))} | 1.00 | {_fmt(m1.get('peak_allocated_gb'))} / "
                f"{_fmt(m1.get('peak_reserved_gb'))} GB | — |")
    if sB:
        rows.append(f"| stock | {B} | {sB['s_per_image']:.3f} | {sB['images_per_s']:.2f} | "
                    f"{s1['median_s'] / sB['s_per_image']:.2f} | {_fmt(mB.get('peak_allocated_gb'))} / — GB | — |")
    for level in ("graph", "compile"):
        arm, mem = r.get(level) or {}, (r.get("ttfi") or {}).get(level) or {}
        if "b1" in arm:
            b = arm["b1"]
            rows.append(f"| Dreamy {arm['path']} | 1 | {b['s_per_image']:.3f} | {b['images_per_s']:.2f} | "
                        f"{b['speedup_vs_stock']:.2f} | {_fmt(mem.get('b1_peak_allocated_gb'))} / "
                        f"{_fmt(mem.get('b1_peak_reserved_gb'))} GB | {_exact(arm.get('exact_vs_stock_b1'))} |")
        sw = arm.get(f"sweep_b{B}")
        if sw:
            rows.append(f"| Dreamy {arm['path']} | {B} | {sw['s_per_image']:.3f} | {sw['images_per_s']:.2f} | "
                        f"{sw['speedup_vs_stock_b1']:.2f} | {_fmt(mem.get(f'b{B}_peak_allocated_gb'))} / "
                        f"{_fmt(mem.get(f'b{B}_peak_reserved_gb'))} GB | {_exact(arm.get(f'exact_vs_stock_b{B}'))} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()

"""Enlarge benchmark: SUPIR 512 -> 2048 through ``enlarge()`` on full-size random-init SDXL + SUPIR parts.

    python -m bench.enlarge --out docs/bench-enlarge-h100.json [--repeats 2] [--per-batch 3,9] [--budget-s 540]
    python -m bench.enlarge --tiny --out /tmp/bench-enlarge-tiny.json     # the harness itself, CPU demo model
    python -m bench.enlarge --arms "" --batch 8 --out docs/bench-enlarge-batch.json   # the batch alone
    python -m bench.enlarge --tiny --arms "" --batch 3 --out /tmp/b.json  # the batch harness on the CPU

The models have SDXL's and SUPIR v0's full architecture (UNet 2.6 B, GLVControl 1.24 B parameters)
with random weights, put together through the same official-key loader as real checkpoints, in
SUPIR's dtypes: fp16 diffusion, bf16 VAE and denoise encoder. Speed and memory do not depend on the
weights' values. Each arm runs the biased-dreams recipe (30 steps, CFG 4 -> 3, churn 5, wavelet
colour fix) on a 512x512 picture, once to warm up and then ``--repeats`` times; it reports seconds
per image (median), the time of each phase (stage 1, sampling, decode + colour fix + PNG) and the peak
GPU memory (allocated and reserved, weights included). Arms: tiled (SUPIR's 128/64 latent tiles, with
``--per-batch`` tiles per forward, and its tiled VAE) and untiled (one 256x256 latent; it needs far
more memory and is reported as out of memory where it does not fit).

``--batch N`` (default 8; 0 skips it) then enlarges N different 512x512 keepers as one batch, the
way ``python -m dreamy enlarge keepers/ --out big/`` does (enlarging/batch.py ``enlarge_iter``: the
models stay loaded, one PNG each with its recipe): it reports the first picture's time, the seconds
per picture after the first (median and mean) and the time of a rerun that finds every picture
enlarged already (resuming costs only reading the recipes). The models are built before it, as for
the arms (``build_s``), so "first" is the first picture's own warm-up, not the weights' loading;
``warm_before`` says whether arms ran before it. With ``--tiny`` the batch runs x1 and 2 steps.

``--official PATH`` (a checkout of Fanghua-Yu/SUPIR, with einops and omegaconf importable) adds the
official sampler as the baseline (bench/supir_official.py): on the same weights, stage-1 latent,
prompts and noise, the sampling phase alone, ours against theirs, tiled and untiled, with the
relative L2 distance between the two final latents. The official code stays out of this repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import CONFIGS, compare, emit, gpu_probe, versions

TARGET_S, TARGET_GB = 10.0, 16.0  # issue 4: per image on an H100, peak VRAM of the tiled run


def build_full_models(device: torch.device, seed: int = 0):
    """EnlargeModels with SDXL's and SUPIR v0's full architecture and random weights, SUPIR's dtypes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from dreamy.enlarging.connectors import Connectors
    from dreamy.enlarging.control import GLVControl
    from dreamy.enlarging.model import assemble_supir
    from dreamy.enlarging.models import EnlargeModels, dtypes
    from dreamy.enlarging.tiny import official_state_dict
    from dreamy.models.clip_vocab import write_byte_tokenizer
    from dreamy.recipes.recipe import ModelRef

    dtype, vae_dtype = dtypes("fp16", device)
    src = CONFIGS / "sdxl"
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(src / "unet")).to(dtype)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(src / "vae")).to(vae_dtype)
        denoise = AutoencoderKL.from_config(AutoencoderKL.load_config(src / "vae")).encoder.to(vae_dtype)
        control = GLVControl.from_unet(unet)  # SUPIR's starting point: a copy of the UNet's encoder
        torch.nn.init.normal_(control.hint_conv.weight, std=0.02)
        connectors = Connectors.for_unet(unet)
        texts = (CLIPTextModel(CLIPTextConfig.from_pretrained(src / "text_encoder")),
                 CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(src / "text_encoder_2")))
    # through the official-name loader, as a real SUPIR file would go
    state = official_state_dict(control, connectors, denoise.state_dict(), vae)
    del control, connectors, denoise
    supir = assemble_supir(state, unet, vae, dtype, name="random SUPIR v0")
    del state
    for module in (supir.control, supir.unet, vae, supir.denoise_encoder):
        module.to(device).eval().requires_grad_(False)
    texts = tuple(t.float().cpu().eval().requires_grad_(False) for t in texts)
    folder = Path(tempfile.mkdtemp(prefix="bench-enlarge-"))
    tokenizers = tuple(CLIPTokenizer.from_pretrained(write_byte_tokenizer(folder / n)) for n in ("tok", "tok2"))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ref = ModelRef(source="random-init", kind="random", sha256="0" * 64, label="full-size architecture, random weights")
    return EnlargeModels(supir=supir, vae=vae, tokenizers=tokenizers, text_encoders=texts, supir_ref=ref, base_ref=ref,
                         device=device, dtype=dtype, vae_dtype=vae_dtype)


def parameter_counts(models) -> dict:
    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    s = models.supir
    return {"unet": count(s.unet.unet), "control": count(s.control), "connectors": count(s.unet.connectors),
            "denoise_encoder": count(s.denoise_encoder.encoder), "vae": count(models.vae)}


class _Clock:
    """Phase times from the progress messages (synchronising the GPU at each)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.marks = cuda, {}

    def __call__(self, event) -> None:
        msg = event.message
        key = next((k for k, prefix in (("stage1", "stage 1"), ("sampling", "sampling"), ("decode", "decoding"),
                                        ("fix", "colour fix"), ("save", "saving")) if msg.startswith(prefix)), None)
        if key and key not in self.marks:  # only at phase changes: a sync per step would slow the arm
            if self.cuda:
                torch.cuda.synchronize()
            self.marks[key] = time.perf_counter()

    def phases(self, start: float, end: float) -> dict:
        m = self.marks
        try:
            out = {"prepare_s": m["stage1"] - start, "stage1_s": m["sampling"] - m["stage1"],
                   "sampling_s": m["decode"] - m["sampling"], "decode_fix_png_s": end - m["decode"]}
            if "fix" in m and "save" in m:
                out |= {"decode_s": m["fix"] - m["decode"], "fix_s": m["save"] - m["fix"], "png_s": end - m["save"]}
            return out
        except KeyError:
            return {}


def run_arm(models, picture: Path, out: Path, tiled: bool | None, repeats: int, enlarge_kwargs: dict) -> dict:
    from dreamy.enlarging.pipeline import enlarge

    cuda = models.device.type == "cuda"
    runs = []
    for i in range(repeats + 1):  # the first is the warm-up (cuDNN choices, text encoding)
        clock = _Clock(cuda)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        result = enlarge(picture, models=models, tiled=tiled, out_dir=out, seed=i, on_progress=clock, **enlarge_kwargs)
        if cuda:
            torch.cuda.synchronize()
        end = time.perf_counter()
        run = {"s": end - t, **clock.phases(t, end)}
        if cuda:
            run |= {"peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
                    "peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30}
        runs.append(run)
    arr = np.asarray(result.image)
    timed = runs[1:]
    arm = {"warmup": runs[0], "runs": timed, "s_per_image": statistics.median(r["s"] for r in timed),
           "output_size": list(result.image.size), "output_std": float(arr.std()), "image": arr,
           "runtime": {k: result.recipe.runtime.get(k) for k in ("tiled", "sampling_tiles", "vae_tiles", "dtype",
                                                                   "vae_dtype", "attention")}}
    for key in ("stage1_s", "sampling_s", "decode_fix_png_s", "decode_s", "fix_s", "png_s", "peak_allocated_gb",
                "peak_reserved_gb"):
        values = [r[key] for r in timed if key in r]
        if values:
            arm[key] = max(values) if key.startswith("peak") else statistics.median(values)
    return arm


def keepers(folder: Path, count: int, size: int) -> Path:
    """``count`` different ``size`` px pictures in ``folder`` (keeper-01.png ...): the batch's input."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, size, dtype=np.float64)
    for i in range(count):
        rng = np.random.default_rng(100 + i)
        base = np.stack([np.add.outer(ramp, ramp) / 2, np.roll(np.add.outer(ramp, 255 - ramp) / 2, 7 * i, 0),
                         np.tile(ramp, (size, 1))], -1)
        Image.fromarray((base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)).save(
            folder / f"keeper-{i + 1:02d}.png")
    return folder


def run_batch(models, work: Path, size: int, count: int, enlarge_kwargs: dict) -> dict:
    """``count`` keepers through enlarge_iter with the models loaded once: per-picture seconds, and a rerun."""
    from dreamy.enlarging.batch import enlarge_iter

    folder, out = keepers(work / "keepers", count, size), work / "big"
    cuda = models.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    marks, statuses = [], []
    for outcome in enlarge_iter(folder, out_dir=out, models=models, **enlarge_kwargs):
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        statuses.append(outcome.status if outcome.status != "failed" else f"failed: {outcome.error}")
    per = [b - a for a, b in zip([t, *marks[:-1]], marks, strict=True)]
    t2 = time.perf_counter()
    rerun = [o.status for o in enlarge_iter(folder, out_dir=out, models=models, **enlarge_kwargs)]
    rerun_s = time.perf_counter() - t2
    rest = per[1:]
    batch = {"pictures": count, "input_size": [size, size], "statuses": statuses, "per_picture_s": per,
             "first_s": per[0] if per else None,
             "s_per_picture_after_first": statistics.median(rest) if rest else None,
             "mean_s_per_picture_after_first": statistics.fmean(rest) if rest else None,
             "total_s": marks[-1] - t if marks else 0.0,
             "rerun_s": rerun_s, "rerun_all_skipped": rerun == ["skipped"] * count}
    if cuda:
        batch["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return batch


def _timed(fn, cuda: bool) -> tuple[float, float | None, torch.Tensor]:
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return time.perf_counter() - t, peak, out


def official_baseline(path: str, models, picture: Path, args, t0: float) -> dict:
    """Our sampling phase against the official sampler's, same weights, latent, prompts and noise."""
    from bench import supir_official
    from dreamy.enlarging.epsilon import SupirEpsilon
    from dreamy.enlarging.pipeline import sampler_settings
    from dreamy.enlarging.resize import target_size, to_model_input, upscale
    from dreamy.enlarging.sampler import restore_sample
    from dreamy.enlarging.stage1 import run_stage1
    from dreamy.enlarging.tiled_sampler import restore_sample_tiled
    from dreamy.recipes.presets import load_preset

    ns = supir_official.import_official(path)
    official = supir_official.official_modules(ns, models.supir)
    s = load_preset("biased-dreams").enlarge
    settings = sampler_settings(s)
    if args.official_steps:
        settings = dataclasses.replace(settings, steps=args.official_steps)
    with Image.open(picture) as im:
        lq = im.convert("RGB")
    size = target_size(*lq.size, s.upscale, models.min_side)
    cuda = models.device.type == "cuda"
    with torch.no_grad():
        hint = run_stage1(to_model_input(upscale(lq, size, s.upscale)).to(models.device), models.supir.denoise_encoder,
                          models.vae, tiled=models.vae_tiles).latent
    cond, uncond = models.conditioning(s.positive_prompt, s.negative_prompt)
    eps = SupirEpsilon(models.supir.control, models.supir.unet, cond, uncond)
    tiles = models.sampling_tiles
    out: dict = {"what": "sampling phase only (stage-1 latent, prompts and noise shared)", "latent": list(hint.shape),
                 "steps": settings.steps,
                 "official_dtype": "fp16 weights under fp16 autocast (--loading_half_params)"}
    for tiled in (True, False):
        name = "tiled" if tiled else "untiled"
        left = args.budget_s - (time.perf_counter() - t0)
        if left < 150:
            out[name] = {"skipped": f"budget: {left:.0f} s left"}
            continue

        def ours(tiled=tiled):
            with torch.no_grad():
                gen = torch.Generator("cpu").manual_seed(11)
                if tiled:
                    return restore_sample_tiled(eps, hint, settings, gen, None, tiles.size, tiles.stride, tiles.per_batch)
                return restore_sample(eps, hint, settings, gen)

        def theirs(tiled=tiled):
            return supir_official.official_sample(ns, official, cond, uncond, hint, settings, 11, tiled, models.dtype,
                                                  tiles.size, tiles.stride)

        try:
            arm: dict = {}
            for label, fn in (("ours", ours), ("official", theirs)):
                seconds, peak, latent = _timed(fn, cuda)
                arm[label] = {"sampling_s": seconds, "peak_allocated_gb": peak,
                              "finite": bool(torch.isfinite(latent).all())}
                arm[label + "_latent"] = latent
            a, b = arm.pop("ours_latent"), arm.pop("official_latent")
            arm["relative_l2"] = float((a - b).norm() / b.norm())
            arm["speedup"] = arm["official"]["sampling_s"] / arm["ours"]["sampling_s"]
            if tiled:
                arm["ours"]["tiles_per_forward"] = tiles.per_batch
                arm["official"]["tiles_per_forward"] = 1
        except Exception as e:
            from dreamy.errors import free_memory, is_out_of_memory

            arm = {"error": "out of memory" if is_out_of_memory(e) else f"{type(e).__name__}: {str(e)[:300]}",
                   "traceback": traceback.format_exc()[-2000:]}
            free_memory()
        out[name] = arm
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--per-batch", default="3", help="tiles per forward for the tiled arms (comma list)")
    ap.add_argument("--arms", default="auto,tiled,untiled,untiled-flash",
                    help="comma list of auto, tiled, untiled, with -flash / -compile variants")
    ap.add_argument("--budget-s", type=float, default=540.0, help="skip arms that would end past this")
    ap.add_argument("--batch", type=int, default=8, help="keepers enlarged as one batch after the arms (0: none)")
    ap.add_argument("--tiny", action="store_true", help="the demo models on the CPU: tests the harness, not speed")
    ap.add_argument("--official", default=None, metavar="PATH", help="a Fanghua-Yu/SUPIR checkout: time its sampler too")
    ap.add_argument("--official-steps", type=int, default=None, help="steps for the official comparison (default: 30)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result: dict = {"bench": "enlarge", "command": "python -m bench.enlarge " + " ".join(argv if argv is not None
                    else sys.argv[1:]), "versions": versions(), "targets": {"s_per_image": TARGET_S,
                    "tiled_peak_gb": TARGET_GB}, "arms": {}, "skipped": [],
                    "official": "not run (give --official PATH_TO_SUPIR_CHECKOUT)"}

    def save() -> None:
        emit(result, args.out, quiet=True)

    from dreamy.enlarging.models import load_enlarge_models

    if args.tiny:
        models = load_enlarge_models("tiny", "tiny", device="cpu")
        size, result["model"] = 64, "tiny demo (CPU): a harness check, not a speed figure"
    elif not torch.cuda.is_available():
        result["status"] = "skipped: needs a CUDA GPU (or --tiny)"
        save()
        print(result["status"])
        return result
    else:
        result["probes"] = {"start": gpu_probe()}
        t = time.perf_counter()
        models = build_full_models(torch.device("cuda"))
        result["build_s"] = time.perf_counter() - t
        result["parameters"] = parameter_counts(models)
        result["weights_gb"] = torch.cuda.memory_allocated() / 2**30
        size, result["model"] = 512, "full-size SDXL + SUPIR v0 architecture, random weights, fp16 / bf16 VAE"
    result["recipe"] = "biased-dreams [enlarge]: x4, 30 steps, CFG 4->3 linear, churn 5, noise 1.003, wavelet"
    save()
    work = Path(tempfile.mkdtemp(prefix="bench-enlarge-out-"))
    picture = work / "input.png"
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float64)
    base = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2, np.tile(ramp, (size, 1))], -1)
    Image.fromarray((base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)).save(picture)

    # (name, tiled, tiles per forward, options): "auto" is what enlarge() picks by itself on this GPU;
    # "-flash" keeps PyTorch's default attention kernel (DREAMY_SDPA=default), "-compile" runs the
    # UNet and GLVControl through torch.compile (its first run, the warm-up, includes the compile).
    arms: list[tuple[str, bool | None, int | None, set[str]]] = []
    for name in args.arms.split(","):
        base, *opts = name.split("-")
        if base == "tiled":
            arms += [(f"tiled_b{k}" + "".join(f"-{o}" for o in opts), True, int(k), set(opts))
                     for k in args.per_batch.split(",") if k]
        elif base in ("untiled", "auto"):
            arms.append((name, None if base == "auto" else False, None, set(opts)))
    longest = 0.0
    images: dict[str, np.ndarray] = {}
    for name, tiled, per_batch, opts in arms:
        left = args.budget_s - (time.perf_counter() - t0)
        need = longest * (args.repeats + 1) * 1.2 + (240 if "compile" in opts else 0)
        if left < need:
            result["skipped"].append(f"{name} (budget: {left:.0f} s left)")
            continue
        arm_models = models
        if per_batch is not None:
            arm_models = dataclasses.replace(models, sampling_tiles=dataclasses.replace(models.sampling_tiles,
                                                                                      per_batch=per_batch))
        if "compile" in opts:
            supir = dataclasses.replace(models.supir, control=torch.compile(models.supir.control, dynamic=False),
                                        unet=torch.compile(models.supir.unet, dynamic=False))
            arm_models = dataclasses.replace(arm_models, supir=supir)
        saved_env = os.environ.get("DREAMY_SDPA")
        if "flash" in opts:
            os.environ["DREAMY_SDPA"] = "default"
        try:
            arm = run_arm(arm_models, picture, work / name, tiled, args.repeats, {})
            longest = max(longest, arm["s_per_image"], 0 if "compile" in opts else arm["warmup"]["s"])
            images[name] = arm.pop("image")
        except Exception as e:  # an arm that does not fit must not take the others down
            from dreamy.errors import free_memory, is_out_of_memory

            arm = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            if is_out_of_memory(e):
                arm["out_of_memory"] = True
            else:
                arm["traceback"] = traceback.format_exc()[-2000:]
            free_memory()
        finally:
            if saved_env is None:
                os.environ.pop("DREAMY_SDPA", None)
            else:
                os.environ["DREAMY_SDPA"] = saved_env
        result["arms"][name] = arm
        save()
    # exactness between arms (same seeds): each against the first untiled arm, PyTorch's kernels first
    reference = next((n for n in ("untiled-flash", "untiled") if n in images), None)
    if reference:
        result["exactness_vs"] = reference
        for name, arr in images.items():
            if name != reference and name in result["arms"]:
                result["arms"][name]["vs_reference"] = compare(arr, images[reference])
        save()
    if args.batch > 0:
        left = args.budget_s - (time.perf_counter() - t0)
        need = longest * args.batch * 1.2
        if left < need:
            result["batch"] = {"skipped": f"budget: {left:.0f} s left, about {need:.0f} s needed"}
        else:
            quick = {"overrides": {"upscale": 1.0, "steps": 2}, "unlock": True} if args.tiny else {}
            try:
                result["batch"] = run_batch(models, work / "batch", size, args.batch, quick)
                result["batch"]["warm_before"] = bool(result["arms"])
            except Exception as e:  # reported, never fatal to the other measures
                from dreamy.errors import free_memory

                result["batch"] = {"error": f"{type(e).__name__}: {str(e)[:300]}",
                                   "traceback": traceback.format_exc()[-2000:]}
                free_memory()
        save()
    if args.official:
        try:
            result["official"] = official_baseline(args.official, models, picture, args, t0)
        except Exception as e:  # the baseline is optional: say why it did not run
            result["official"] = {"error": f"{type(e).__name__}: {str(e)[:300]}", "traceback": traceback.format_exc()[-2000:]}
        save()
    if torch.cuda.is_available() and not args.tiny:
        result["probes"]["end"] = gpu_probe()
    result["wall_s"] = time.perf_counter() - t0
    save()
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    """The Enlarge table of docs/benchmarks.md from one result."""
    ref = r.get("exactness_vs", "—")
    rows = ["| arm | tiled | attention | s / image (median) | first run | stage 1 | sampling | decode + fix + PNG | "
            f"peak VRAM allocated / reserved | vs `{ref}` (max Δ, PSNR) |",
            "|---|---|---|---|---|---|---|---|---|---|"]

    def f(x, spec=".2f"):
        return "—" if x is None else format(x, spec)

    for name, arm in (r.get("arms") or {}).items():
        if "error" in arm:
            rows.append(f"| {name} | {'out of memory' if arm.get('out_of_memory') else arm['error'][:60]} |"
                        + " |" * 8)
            continue
        rt, vs = arm.get("runtime") or {}, arm.get("vs_reference")
        exact = "—" if not vs else ("identical" if vs["identical"] else f"{vs['max_abs']:.0f}/255, {vs['psnr_db']:.1f} dB")
        rows.append(f"| {name} | {rt.get('tiled')} | {rt.get('attention')} | {f(arm['s_per_image'])} | "
                    f"{f(arm['warmup']['s'])} | {f(arm.get('stage1_s'))} | {f(arm.get('sampling_s'))} | "
                    f"{f(arm.get('decode_fix_png_s'))} | {f(arm.get('peak_allocated_gb'))} / "
                    f"{f(arm.get('peak_reserved_gb'))} GB | {exact} |")
    batch = r.get("batch")
    if isinstance(batch, dict) and batch.get("first_s") is not None:
        rows += ["", "| batch of keepers | first picture | s / picture after the first (median, mean) | "
                 "rerun, all skipped | peak VRAM |", "|---|---|---|---|---|",
                 f"| {batch['pictures']} × {batch['input_size'][0]} px | {f(batch['first_s'])} s | "
                 f"{f(batch['s_per_picture_after_first'])}, {f(batch['mean_s_per_picture_after_first'])} s | "
                 f"{f(batch['rerun_s'])} s | {f(batch.get('peak_allocated_gb'))} GB |"]
    official = r.get("official")
    if isinstance(official, dict) and any(isinstance(v, dict) and "ours" in v for v in official.values()):
        rows += ["", "| sampling only | ours s | official s | × official | peak GB ours / official | rel. L2 |",
                 "|---|---|---|---|---|---|"]
        for name in ("tiled", "untiled"):
            arm = official.get(name) or {}
            if "ours" in arm:
                o, t = arm["ours"], arm["official"]
                rows.append(f"| {name} | {f(o['sampling_s'])} | {f(t['sampling_s'])} | {f(arm['speedup'])} | "
                            f"{f(o['peak_allocated_gb'])} / {f(t['peak_allocated_gb'])} | {arm['relative_l2']:.1e} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()

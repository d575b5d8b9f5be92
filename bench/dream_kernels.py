"""Where a large-batch Dream step spends its GPU time, and which kernel choices move it.

    python -m bench.dream_kernels [--batch 32] [--variants default,cudnn,...] [--budget-s 480] [--out r.json]

For the sweep target (images per second) the UNet at a large batch is what counts: at batch 32
(64 rows with guidance) the loop is compute-bound. This times one full-size random-init SD1.5 UNet
forward in fp16 at that batch:
- each SDPA backend (flash, efficient, cudnn) on SD1.5's attention shapes alone, with its error
  against an fp32 reference;
- the whole UNet eager per backend, and torch.compile'd variants (our ``compile`` level's options,
  plus a backend choice, Inductor's freezing, fused QKV projections, max-autotune);
- a torch.profiler breakdown (convolution, matmul, attention, norm/pointwise) of the compiled forward.
Each variant's output is compared with eager flash (relative L2) so a faster choice is also a
correct one. Prints JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import traceback

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.common import CONFIGS, emit, gpu_probe, versions

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION}
# SD1.5 at 512x512: (tokens, heads, head dim, key tokens, count per forward)
ATTENTION = [(4096, 8, 40, 4096, 5), (4096, 8, 40, 77, 5), (1024, 8, 80, 1024, 5), (1024, 8, 80, 77, 5),
             (256, 8, 160, 256, 6), (256, 8, 160, 77, 6)]


def gpu_ms(fn, repeats: int = 10, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def attention_table(rows: int) -> dict:
    out = {}
    for n, heads, d, m, count in ATTENTION:
        q = torch.randn(rows, heads, n, d, device="cuda", dtype=torch.float16)
        k = torch.randn(rows, heads, m, d, device="cuda", dtype=torch.float16)
        v = torch.randn(rows, heads, m, d, device="cuda", dtype=torch.float16)
        ref = torch.nn.functional.scaled_dot_product_attention(q[:4].float(), k[:4].float(), v[:4].float())
        entry = {"count": count}
        for name, backend in BACKENDS.items():
            try:
                with sdpa_kernel([backend]):
                    f = lambda q=q, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
                    entry[name] = {"ms": gpu_ms(f), "rel_l2": rel(f()[:4], ref)}
            except Exception as e:
                entry[name] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
        out[f"{n}x{m} d{d}"] = entry
        del q, k, v
    totals = {name: sum(e[name]["ms"] * e["count"] for e in out.values() if "ms" in e[name]) for name in BACKENDS}
    return {"shapes": out, "total_ms_per_forward": totals}


def build_unet() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / "sd15" / "unet"))
    return unet.half().eval().requires_grad_(False)


def profile_breakdown(fn) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    groups: dict[str, float] = {}
    top = []
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if not us or ev.key.startswith(("ProfilerStep", "cuda")):
            continue
        name = ev.key.lower()
        if any(s in name for s in ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")):
            group = "attention"
        elif any(s in name for s in ("conv", "implicit", "wgrad", "dgrad", "fprop", "xmma_fprop")):
            group = "convolution"
        elif any(s in name for s in ("gemm", "cutlass", "sm90_xmma", "nvjet", "mm_", "matmul", "triton_tem")):
            group = "matmul"
        else:
            group = "norm/pointwise/other"
        groups[group] = groups.get(group, 0.0) + us / 1000
        top.append((us / 1000, ev.key[:90], ev.count))
    top.sort(reverse=True)
    return {"ms_by_group": groups, "top_kernels": [{"ms": t, "name": k, "calls": c} for t, k, c in top[:25]]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32, help="images per batch (rows = 2x with guidance)")
    ap.add_argument("--variants", default="eager-flash,eager-cudnn,eager-efficient,compile,compile-cudnn,"
                                          "compile-cudnn-freeze,compile-cudnn-fuseqkv")
    ap.add_argument("--profile", default="compile,compile-cudnn")
    ap.add_argument("--budget-s", type=float, default=480)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = 2 * args.batch
    result: dict = {"bench": "dream_kernels", "versions": versions(), "batch": args.batch, "rows": rows,
                    "probe_start": gpu_probe()}
    result["attention"] = attention_table(rows)
    emit(result, args.out, quiet=True)
    torch.manual_seed(1)
    x = torch.randn(rows, 4, 64, 64, device="cuda", dtype=torch.float16)
    t = torch.full((rows,), 500, device="cuda")
    ctx = torch.randn(rows, 77, 768, device="cuda", dtype=torch.float16)
    unet = build_unet()
    ref = None
    result["variants"] = {}
    for variant in args.variants.split(","):
        if time.perf_counter() - t0 > args.budget_s:
            result["variants"][variant] = {"skipped": "budget"}
            continue
        parts = variant.split("-")
        backend = next((p for p in parts if p in BACKENDS), "flash" if parts[0] == "eager" else None)
        entry: dict = {}
        try:
            torch._dynamo.reset()
            model = build_unet() if ("fuseqkv" in parts or "freeze" in parts) else unet
            if "fuseqkv" in parts:
                model.fuse_qkv_projections()
            fn = model
            if parts[0] == "compile":
                import torch._inductor.config as ind

                ind.conv_1x1_as_mm = True
                ind.freezing = "freeze" in parts
                mode = "max-autotune-no-cudagraphs" if "autotune" in parts else None
                model = model.to(memory_format=torch.channels_last)
                fn = torch.compile(model, dynamic=False, mode=mode)

            def call(fn=fn, backend=backend):
                with torch.no_grad(), (sdpa_kernel([BACKENDS[backend]]) if backend else contextlib.nullcontext()):
                    return fn(x, t, encoder_hidden_states=ctx, return_dict=False)[0]

            c0 = time.perf_counter()
            out = call()
            torch.cuda.synchronize()
            entry["first_call_s"] = time.perf_counter() - c0
            entry["ms_per_forward"] = gpu_ms(call, repeats=10)
            entry["ms_per_image_step"] = entry["ms_per_forward"] / args.batch
            # 50 steps per image: the UNet part of images/s
            entry["unet_images_per_s"] = 1000 / (entry["ms_per_image_step"] * 50)
            if ref is None:
                ref = out.float()
            entry["rel_l2_vs_first"] = rel(out, ref)
            if variant in args.profile.split(","):
                entry["profile"] = profile_breakdown(call)
            if model is not unet:
                del model
            unet.to(memory_format=torch.contiguous_format)
        except Exception as e:
            entry = {"error": f"{type(e).__name__}: {str(e)[:300]}", "traceback": traceback.format_exc()[-1500:]}
        entry["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        result["variants"][variant] = entry
        emit(result, args.out, quiet=True)
        print(variant, {k: v for k, v in entry.items() if k != "profile" and k != "traceback"}, flush=True)
    result["probe_end"] = gpu_probe()
    result["wall_s"] = time.perf_counter() - t0
    emit(result, args.out, quiet=True)
    return result


if __name__ == "__main__":
    main()

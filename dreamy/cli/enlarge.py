"""``python -m dreamy enlarge``: SUPIR on one picture with a preset's recipe, from the command line.

Kept light at import time (argument definitions only); the engine loads when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from .helpers import parse_setting, progress_bar, unlock_arg, with_cancel

# CLI flag -> enlarge setting
_FLAGS = {"scale": "upscale", "steps": "steps", "color_fix": "color_fix", "precision": "precision"}


def add_parser(sub: Any) -> None:
    """Register ``enlarge`` on the CLI's subparsers."""
    e = sub.add_parser("enlarge", help="enlarge a picture with SUPIR (512->2048 with biased-dreams)")
    e.add_argument("image", help="the picture (PNG, JPEG, WebP, ...)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--preset", default="biased-dreams", help="preset name or .toml path (default: biased-dreams)")
    e.add_argument("--supir", default=None, help="'tiny' (offline demo), SUPIR-v0Q, SUPIR-v0F, a hub file "
                   "(owner/repo/file.safetensors) or a local .ckpt/.safetensors (default: $DREAMY_SUPIR, else the "
                   "preset's model if downloaded, else tiny)")
    e.add_argument("--base", default=None, help="the SDXL base: 'tiny', 'Juggernaut XL v9', a hub id or file, a "
                   ".safetensors file or a diffusers folder (default: $DREAMY_SDXL, else the preset's)")
    e.add_argument("--scale", type=float, default=None, help="upscale factor 1-8 (locked in biased-dreams)")
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--color-fix", choices=("wavelet", "adain", "none"), default=None)
    e.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default=None, help="diffusion dtype on CUDA")
    e.add_argument("--set", dest="extra", action="append", type=parse_setting, default=[], metavar="NAME=VALUE",
                   help="any other enlarge setting, e.g. --set s_cfg=4.0 (repeatable)")
    e.add_argument("--unlock", nargs="?", const="all", default=None,
                   help="allow changing locked settings: all of them, or a comma list (e.g. upscale,steps)")
    e.add_argument("--seed", type=int, default=0)
    tiling = e.add_mutually_exclusive_group()
    tiling.add_argument("--tiled", dest="tiled", action="store_true", default=None,
                        help="tile sampling and the VAE (default: only when the GPU lacks the memory "
                             "for the whole latent, or past 2048 px)")
    tiling.add_argument("--untiled", dest="tiled", action="store_false", help="never tile (needs more memory)")
    e.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..enlarging.pipeline import enlarge

    overrides = {setting: getattr(args, flag) for flag, setting in _FLAGS.items() if getattr(args, flag) is not None}
    overrides.update(dict(args.extra))
    bar, on_progress = progress_bar("enlarge")
    try:
        result = with_cancel(lambda token: enlarge(
            args.image, args.preset, overrides=overrides, unlock=unlock_arg(args.unlock), out_dir=args.out,
            on_progress=on_progress, cancel=token, supir=args.supir, base=args.base, device=args.device,
            seed=args.seed, tiled=args.tiled,
        ))
    finally:
        bar.close()
    print(result.path)
    return 0

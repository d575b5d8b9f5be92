"""``python -m dreamy enlarge``: SUPIR on pictures and folders with a preset's recipe, from the command line.

Many pictures run as one batch (enlarging/batch.py): the models load once, pictures already enlarged
with the same recipe in ``--out`` are skipped (a rerun resumes), and a bad picture is reported in one
line while the others go on. PNG paths go to stdout, one a line; progress and reports to stderr.

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
    e = sub.add_parser("enlarge", help="enlarge pictures with SUPIR (512->2048 with biased-dreams)",
                       description="Enlarge pictures and folders of pictures with SUPIR, loading the models once. "
                       "Exit status: 0 when every picture was enlarged (or already was), 1 when some failed, "
                       "2 when none could run.")
    e.add_argument("pictures", nargs="+", metavar="PICTURE",
                   help="pictures (PNG, JPEG, WebP, ...) and folders of pictures (sorted, not searched further)")
    e.add_argument("--out", required=True, help="output folder (a rerun skips what is already enlarged in it)")
    e.add_argument("--redo", action="store_true",
                   help="enlarge again pictures whose enlargement with the same recipe is already in --out")
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
    from ..enlarging.batch import collect_pictures, enlarge_iter
    from ..errors import DreamyError

    overrides = {setting: getattr(args, flag) for flag, setting in _FLAGS.items() if getattr(args, flag) is not None}
    overrides.update(dict(args.extra))
    pictures, left_out = collect_pictures(args.pictures)
    for note in left_out:
        _say(f"left out {note}")
    if not pictures:
        raise DreamyError("No pictures to enlarge in " + ", ".join(args.pictures) + ".")
    bar, on_progress = progress_bar("enlarge")
    counts = {"enlarged": 0, "skipped": 0, "failed": 0}

    def batch(token) -> None:
        for o in enlarge_iter(pictures, args.preset, overrides=overrides, unlock=unlock_arg(args.unlock),
                              out_dir=args.out, on_progress=on_progress, cancel=token, supir=args.supir,
                              base=args.base, device=args.device, seed=args.seed, tiled=args.tiled,
                              skip_done=not args.redo):
            counts[o.status] += 1
            where = f"picture {o.index} of {o.total}: {o.source}"
            if o.status == "failed":
                _say(f"picture {o.index} of {o.total} failed: {o.error}")  # the error names the picture
                continue
            if o.status == "skipped":
                _say(f"{where}: enlarged already as {o.path.name}; skipped")
            elif len(pictures) > 1:
                _say(f"{where}: enlarged in {o.seconds:.1f} s")
            for note in o.notes:
                _say(f"{where}: note: {note}")
            print(o.path, flush=True)

    try:
        with_cancel(batch)
    finally:
        bar.close()
    if len(pictures) > 1 or counts["failed"]:
        done = f"{counts['enlarged']} enlarged, {counts['skipped']} already enlarged, {counts['failed']} failed"
        _say(f"{len(pictures)} pictures: {done}.")
    if counts["failed"]:
        return 2 if counts["failed"] == len(pictures) else 1
    return 0


def _say(line: str) -> None:
    """A report line on stderr that does not break the progress bar."""
    import sys

    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)

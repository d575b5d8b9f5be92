"""``python -m dreamy particles PICTURE --out loop.gif``: a picture as drifting particles, one seamless
GIF loop (the studio's Particles tab, same simulation and defaults).

Kept light at import time (argument definitions only).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """Register ``particles`` on the CLI's subparsers."""
    from ..particles import SIZES

    p = sub.add_parser("particles", help="play a picture as drifting particles: one seamless GIF loop")
    p.add_argument("image", help="the picture (PNG, JPEG, WebP, ...)")
    p.add_argument("--out", required=True, help="the GIF to write")
    p.add_argument("--size", type=int, default=SIZES[0], choices=SIZES, help="the GIF's long side in px (default: "
                   f"{SIZES[0]}; larger draws the same particles bigger)")
    p.add_argument("--density", type=float, default=0.5, help="0-1: 16 to 128 particles across (default 0.5)")
    p.add_argument("--drift", type=float, default=0.3, help="0-1: how far particles wander (default 0.3)")
    p.add_argument("--speed", type=float, default=1.0, help="0.1-4: loops per 4 s (default 1)")
    p.set_defaults(func=cmd_particles)


def cmd_particles(args: argparse.Namespace) -> int:
    from ..particles import write_gif

    print(write_gif(args.image, args.out, args.density, args.drift, args.speed, size=args.size))
    return 0

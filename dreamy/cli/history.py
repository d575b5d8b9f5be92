"""``python -m dreamy history``: the past runs and dream jobs the studio's *Open run* and *Past dreams*
pickers offer, newest first; ``history RUN`` prints one run as the studio's log shows it."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """Register ``history`` on the CLI's subparsers."""
    h = sub.add_parser("history", help="past training runs and dreams (newest first), or one run's summary: "
                       "recipe, photos, checkpoints, loss, corridor meter")
    h.add_argument("run", nargs="?", help="a run's name (or folder) under --models-dir: print its summary")
    h.add_argument("--models-dir", default=None, help="where runs live (default: $DREAMY_MODELS, else "
                   "models/ beside dreamy/, not the working directory)")
    h.add_argument("--outputs-dir", default=None, help="where jobs write (default: $DREAMY_OUTPUTS, else "
                   "outputs/ beside dreamy/, not the working directory)")
    h.add_argument("--limit", type=int, default=20, help="dream jobs listed at most (default 20)")
    h.set_defaults(func=cmd_history)


def cmd_history(args: argparse.Namespace) -> int:
    from ..history import list_dreams, list_runs, open_run
    from ..layout import models_root, outputs_root

    models = args.models_dir or models_root()
    if args.run:
        print("\n".join(open_run(args.run, models).log_lines()))
        return 0
    runs = list_runs(models)
    print(f"runs ({len(runs)}):" if runs else "runs: none")
    for r in runs:
        print(f"  {r.label}")
    jobs = list_dreams(args.outputs_dir or outputs_root(), limit=args.limit)
    print(f"dreams (newest {len(jobs)}):" if jobs else "dreams: none")
    for j in jobs:
        print(f"  {j.label}  {j.folder}")
    return 0

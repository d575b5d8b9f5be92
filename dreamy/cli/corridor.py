"""``python -m dreamy corridor models/<run>``: measure what the run's corridor meter lacks, print its table.

Kept light at import time (argument definitions only); torch loads only when something is measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    """Register ``corridor`` on the CLI's subparsers."""
    c = sub.add_parser("corridor", help="a run's corridor meter: drift, memorisation gap, diversity and language "
                       "retention per checkpoint, marked before / inside / past (measures what is missing first)")
    c.add_argument("run", help="the run folder (models/<run>) or its name under --models-dir")
    c.add_argument("--photos", default=None, help="the folder of photos the run was trained on; needed once for a "
                   "run trained before the meter existed")
    c.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    c.add_argument("--no-measure", action="store_true", help="print what is stored; measure nothing")
    c.add_argument("--models-dir", default=None, help="where runs live (default: $DREAMY_MODELS, else "
                   "models/ beside dreamy/, not the working directory)")
    c.set_defaults(func=cmd_corridor)


def _run_dir(spec: str, models_dir: str | None) -> Path:
    from ..errors import TrainError
    from ..layout import models_root

    path = Path(spec)
    if not path.is_dir() and "/" not in spec:
        path = Path(models_dir or models_root()) / spec
    if not (path / "run.json").is_file():
        raise TrainError(f"'{spec}' is not a training run (no run.json there); give models/<run> or the run's name.")
    return path


def cmd_corridor(args: argparse.Namespace) -> int:
    from ..training.corridor_report import read_rows, table_lines

    run_dir = _run_dir(args.run, args.models_dir)
    if args.no_measure:
        rows = read_rows(run_dir)
    else:
        from ..training.corridor_run import measure_run

        rows = measure_run(run_dir, device=args.device, photos=args.photos,
                           on_step=lambda step: print(f"measuring step {step}...", file=sys.stderr))
    if not rows:
        print(f"Run '{run_dir.name}' has no corridor measurements yet.", file=sys.stderr)
        return 1
    print("\n".join(table_lines(rows)))
    return 0

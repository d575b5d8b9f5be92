"""Curation from the command line, as the maker did it: a prompt file x a few seeds
(``python -m dreamy prompt-sweep --prompts FILE``), then the keepers into a training set, each with its
prompt as its caption file (``python -m dreamy add-to-set PICTURES --set NAME``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .helpers import note, progress_bar, unlock_arg, with_cancel

# the dream settings a sweep may change (the prompt comes from the file); locked ones need --unlock
_FLAGS = {"negative_prompt": str, "guidance": float, "steps": int, "width": int, "height": int, "sampler": str}


def cmd_prompt_sweep(args: argparse.Namespace) -> int:
    from ..dreaming.prompt_sweeps import GRID_NAME, prompt_sweep_iter, read_prompt_file, write_prompt_grid
    from ..models.sources import starting_model

    prompts = read_prompt_file(args.prompts)
    overrides = {k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}
    bar, on_progress = progress_bar("prompt sweep")
    cells = []
    try:
        def run(token):
            for cell in prompt_sweep_iter(args.model or starting_model(note), args.preset, prompts, args.seeds,
                                          args.out, overrides=overrides, unlock=unlock_arg(args.unlock),
                                          device=args.device, on_progress=on_progress, cancel=token):
                cells.append(cell)
                print(cell.image.path, flush=True)
        with_cancel(run)
    finally:
        bar.close()
        if cells:  # a Ctrl-C keeps the grid of what finished
            print(write_prompt_grid(cells, Path(args.out) / GRID_NAME))
    return 0


def cmd_add_to_set(args: argparse.Namespace) -> int:
    from ..layout import outputs_root
    from ..training.sets import add_to_training_set

    root = Path(args.root) if args.root else outputs_root() / "training-sets"
    report = add_to_training_set(args.pictures, args.set, root, captions=not args.no_captions, trigger=args.trigger)
    for line in report.notes:
        note(line)
    for path in report.added:
        caption = path.with_suffix(".txt")
        print(path if args.no_captions or not caption.is_file() else f"{path}\t{caption.read_text('utf-8').strip()}")
    if not report.added:  # every picture skipped: say so, not "train on it"
        note(f"nothing was added to training set {report.name}")
        return 2
    note(f"training set {report.name}: {report.files} files in {report.folder}; train on it with "
         f"--images {report.folder} --captions files")
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("prompt-sweep", help="dream every prompt of a file x every seed (candidates to curate), "
                       "with a labelled grid")
    s.add_argument("--prompts", required=True, help="a text file, one prompt per line (# lines and blank lines "
                   "skipped; at most 256)")
    s.add_argument("--model", default=None, help="the image model (as for dream; default: $DREAMY_MODEL, else SD 1.5)")
    s.add_argument("--preset", default="word-style", help="preset name or .toml path (default: word-style, whose "
                   "prompt is open; a preset that locks its prompt needs --unlock prompt)")
    s.add_argument("--seeds", default="0-1", help="seeds per prompt: 0-1 (default) | 7 | 1,5,9")
    s.add_argument("--out", required=True, help="output folder: NN/seedXXXXXX.png per prompt, prompts.json, "
                   "prompt-grid.png")
    for name, tp in _FLAGS.items():
        s.add_argument(f"--{name.replace('_', '-')}", dest=name, type=tp, default=None)
    s.add_argument("--unlock", nargs="?", const="all", default=None, type=str,
                   help="allow changing locked settings: all of them, or a comma list (e.g. prompt,steps)")
    s.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    s.set_defaults(func=cmd_prompt_sweep)

    a = sub.add_parser("add-to-set", help="copy pictures into a training set, each with its caption file "
                       "(its prompt, the trigger word applied) for --captions files")
    a.add_argument("pictures", nargs="+", help="PNGs with their recipe (or another tool's infotext)")
    a.add_argument("--set", required=True, help="the training set's name")
    a.add_argument("--root", default=None, help="where sets live (default: $DREAMY_OUTPUTS/training-sets, "
                   "the studio's)")
    a.add_argument("--trigger", default=None, help="the trigger word put into each caption (default: the trigger "
                   "of the preset each picture names: its [word] trigger, else its trigger_word; '' for none)")
    a.add_argument("--no-captions", action="store_true", help="copy the pictures only")
    a.set_defaults(func=cmd_add_to_set)

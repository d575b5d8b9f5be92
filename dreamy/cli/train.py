"""``python -m dreamy train``: the Train engine from the command line, with a progress bar.

Kept light at import time (argument definitions only); the engine loads when the command runs.
Under ``accelerate launch`` (data-parallel training) only the main process prints and exports.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .helpers import note, parse_setting, unlock_arg, with_cancel

# CLI flag -> train setting, with the type argparse parses it as
_FLAGS: dict[str, tuple[str, type]] = {
    "steps": ("max_train_steps", int),
    "checkpoint_every": ("checkpointing_steps", int),
    "mode": ("mode", str),
    "lr": ("learning_rate", float),
    "optimizer": ("optimizer", str),
    "prompt": ("instance_prompt", str),
    "trigger": ("trigger_word", str),
    "captions": ("captions", str),
    "class_prompt": ("class_prompt", str),
    "class_images": ("class_images_dir", str),
    "resolution": ("resolution", int),
    "seed": ("seed", int),
    "keep": ("checkpoints_total_limit", int),
    "validation_seeds": ("validation_seeds", str),
}


def add_parser(sub: Any) -> None:
    """Register ``train`` on the CLI's subparsers."""
    t = sub.add_parser("train", help="fine-tune a model on a few photos (Dreambooth) with a preset's recipe")
    t.add_argument("--images", default=None, help="a folder of photos (NAME.txt beside a photo is its caption)")
    t.add_argument("--name", required=True, help="run name: writes models/<name>/")
    t.add_argument("--preset", default="sweet-spot", help="preset name or .toml path (default: sweet-spot)")
    t.add_argument("--base", default=None, help="the model to fine-tune: 'tiny', a hub id, a diffusers folder or "
                   "a .safetensors file (default: $DREAMY_MODEL, else SD1.5, downloaded once; offline, tiny)")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (max_train_steps)")
    t.add_argument("--checkpoint-every", type=int, default=None, help="save + validate every N steps")
    t.add_argument("--mode", choices=("full", "prior", "lora", "pivotal"), default=None)
    t.add_argument("--lr", type=float, default=None, help="learning rate")
    t.add_argument("--optimizer", choices=("adamw8bit", "adamw", "prodigy"), default=None)
    t.add_argument("--prompt", default=None, help="instance prompt (default: the preset's)")
    t.add_argument("--trigger", default=None, help="trigger word put into captions")
    t.add_argument("--captions", choices=("prompt", "files"), default=None,
                   help="'files': use NAME.txt beside each image as its caption")
    t.add_argument("--class-prompt", default=None, help="prior preservation: the class prompt")
    t.add_argument("--class-images", default=None, help="prior preservation: a folder of class images")
    t.add_argument("--resolution", type=int, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--keep", type=int, default=None, help="keep only the N newest checkpoints")
    t.add_argument("--validation-seeds", default=None, help="seeds rendered at each checkpoint ('' for none)")
    t.add_argument("--set", dest="extra", action="append", type=parse_setting, default=[], metavar="NAME=VALUE",
                   help="any other train setting, e.g. --set lora_rank=8 (repeatable)")
    t.add_argument("--unlock", nargs="?", const="all", default=None,
                   help="allow changing locked settings: all of them, or a comma list (e.g. max_train_steps)")
    t.add_argument("--validation-size", type=int, default=None,
                   help="render validation images at this size instead of the preset's (quicker on a CPU)")
    t.add_argument("--validation-steps", type=int, default=None, help="denoising steps for validation renders")
    t.add_argument("--resume", action="store_true", help="continue the run from its newest intact checkpoint, "
                   "first completing the validation images, grid and loss plot a kill left out")
    t.add_argument("--allow-changed-photos", action="store_true",
                   help="with --resume: continue although photos were added, removed or changed (run.json records it)")
    t.add_argument("--export", default="", help="after training, export: comma list of diffusers, "
                   "single-file, lora, card (default: none; with --export-only: diffusers,single-file,card)")
    t.add_argument("--export-only", default=None, metavar="STEP", nargs="?", const="latest",
                   help="do not train: export the run's newest checkpoint (or STEP) with --export")
    t.add_argument("--models-dir", default=None, help="where runs live (default: $DREAMY_MODELS, else "
                   "models/ beside dreamy/, not the working directory)")
    t.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps; under accelerate "
                   "launch each process takes its own GPU (cpu: N CPU processes)")
    t.set_defaults(func=cmd_train)


def _bar():
    from tqdm.auto import tqdm

    state: dict[str, Any] = {}

    def on_event(ev: Any) -> None:
        from ..training.events import Finished, Notice, Started, StepDone

        if isinstance(ev, Started):
            print(ev.describe(), file=sys.stderr)
            for line in ev.images:
                print(f"  {line}", file=sys.stderr)
            state["bar"] = tqdm(total=ev.total, initial=ev.step, unit="step", desc="train", mininterval=0.5,
                                file=sys.stderr)
            return
        bar = state.get("bar")
        if isinstance(ev, StepDone) and bar is not None:
            bar.n = ev.step
            eta = f"{ev.eta_s / 60:.1f} min" if ev.eta_s >= 90 else f"{ev.eta_s:.0f} s"
            bar.set_postfix_str(f"loss {ev.loss:.4f} lr {ev.lr:.2e} eta {eta}", refresh=False)
            bar.refresh()
        elif bar is not None and not isinstance(ev, Finished):
            bar.write(("note: " if isinstance(ev, Notice) else "") + ev.describe(), file=sys.stderr)
        if isinstance(ev, Finished) and bar is not None:
            bar.close()

    return on_event


def _export(checkpoint: Any, formats: str, step: int | None = None) -> int:
    from ..training.exports import export

    wanted = [e.strip() for e in formats.split(",") if e.strip()] or None  # None: the run's defaults (SDXL: lora, card)
    for kind, path in export(checkpoint, formats=wanted, step=step).items():
        print(f"{kind}: {path}")
    return 0


def _run_base(run_dir: Any) -> str | None:
    """The base source a run was trained on (its run.json), or None when it cannot be read."""
    import json

    try:
        return str(json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["base"]["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cmd_train(args: argparse.Namespace) -> int:
    from ..errors import DreamyError
    from ..models.sources import starting_model
    from ..training import Finished, train
    from ..training.parallel import is_main_process
    from ..training.runs import run_dir_for

    if args.export_only is not None:
        run_dir = run_dir_for(args.name, args.models_dir)
        return _export(run_dir, args.export, None if args.export_only == "latest" else int(args.export_only))
    if not args.images:
        raise DreamyError("Give the photos to train on with --images FOLDER (or --export-only to export a run).")

    overrides = {setting: getattr(args, flag) for flag, (setting, _) in _FLAGS.items()
                 if getattr(args, flag) is not None}
    overrides.update(dict(args.extra))
    validation = {}
    if args.validation_size is not None:
        validation.update(width=args.validation_size, height=args.validation_size)
    if args.validation_steps is not None:
        validation["steps"] = args.validation_steps
    unlock = unlock_arg(args.unlock)
    main = is_main_process()
    on_event = _bar() if main else (lambda ev: None)  # one progress bar, not one per process
    # a resume keeps its run's base; otherwise SD 1.5, downloaded once when online
    base = args.base or (_run_base(run_dir_for(args.name, args.models_dir)) if args.resume else None) \
        or starting_model(note if main else None)

    def go(token) -> Any:
        last = None
        for ev in train(args.images, name=args.name, preset=args.preset, base=base,
                        overrides=overrides, unlock=unlock, models_dir=args.models_dir, resume=args.resume,
                        device=args.device, validation=validation or None, cancel=token,
                        allow_changed_photos=args.allow_changed_photos):
            on_event(ev)
            last = ev
        return last

    fin = with_cancel(go)
    if not isinstance(fin, Finished):
        return 1
    if not main:  # the main process reports and exports what all trained
        return 130 if fin.stopped else 0
    for name, path in fin.files.items():
        print(f"{name}: {path}")
    if fin.checkpoint is not None:
        print(f"checkpoint: {fin.checkpoint}")
    if args.export.strip() and fin.checkpoint is not None and not fin.stopped:
        _export(fin.checkpoint, args.export)
    if fin.stopped:
        print(f"stopped at step {fin.step}; continue with --resume", file=sys.stderr)
        return 130
    return 0

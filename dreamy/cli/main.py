"""``python -m dreamy``: dream, recall, presets, info, train, corridor, word ... from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from ..errors import Cancelled, DreamyError
from .helpers import note, progress_bar, unlock_arg, with_cancel

# CLI flag -> dream setting, with the type argparse parses it as
_DREAM_FLAGS = {
    "prompt": str,
    "negative_prompt": str,
    "guidance": float,
    "steps": int,
    "width": int,
    "height": int,
    "sampler": str,
    "precision": str,
    "prompt_syntax": str,
}
_FLAG_HELP = {"prompt_syntax": "plain (stock diffusers' reading) or a1111 (A1111's (word:1.2), [word], BREAK and "
                               "prompts of any length); locked by the built-in presets: needs --unlock"}


def cmd_dream(args: argparse.Namespace) -> int:
    from ..dreaming.dreams import dream

    overrides = {k: getattr(args, k) for k in _DREAM_FLAGS if getattr(args, k) is not None}
    bar, on_progress = progress_bar("dream")
    try:
        results = with_cancel(lambda token: dream(
            args.model, args.preset, args.seeds, overrides=overrides, unlock=args.unlock,
            out_dir=args.out, batch_size=args.batch_size, device=args.device, fast=_fast_arg(args.fast),
            on_progress=on_progress, cancel=token, contact_sheet=not args.no_contact_sheet,
            loras=args.lora or (), embeddings=args.embedding or (),
        ))
    finally:
        bar.close()
    for r in results:
        print(r.path)
    if len(results) > 1 and not args.no_contact_sheet:
        print(Path(args.out) / "contact-sheet.png")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..dreaming.sweeps import sweep

    overrides = {k: getattr(args, k) for k in _DREAM_FLAGS if getattr(args, k) is not None}
    bar, on_progress = progress_bar("sweep")
    try:
        result = with_cancel(lambda token: sweep(
            args.model, args.preset, args.seeds, args.out, checkpoints=args.checkpoints, overrides=overrides,
            unlock=args.unlock, batch_size=args.batch_size, device=args.device, on_progress=on_progress,
            cancel=token, fast=_fast_arg(args.fast),
        ))
    finally:
        bar.close()
    if "images" in result:  # the main process reports for everyone
        print(f"{len(result['images'])} images in {args.out} (manifest.json lists who made what)")
    return 0


def _add_dream_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="biased-dreams", help="preset name or .toml path (default: biased-dreams)")
    p.add_argument("--seeds", default="0", help="7 | 0-15 | 1,5,9 | 100-200:10 (default: 0)")
    p.add_argument("--out", required=True, help="output folder")
    for name, tp in _DREAM_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=tp, default=None, help=_FLAG_HELP.get(name))
    p.add_argument("--unlock", nargs="?", const="all", default=None, type=str,
                   help="allow changing locked settings: all of them, or a comma list (e.g. guidance,steps)")
    p.add_argument("--batch-size", type=int, default=1, help="seeds per batch on the GPU (images do not change)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--fast", choices=("auto", "off", "graph", "compile"), default="auto",
                   help="CUDA fast path: auto (default: graph, bit-identical to stock; $DREAMY_FAST), off, "
                   "graph, or compile (faster, within stock's own numerical spread, slow first image)")


def _fast_arg(value: str) -> bool | str | None:
    return {"auto": None, "off": False}.get(value, value)


def cmd_recall(args: argparse.Namespace) -> int:
    from ..dreaming.dreams import recall
    from ..png.info import describe_png, foreign_refusal

    info = describe_png(args.image)
    if info.kind == "foreign":
        if not args.use_settings:
            print(f"error: {foreign_refusal(info, Path(args.image).name)}", file=sys.stderr)
            return 2
        return _dream_foreign(args, info)
    r = recall(args.image, args.out, model=args.model, device=args.device, allow_model_change=args.allow_model_change)
    print(r.path)
    return 0


def _dream_foreign(args: argparse.Namespace, info) -> int:
    """recall --use-settings on another tool's file: dream its settings and seed under --preset (the
    preset's locks apply as to anything typed: a setting that differs from a locked one needs --unlock)."""
    from ..dreaming.dreams import dream
    from ..errors import LockedFieldError
    from ..models.sources import starting_model
    from ..png.info import reproducible
    from ..recipes.recipe import locked_changes

    unlock = unlock_arg(args.unlock)
    can, cannot = reproducible(info)
    print(f"{info.tool} settings used: {', '.join(can) or 'none'}"
          + (f"; not reproduced: {', '.join(cannot)[:300]}" if cannot else ""), file=sys.stderr)
    for said in info.notes:  # what has no equivalent here (a sampler, a setting), one sentence each
        print(said, file=sys.stderr)
    values = dict(info.values)
    if not values.get("prompt"):
        values.pop("prompt", None)  # nothing read: the preset's prompt stands
    blocked = [n for n in locked_changes(args.preset, "dream", values) if unlock is not True and n not in unlock]
    if blocked:
        raise LockedFieldError(
            f"The file's {', '.join(blocked)} differ from preset '{args.preset}', which locks them; pass --unlock "
            f"(or --unlock {','.join(blocked)}) to dream with them, or choose another --preset.")
    seed = info.seed if info.seed is not None else 0
    results = with_cancel(lambda token: dream(
        args.model or starting_model(note), args.preset, [seed], overrides=values, unlock=unlock, out_dir=args.out,
        device=args.device, cancel=token, contact_sheet=False))
    for r in results:
        print(r.path)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from ..recipes.presets import list_presets, load_preset, preset_fields

    if not args.name:
        for name in list_presets():
            p = load_preset(name)
            print(f"{name:16s} {p.description}")
        return 0
    p = load_preset(args.name)
    print(f"{p.name}: {p.description}\n({p.path})")
    for job in ("dream", "train", "enlarge"):
        print(f"\n[{job}]")
        for k, v in preset_fields(p, job).items():
            lock = "locked" if k in p.locked.get(job, ()) else ""
            print(f"  {k:28s} {v!r:52s} {lock}")
    print("\n[word]")  # the word layer's chat (python -m dreamy word); no locks
    for k, v in dataclasses.asdict(p.word).items():
        print(f"  {k:28s} {v!r}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..png.info import describe_png, reproducible
    from ..png.metadata import read_recipe

    info = describe_png(args.image)
    if info.kind == "foreign":  # another tool's file: what was read of it, and what of it Dreamy can use
        can, cannot = reproducible(info)
        print(f"{info.message}\nDreamy can dream again with its {', '.join(can) or 'nothing'}"
              + (f"; not with its {', '.join(cannot)[:300]}" if cannot else "") + ".", file=sys.stderr)
        for said in info.notes:  # what has no equivalent here, one sentence each
            print(said, file=sys.stderr)
        print(json.dumps({"tool": info.tool, "parameters": info.parameters, "settings": info.values,
                          "seed": info.seed, "reproducible": can, "not_reproducible": cannot},
                         indent=2, ensure_ascii=False, default=str))
        return 0
    recipe = read_recipe(Path(args.image))  # a Dreamy recipe, or the reason there is none
    print(recipe.summary(), file=sys.stderr)  # for people; stdout stays the JSON, for scripts
    print(json.dumps(recipe.to_dict(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dreamy", description="Dreamy: latent space photography.")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("dream", help="dream one image per seed with a preset")
    d.add_argument("--model", default=None, help="'tiny' (offline demo), a hub id, a diffusers folder or a "
                   ".safetensors/.ckpt file (default: $DREAMY_MODEL, else SD1.5, downloaded once; offline, tiny)")
    _add_dream_flags(d)
    d.add_argument("--lora", action="append", metavar="FILE[:SCALE]", help="apply a LoRA (kohya or diffusers "
                   ".safetensors) at SCALE (default 1.0); repeatable; recorded with its hash in every PNG")
    d.add_argument("--embedding", action="append", metavar="FILE[:TOKEN]", help="load a textual-inversion "
                   "embedding (SDXL: clip_l + clip_g in one file), written TOKEN in prompts (default: the file's "
                   "name); repeatable")
    d.add_argument("--no-contact-sheet", action="store_true")
    d.set_defaults(func=cmd_dream)

    w = sub.add_parser("sweep", help="every model/checkpoint x every seed; spreads over GPUs under accelerate launch")
    w.add_argument("--model", nargs="+", required=True, help="model sources; a training run folder means "
                   "all its checkpoints")
    w.add_argument("--checkpoints", default=None, help="which checkpoints of a run: all (default) or steps, "
                   "e.g. 250,500 or 0-1200:250")
    _add_dream_flags(w)
    w.set_defaults(func=cmd_sweep)

    r = sub.add_parser("recall", help="re-create an image from the recipe in its PNG (another tool's file: "
                       "--use-settings)")
    r.add_argument("image")
    r.add_argument("--out", required=True)
    r.add_argument("--model", default=None, help="load this source instead of the recipe's (hash still checked)")
    r.add_argument("--device", default=None)
    r.add_argument("--allow-model-change", action="store_true", help="re-dream even if the model's hash differs")
    r.add_argument("--use-settings", action="store_true", help="another tool's file (A1111/Forge, Fooocus, ComfyUI): "
                   "dream its prompt, size, steps, CFG and seed under --preset (not an exact re-creation)")
    r.add_argument("--preset", default="biased-dreams", help="with --use-settings: the preset (default: biased-dreams)")
    r.add_argument("--unlock", nargs="?", const="all", default=None, type=str,
                   help="with --use-settings: allow the file's settings to change locked ones (all, or a comma list)")
    r.set_defaults(func=cmd_recall)

    p = sub.add_parser("presets", help="list presets, or show one with its locks")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_presets)

    i = sub.add_parser("info", help="print the recipe stored in a PNG, or what another tool's PNG/JPEG/WebP "
                       "says (a summary on stderr, JSON on stdout)")
    i.add_argument("image")
    i.set_defaults(func=cmd_info)

    from .train import add_parser as add_train_parser

    add_train_parser(sub)
    from .enlarge import add_parser as add_enlarge_parser

    add_enlarge_parser(sub)
    from .corridor import add_parser as add_corridor_parser

    add_corridor_parser(sub)
    from .history import add_parser as add_history_parser

    add_history_parser(sub)
    from .particles import add_parser as add_particles_parser

    add_particles_parser(sub)
    from .word import add_parser as add_word_parser

    add_word_parser(sub)
    from .curate import add_parser as add_curate_parser

    add_curate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) in ("dream", "sweep"):
        args.unlock = unlock_arg(args.unlock)
        from ..models.sources import starting_model

        if args.command == "dream":
            args.model = args.model or starting_model(note)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except Cancelled as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 130
    except DreamyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # out-of-memory becomes a sentence too; anything else is a bug: traceback
        from ..errors import user_error

        err = user_error(e, args.command)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2

"""``python -m dreamy word WORD``: a word's prompt from a local chat model; ``--dream`` dreams it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .helpers import note, progress_bar, unlock_arg, with_cancel

# quick-try flags (a CPU run of the tiny model); they change locked settings, so they need --unlock
_DREAM_FLAGS = {"guidance": float, "steps": int, "width": int, "height": int}


def cmd_word(args: argparse.Namespace) -> int:
    from ..errors import DreamyError
    from ..prompt_helper import dream_word, word_to_prompt

    word = " ".join(args.word)
    if not args.dream:
        wp = word_to_prompt(word, args.preset, args.prompt_model, args.seed, args.device)
        print(wp.prompt)
        return 0
    if not args.out:
        raise DreamyError("--dream needs --out FOLDER for the pictures.")
    from ..models.sources import starting_model

    overrides = {k: getattr(args, k) for k in _DREAM_FLAGS if getattr(args, k) is not None}
    if args.particles:
        return _word_picture(args, word, overrides)
    bar, on_progress = progress_bar("dream")
    try:
        wp, results = with_cancel(lambda token: dream_word(
            word, args.model or starting_model(note), args.preset, args.seeds, prompt_model=args.prompt_model,
            prompt_seed=args.seed, overrides=overrides, unlock=unlock_arg(args.unlock), out_dir=args.out,
            batch_size=args.batch_size, device=args.device, on_progress=on_progress, cancel=token))
    finally:
        bar.close()
    note(f"prompt: {wp.prompt}")
    for r in results:
        print(r.path)
    if len(results) > 1:
        print(Path(args.out) / "contact-sheet.png")
    return 0


def _word_picture(args: argparse.Namespace, word: str, overrides: dict) -> int:
    """--dream --particles: word -> prompt -> one picture -> its particle loop (the studio's Word box)."""
    from ..dreaming.word_picture import word_picture
    from ..errors import DreamyError
    from ..models.sources import starting_model
    from ..recipes.seeds import parse_seeds

    seeds = parse_seeds(args.seeds)
    if len(seeds) != 1:
        raise DreamyError("--particles makes one picture: give one seed (--seeds 7).")
    bar, on_progress = progress_bar("dream")
    try:
        steps = with_cancel(lambda token: list(word_picture(
            word, args.model or starting_model(note), args.preset, seeds[0], out_dir=args.out,
            prompt_model=args.prompt_model, prompt_seed=args.seed, overrides=overrides,
            unlock=unlock_arg(args.unlock), device=args.device, on_progress=on_progress, cancel=token)))
    finally:
        bar.close()
    note(f"prompt: {steps[-1].word.prompt}")
    print(steps[-1].picture.path)
    print(steps[-1].gif)
    return 0


def add_parser(sub) -> None:
    w = sub.add_parser("word", help="a word -> a prompt in a preset's style, written by a local chat model "
                       "(the preset's [word] table); --dream dreams it")
    w.add_argument("word", nargs="+", help="the word (or a short phrase)")
    w.add_argument("--preset", default="word-style", help="preset name or .toml path (default: word-style)")
    w.add_argument("--prompt-model", default=None, help="a chat model folder or a hub id in the Hugging Face cache "
                   "(default: $DREAMY_PROMPT_MODEL, else the preset's [word] model, Qwen/Qwen2.5-3B-Instruct)")
    w.add_argument("--seed", type=int, default=0, help="the prompt's seed: same word + seed, same prompt (default 0)")
    w.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    w.add_argument("--dream", action="store_true", help="dream the prompt with the preset, one picture per seed")
    w.add_argument("--model", default=None, help="with --dream: the image model (as for dream)")
    w.add_argument("--seeds", default="0", help="with --dream: 7 | 0-15 | 1,5,9 (default: 0)")
    w.add_argument("--out", default=None, help="with --dream: the output folder")
    w.add_argument("--unlock", nargs="?", const="all", default=None, type=str,
                   help="with --dream: allow changing locked settings (all, or a comma list, e.g. prompt)")
    w.add_argument("--batch-size", type=int, default=1)
    w.add_argument("--particles", action="store_true", help="with --dream and one seed: also the picture's "
                   "particle loop, particles.gif (word -> picture -> particles, as the studio's Word box)")
    for name, tp in _DREAM_FLAGS.items():
        w.add_argument(f"--{name}", dest=name, type=tp, default=None, help="with --dream (needs --unlock)")
    w.set_defaults(func=cmd_word)

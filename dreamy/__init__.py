"""Dreamy's core library: dream pictures from presets, train Dreambooth models, enlarge with SUPIR,
every picture carrying the recipe that re-creates it (``dream``, ``train``, ``enlarge``, ``recall``...).

It never imports gradio; the studio (app.py), the CLI (python -m dreamy) and Python callers are
three ways of building the same recipes. The public functions load on first use, so ``import dreamy``
does not load torch or diffusers.
"""

__version__ = "0.1.0"

from .errors import (
    Cancelled,
    DreamyError,
    LockedFieldError,
    PresetError,
    RecallError,
    SeedSyntaxError,
    SourceError,
)
from .events import CancelToken, Progress

# The public functions, loaded on first use so `import dreamy` stays fast (no torch, no diffusers).
# No submodule shares a name with them (the engines live in dreaming/, training/, enlarging/), so
# importing an engine never rebinds `dreamy.dream` and friends to a module.
_LAZY = {
    "dream": "dreaming.dreams", "dream_iter": "dreaming.dreams", "recall": "dreaming.dreams",
    "sweep": "dreaming.sweeps",
    "load_model": "models.sources", "download_model": "models.sources",
    "load_preset": "recipes.presets", "list_presets": "recipes.presets",
    "resolve": "recipes.recipe", "Recipe": "recipes.recipe",
    "parse_seeds": "recipes.seeds",
    "train": "training.loop", "export": "training.exports",
    "enlarge": "enlarging.pipeline", "enlarge_many": "enlarging.batch", "enlarge_iter": "enlarging.batch",
    "word_to_prompt": "prompt_helper", "dream_word": "prompt_helper", "word_picture": "dreaming.word_picture",
    "prompt_sweep": "dreaming.prompt_sweeps", "read_prompt_file": "dreaming.prompt_sweeps",
    "add_to_training_set": "training.sets",
    "list_runs": "history", "open_run": "history", "list_dreams": "history", "open_dreams": "history",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dreamy' has no attribute {name!r}")


__all__ = [
    "CancelToken", "Cancelled", "DreamyError", "LockedFieldError", "PresetError", "Progress", "RecallError",
    "SeedSyntaxError", "SourceError", "__version__", "download_model", "dream", "dream_iter", "list_presets", "load_model",
    "load_preset", "parse_seeds", "recall", "resolve", "Recipe", "sweep", "train", "export", "enlarge",
    "enlarge_many", "enlarge_iter", "word_to_prompt", "dream_word", "word_picture", "prompt_sweep",
    "read_prompt_file", "add_to_training_set",
    "list_runs", "open_run", "list_dreams", "open_dreams",
]

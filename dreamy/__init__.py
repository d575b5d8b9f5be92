"""Dreamy's core library: presets, recipes, model sources and the Dream, Train and Enlarge engines.

It never imports gradio; the studio (app.py), the CLI (python -m dreamy) and Python callers are
three ways of building the same recipes.
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


def __getattr__(name: str):
    # Heavy modules (torch, diffusers) load on first use, so `import dreamy` stays fast.
    lazy = {
        "dream": ("dream", "dream"),
        "dream_iter": ("dream", "dream_iter"),
        "recall": ("dream", "recall"),
        "load_model": ("sources", "load_model"),
        "load_preset": ("presets", "load_preset"),
        "list_presets": ("presets", "list_presets"),
        "resolve": ("recipe", "resolve"),
        "Recipe": ("recipe", "Recipe"),
        "parse_seeds": ("seeds", "parse_seeds"),
        "sweep": ("sweep", "sweep"),
        "train": ("train", "train"),
        "export": ("train", "export"),
    }
    if name in lazy:
        import importlib

        module, attr = lazy[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(name)


__all__ = [
    "CancelToken", "Cancelled", "DreamyError", "LockedFieldError", "PresetError", "Progress", "RecallError",
    "SeedSyntaxError", "SourceError", "__version__", "dream", "dream_iter", "list_presets", "load_model",
    "load_preset", "parse_seeds", "recall", "resolve", "Recipe", "sweep", "train", "export",
]

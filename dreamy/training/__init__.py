"""Train: Dreambooth on a handful of photos, checkpointed and validated so the corridor can be seen.

``train(...)`` is the engine (a generator of events, ``loop.py``); ``export(...)`` turns a checkpoint
into a diffusers folder, a single file, LoRA files and a model card (``exports.py``). Names are
imported on first use, so ``python -m dreamy --help`` does not load torch and diffusers.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

# bitsandbytes (imported by diffusers, peft and us) warns about optional 4-bit CPU kernels; we use none.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

_NAMES = {
    "train": "loop", "TrainError": "runs",
    "export": "exports",
    "TrainEvent": "events", "Started": "events", "Notice": "events", "StepDone": "events",
    "CheckpointSaved": "events", "ValidationDone": "events", "Finished": "events",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'dreamy.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)

"""Samplers a dream may use: our name -> diffusers scheduler class and A1111's name for it.

Only deterministic samplers are offered: with them a seed fixes the picture whatever the batch.
A scheduler is built from the preset's keyword arguments alone, every other argument at the
class's default, exactly as a recipe written as ``DDIMScheduler(beta_start=..., ...)`` does.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from ..errors import PresetError

# name: (diffusers class, A1111 "Sampler" label)
SAMPLER_CLASSES = {
    "ddim": ("DDIMScheduler", "DDIM"),
    "euler": ("EulerDiscreteScheduler", "Euler"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", "DPM++ 2M"),
    "pndm": ("PNDMScheduler", "PLMS"),
}


def _scheduler_class(sampler: str):
    import diffusers

    return getattr(diffusers, SAMPLER_CLASSES[sampler][0])


def check_scheduler_args(sampler: str, kwargs: dict[str, Any], where: str) -> None:
    cls = _scheduler_class(sampler)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise PresetError(f"{where}: {cls.__name__} takes no argument(s) {unknown}.")


def make_scheduler(sampler: str, kwargs: dict[str, Any]):
    """A fresh scheduler (schedulers hold per-run state, so every job gets its own)."""
    check_scheduler_args(sampler, kwargs, f"sampler '{sampler}'")
    # diffusers' config mixin logs about steps_offset != 1 and similar "outdated config" notes;
    # the recipe keeps those values on purpose.
    log = logging.getLogger("diffusers.configuration_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return _scheduler_class(sampler)(**kwargs)
    finally:
        log.setLevel(level)


def a1111_name(sampler: str) -> str:
    return SAMPLER_CLASSES[sampler][1]

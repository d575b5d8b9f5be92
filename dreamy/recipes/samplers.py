"""Samplers a dream may use: our name -> diffusers scheduler class and A1111's name for it.

Only deterministic samplers are offered: with them a seed fixes the picture whatever the batch.
A scheduler is built from the preset's keyword arguments alone, every other argument at the
class's default, exactly as a recipe written as ``DDIMScheduler(beta_start=..., ...)`` does.
"""

from __future__ import annotations

import functools
import inspect
import json
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


def check_sampler_runs(sampler: str, kwargs: dict[str, Any], steps: int, where: str) -> None:
    """Refuse (PresetError naming ``where``) a sampler + scheduler arguments + step count that diffusers
    would accept and then crash or blow up on mid-dream: the scheduler is built, its timesteps set for
    ``steps`` and checked against its training range, and its whole loop dry-run on a 1-pixel latent."""
    check_scheduler_args(sampler, kwargs, where)
    try:
        key = json.dumps(kwargs, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        key = repr(sorted(kwargs.items()))
    reason = _dry_run(sampler, key, int(steps))
    if reason:
        args = ", ".join(f"{k} = {v!r}" for k, v in kwargs.items()) or "no arguments"
        raise PresetError(f"{where}: sampler '{sampler}' ({SAMPLER_CLASSES[sampler][0]} with {args}) cannot run "
                          f"{steps} steps: {reason}.")


@functools.lru_cache(maxsize=256)
def _dry_run(sampler: str, key: str, steps: int) -> str:
    """"" when the schedule runs; else why not (one clause)."""
    import torch

    try:
        scheduler = make_scheduler(sampler, json.loads(key))
    except Exception as e:  # noqa: BLE001 - diffusers raises anything for a bad value
        return f"the scheduler cannot be built ({type(e).__name__}: {e})"
    try:
        scheduler.set_timesteps(steps, device="cpu")
        timesteps = scheduler.timesteps
        n = int(scheduler.config.num_train_timesteps)
        if len(timesteps) == 0:
            return "it makes no timesteps"
        bad = [int(t) for t in timesteps if not 0 <= float(t) < n]
        if bad:
            return f"its timesteps reach {bad[0]}, outside the model's 0..{n - 1}"
        x = torch.ones(1, 1, 1, 1) * scheduler.init_noise_sigma
        for t in timesteps:
            scheduler.scale_model_input(x, t)
            x = scheduler.step(torch.full_like(x, 0.5), t, x, return_dict=False)[0]
        if not bool(torch.isfinite(x).all()):
            return "its steps produce NaN/inf"
    except Exception as e:  # noqa: BLE001
        return f"diffusers fails ({type(e).__name__}: {e})"
    return ""


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

"""The optimizer and the learning-rate schedule.

The schedule is a pure function of the step (no scheduler object to save): resume only needs the
step number, and the pivot of pivotal tuning can hold a group at zero without a scheduler undoing it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from typing import Any

import torch

from ..errors import TrainSetupError
from ..recipes.settings import TrainSettings

log = logging.getLogger(__name__)


def quiet_bitsandbytes() -> None:
    """bitsandbytes warns about optional 4-bit CPU kernels on import (peft imports it too); we use none."""
    quiet = logging.getLogger("bitsandbytes")
    quiet.setLevel(max(quiet.level, logging.ERROR))


def make_optimizer(groups: list[dict[str, Any]], s: TrainSettings) -> tuple[torch.optim.Optimizer, str | None]:
    """The recipe's optimizer over ``groups`` (each with ``params`` and ``lr``); also a notice, if any."""
    common = dict(betas=(s.adam_beta1, s.adam_beta2), eps=s.adam_epsilon, weight_decay=s.weight_decay)
    for g in groups:
        g.setdefault("initial_lr", g["lr"])
    if s.optimizer == "adamw8bit":
        try:
            quiet_bitsandbytes()
            return _adamw8bit(groups, common), None
        except (ImportError, RuntimeError, AttributeError) as e:
            note = (f"bitsandbytes is not usable here ({type(e).__name__}); training with torch AdamW "
                    "(32-bit optimizer states, about 4x the optimizer memory) instead of AdamW8bit.")
            return torch.optim.AdamW(groups, **common), note
    if s.optimizer == "adamw":
        return torch.optim.AdamW(groups, **common), None
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise TrainSetupError("The prodigy optimizer needs the prodigyopt package: pip install prodigyopt.") from None
    note = None
    if s.learning_rate < 0.1:
        note = f"Prodigy estimates the step size itself; learning_rate is a multiplier (usually 1.0), not {s.learning_rate}."
    for g in groups:  # Prodigy adapts one step size; every group shares the base multiplier
        g["lr"] = g["initial_lr"] = s.learning_rate if g["initial_lr"] > 0 else 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Using decoupled weight decay"
        opt = Prodigy(groups, decouple=True, use_bias_correction=True, safeguard_warmup=True, **common)
    return opt, note


def _adamw8bit(groups: list[dict[str, Any]], common: dict[str, Any]) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW8bit, whose step waits for the training stream only, not the whole GPU.

    Its ``step`` calls ``torch.cuda.synchronize()`` after every parameter (``sync_gpu`` in
    bitsandbytes/utils.py): a device-wide wait, which also waits for a validation row that Dream renders
    on a stream of its own beside the loop (rows.py), so each step would queue behind a whole row. The
    updates are queued on the current stream, so waiting for that stream keeps the wait's meaning for
    the loop; the arithmetic is untouched. Paged states (not used here) keep the device-wide wait."""
    import bitsandbytes as bnb
    from bitsandbytes.optim import optimizer as bnb_optimizer

    class AdamW8bit(bnb.optim.AdamW8bit):
        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            if getattr(self, "is_paged", False) or not hasattr(bnb_optimizer, "sync_gpu"):
                return super().step(closure)
            device_wide = bnb_optimizer.sync_gpu
            bnb_optimizer.sync_gpu = _sync_stream
            try:
                return super().step(closure)
            finally:
                bnb_optimizer.sync_gpu = device_wide

    return AdamW8bit(groups, **common)


def _sync_stream(t: torch.Tensor) -> None:
    if t.device.type == "cuda":
        torch.cuda.current_stream(t.device).synchronize()


def lr_factor(s: TrainSettings, step: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    The shapes are diffusers' schedules, except that warm-up starts at 1/warmup rather than at 0
    (diffusers' first warm-up step trains with lr 0 and so is wasted).
    """
    warm = s.lr_warmup_steps if s.lr_scheduler != "constant" else 0
    if step < warm:
        return (step + 1) / warm if s.lr_scheduler != "constant" else 1.0
    if s.lr_scheduler in ("constant", "constant_with_warmup"):
        return 1.0
    progress = (step - warm) / max(1, s.max_train_steps - warm)
    if s.lr_scheduler == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def apply_lr(optimizer: torch.optim.Optimizer, s: TrainSettings, step: int, frozen: set[str] = frozenset()) -> float:
    """Set every group's lr for ``step``; groups named in ``frozen`` stay at 0. Returns the first group's lr."""
    factor = lr_factor(s, step)
    for g in optimizer.param_groups:
        g["lr"] = 0.0 if g.get("name") in frozen else g["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]

"""One optimizer step of ``train()``: pivot and lr, the micro-steps, unscale, clip, update, the checks.

Each optimizer step: pivot/lr for the step -> ``accum`` micro-steps of forward/backward (``loss.py``)
-> unscale, clip, step, update. The loss, the gradients and the weights are checked for NaN/inf
with one host sync each, so a diverged run stops before anything of it is saved.
"""

from __future__ import annotations

import math

import torch

from ..events import CancelToken
from ..recipes.settings import TrainSettings
from .optim import apply_lr
from .parallel import Group
from .run_setup import Run
from .runs import TrainError


def stop_requested(group: Group, cancel: CancelToken | None) -> bool:
    """Whether any process was asked to stop: all of them then stop at the same step."""
    return group.any(cancel is not None and cancel.cancelled)


def optimizer_step(run: Run, step: int) -> tuple[float, float]:
    """Optimizer step ``step`` (0-based), logged as step + 1; returns its loss and lr.

    The loss is divided by ``accum`` before backward, so the accumulated gradient is the mean's.
    """
    s, tr, optimizer, scaler, group = run.s, run.tr, run.optimizer, run.scaler, run.group
    tr.before_step(step)  # pivotal tuning: from the pivot on, the new tokens are frozen
    lr = apply_lr(optimizer, s, step, tr.frozen_groups(step))
    accum = s.gradient_accumulation_steps
    losses = []
    for a in range(accum):
        loss = run.micro_loss(step * accum + a)
        scaler.scale(loss / accum).backward()
        losses.append(loss.detach())
    params = tr.optimizer_params()
    group.sum_grads(params)  # N processes: the global batch's gradient, identical on every rank
    loss_value = float(group.sum(torch.stack(losses).mean()))
    if not math.isfinite(loss_value):  # before the update: the weights (and every checkpoint) stay finite
        _diverged(f"the loss became {loss_value}", step)
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm) if s.max_grad_norm > 0 else None
    if not scaler.is_enabled():  # (fp16: the scaler skips a step with inf/NaN gradients and lowers its scale)
        if not _finite(params, norm, grads=True):
            _diverged("the gradients became NaN or infinite", step)
    scale_before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    skipped = scale_before is not None and scaler.get_scale() < scale_before
    tr.zero_grad(optimizer)
    tr.after_step()
    if not _finite(params):
        _diverged("the trained weights became NaN or infinite", step)
    row = {"step": step + 1, "loss": loss_value, "lr": lr}
    if skipped:
        row["skipped"] = True  # fp16 overflow: the scaler skipped this update and lowered its scale
    if group.is_main:
        run.log.append(**row)
    return loss_value, lr


def _finite(tensors: list[torch.Tensor], norm: torch.Tensor | None = None, grads: bool = False) -> bool:
    """Whether every value is finite (the gradients' when ``grads``): one sum per tensor, one sync."""
    if norm is not None:
        return bool(torch.isfinite(norm))
    sums = [(t.grad if grads else t).detach().sum(dtype=torch.float32) for t in tensors if not grads or t.grad is not None]
    return not sums or bool(torch.isfinite(torch.stack(sums).sum()))


def _diverged(what: str, step: int) -> None:
    raise TrainError(f"Training stopped at step {step + 1}: {what}, so the run diverged; the checkpoints already "
                     "saved are kept and intact: lower the learning rate, or resume from an earlier checkpoint.")


def eta(s: TrainSettings, step: int, step_times: list[float], ckpt_times: list[float]) -> float:
    """Seconds left: the mean step time per step left, plus the mean checkpoint time per checkpoint left."""
    total, every = s.max_train_steps, s.checkpointing_steps
    mean_step = sum(step_times) / len(step_times)
    per_ckpt = (sum(ckpt_times) / len(ckpt_times)) if ckpt_times else 0.0
    left_ckpts = len(range(step + every - step % every, total + 1, every))
    return (total - step) * mean_step + left_ckpts * per_ckpt

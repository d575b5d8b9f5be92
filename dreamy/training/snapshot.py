"""A checkpoint's state taken in a moment, so that writing it can happen beside the next steps.

``take`` copies what a checkpoint holds off the live tensors: the fp16 parts (cast on the device, as
the writer used to cast them), the fp32 masters, the optimizer and scaler state and the RNG streams.
On CUDA the copies go into pinned host buffers that are kept for the next checkpoint (one write is
in flight at most, so one set suffices) and are queued on the training stream: the next step's
kernels come after them in stream order, so the loop never waits for them; the writer thread waits
for ``Snapshot.ready`` before it reads a byte. On the CPU they are plain clones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .modes import Trainables


class HostBuffers:
    """Pinned host tensors by name, reused from one snapshot to the next (CUDA only)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self.pinned = True

    def copy(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """A host copy of ``t``: queued (non-blocking) for a CUDA tensor, immediate for a CPU one."""
        t = t.detach()
        if t.device.type == "cpu":
            return t.clone()
        buf = self._buffers.get(name)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            try:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pinned)
            except RuntimeError:  # pinning refused (locked-memory limits): pageable memory still works
                self.pinned = False
                buf = torch.empty(t.shape, dtype=t.dtype)
            self._buffers[name] = buf
        buf.copy_(t, non_blocking=self.pinned)
        return buf


@dataclass
class Snapshot:
    """What checkpoint ``step`` writes, as host tensors (valid once ``ready()`` has returned)."""

    step: int
    parts: dict[str, dict[str, torch.Tensor]]  # fp16 inference parts, by part name
    masters: dict[str, torch.Tensor]  # fp32 trained tensors, by the run's stable names
    state: dict[str, Any]  # step, optimizer, scaler, rng: what resume/state.pt holds
    configs: dict[str, Callable[[Any], None]] = field(default_factory=dict)  # part -> writes its config.json
    tokens: list[str] = field(default_factory=list)
    done: torch.cuda.Event | None = None

    def ready(self) -> None:
        """Wait until the queued device-to-host copies have landed."""
        if self.done is not None:
            self.done.synchronize()


def non_finite(trainables: Trainables) -> list[str]:
    """The trained tensors holding a NaN or an infinity (one host sync for all of them)."""
    params = list(trainables.params.items())
    if not params:
        return []
    flags = torch.stack([torch.isfinite(t.detach()).all() for _, t in params]).cpu()
    return [k for (k, _), ok in zip(params, flags.tolist(), strict=True) if not ok]


def _copy_tree(obj: Any, buffers: HostBuffers, name: str) -> Any:
    if isinstance(obj, torch.Tensor):
        return buffers.copy(name, obj)
    if isinstance(obj, dict):
        return {k: _copy_tree(v, buffers, f"{name}/{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_copy_tree(v, buffers, f"{name}/{i}") for i, v in enumerate(obj))
    return obj


def take(step: int, trainables: Trainables, optimizer: torch.optim.Optimizer, scaler: Any, rng: dict[str, Any],
         buffers: HostBuffers) -> tuple[Snapshot, dict[str, dict[str, torch.Tensor]]]:
    """The snapshot of checkpoint ``step``, and its fp16 parts on the training device (for the validation
    model; the caller drops them once used). Takes no host sync on CUDA beyond reading the scaler."""
    device_parts = {part: {k: t.detach().to(torch.float16) if t.is_floating_point() else t.detach()
                           for k, t in tensors.items()}
                    for part, tensors in trainables.checkpoint_parts().items()}
    parts = {part: {k: buffers.copy(f"part/{part}/{k}", t) for k, t in tensors.items()}
             for part, tensors in device_parts.items()}
    masters = {k: buffers.copy(f"master/{k}", p) for k, p in trainables.params.items()}
    state = {
        "step": step,
        "optimizer": _copy_tree(optimizer.state_dict(), buffers, "optimizer"),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng,
    }
    configs: dict[str, Callable[[Any], None]] = {}
    if "unet" in parts:
        configs["unet"] = trainables.unet.save_config
    if "text_encoder" in parts:
        configs["text_encoder"] = trainables.text_encoder.config.save_pretrained
    done = None
    if any(t.is_cuda for t in trainables.params.values()):
        done = torch.cuda.Event()
        done.record()
    return Snapshot(step, parts, masters, state, configs, list(trainables.tokens), done), device_parts

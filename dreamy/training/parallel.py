"""Data-parallel training over the processes of ``accelerate launch`` (one per GPU, or N CPU processes).

With one process (no launcher) every method here is a no-op and the loop runs exactly as it always
did. With N > 1, every rank draws the same *global* batch (``train_batch_size`` x N images, from
(seed, micro-step)) and the same random numbers for it, computes only its own rows, and the trained
tensors' gradients are summed across ranks before unscale, clip and optimizer step. So each rank
takes the identical step, the replicas never drift apart, and the run trains like one process with
batch ``train_batch_size`` x N. This is DDP's arithmetic without DDP's module wrapper, which keeps
fused parameters, LoRA, pivotal freezing and gradient accumulation unchanged. Only the main process
writes files; the others wait at barriers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

_BUCKET_BYTES = 64 << 20  # gradients are summed in flat buckets: one collective per 64 MB, not per tensor


def world_size() -> int:
    """Processes started by ``accelerate launch`` (torchrun sets WORLD_SIZE); 1 without a launcher."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE") or 1))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """Whether this process reports and writes (rank 0 under a launcher; always true without one)."""
    return (os.environ.get("RANK") or "0") == "0"


@dataclass
class Group:
    """This process's place among the trainers; the default is the single process."""

    rank: int = 0
    size: int = 1
    device: torch.device | None = None  # where this rank trains (its own GPU, or the CPU)
    state: Any = None  # accelerate's PartialState, when size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            self.state.wait_for_everyone()

    def shard(self, n: int, per_rank: int) -> tuple[list[int], torch.Tensor | None]:
        """Positions of a global batch of ``n`` rows that this rank computes, and their loss weights.

        A short last batch of an epoch leaves some ranks fewer than ``per_rank`` rows: they are
        padded with repeats of weight 0, so every rank runs the same graph (and the same shapes) and
        adds nothing for them. One process: every row, no weights (the loop's plain mean).
        """
        if self.size == 1:
            return list(range(n)), None
        pos = range(self.rank * per_rank, (self.rank + 1) * per_rank)
        return [p % n for p in pos], torch.tensor([float(p < n) for p in pos], device=self.device)

    def pick(self, t: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """This rank's rows of a tensor drawn for the whole global batch."""
        return t if self.size == 1 else t[rows]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            t = t.clone()
            torch.distributed.all_reduce(t)
        return t

    def any(self, flag: bool) -> bool:
        """A decision every rank takes together (a stop seen by one process stops all)."""
        if self.size == 1:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item() > 0)

    def sum_grads(self, params: list[torch.Tensor]) -> None:
        """Sum every trained tensor's gradient across ranks, in place (before unscale and clip).

        Each rank's loss is its share of the global batch's mean, so the sum is that mean's gradient.
        Summed grads are identical on every rank, so the GradScaler's inf check, the clip and the
        optimizer (AdamW, 8-bit AdamW, Prodigy) see the same numbers everywhere.
        """
        if self.size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        bucket: list[torch.Tensor] = []
        size = 0
        for g in grads:
            if bucket and (size + g.numel() * g.element_size() > _BUCKET_BYTES or g.dtype != bucket[0].dtype):
                _reduce(bucket)
                bucket, size = [], 0
            bucket.append(g)
            size += g.numel() * g.element_size()
        if bucket:
            _reduce(bucket)


def _reduce(bucket: list[torch.Tensor]) -> None:
    if len(bucket) == 1:  # e.g. the fused flat gradient: reduced in place, no copy of gigabytes
        torch.distributed.all_reduce(bucket[0])
        return
    flat = torch.cat([g.reshape(-1) for g in bucket])
    torch.distributed.all_reduce(flat)
    offset = 0
    for g in bucket:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def join(device: str | None) -> Group:
    """The process group of ``accelerate launch``, or the single process when there is no launcher."""
    if world_size() == 1:
        return Group()
    from accelerate import PartialState

    # cpu=True: gloo over N CPU processes (accelerate's --cpu would start only one); else one GPU per rank
    state = PartialState(cpu=device == "cpu")
    dev = torch.device("cpu") if device == "cpu" else state.device
    return Group(state.process_index, state.num_processes, dev, state)

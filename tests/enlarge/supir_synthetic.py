"""Deterministic synthetic weights, keyed by official SUPIR/sgm names.

The oracle harness (outside the repo, see tests/fixtures/supir/README.md) filled the official modules
with exactly these tensors, so the tests can rebuild the same model from a list of names and shapes
instead of shipping gigabytes of weights. Uniform draws keep generation fast (900 M values in ~4 s).
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "supir"


def synthetic_tensor(name: str, shape: list[int] | tuple[int, ...], seed: int) -> torch.Tensor:
    """A fixed random tensor for parameter ``name``: fan-in scaled weights, near-1 norm scales, small biases."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    out = torch.empty(tuple(shape)).uniform_(-1.0, 1.0, generator=gen)
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) >= 2:
        return out.mul_(math.sqrt(3.0 / math.prod(shape[1:])))
    if leaf == "weight":  # norm scales
        return out.mul_(0.1).add_(1.0)
    return out.mul_(0.05)


def synthetic_state_dict(manifest: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    return {name: synthetic_tensor(name, shape, seed) for name, shape in manifest.items()}


def load_manifest(name: str) -> dict[str, list[int]]:
    return json.loads((FIXTURES / name).read_text())

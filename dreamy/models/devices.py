"""Device and dtype policy: fp16 on CUDA, fp32 on the CPU, an explicit ``--device`` wins."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import DreamyError

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def pick_device(name: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA if present, else Apple's MPS, else the CPU."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DreamyError(f"'{name}' is not a device; use auto, cpu, cuda, cuda:1 or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DreamyError(f"Device '{name}' was asked for but this PyTorch sees no CUDA GPU; use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DreamyError(f"Device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DreamyError(f"Device '{name}' was asked for but MPS is not available here; use --device cpu.")
    return device


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``: half precision only on an accelerator."""
    if device.type == "cpu":
        return torch.float32  # CPU half-precision convolutions are slow and not what users expect
    if precision == "bf16" and device.type == "mps":
        return torch.float16
    return _DTYPES[precision]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]


def runtime_info(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """What, besides the recipe, decides the exact bits of a picture: device, dtype, library versions."""
    import platform

    import diffusers
    import transformers

    from .. import __version__

    info: dict[str, Any] = {
        "device": device.type,
        "dtype": dtype_name(dtype),
        "rng": "cpu",  # every draw comes from a CPU generator, so a seed gives the same noise on any device
        "versions": {
            "dreamy": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info

"""Put a SUPIR checkpoint's weights into our modules, refusing anything that does not fit.

The official loader uses ``load_state_dict(strict=False)``, which silently ignores a wrong file. Here
every key must have a place and every place must be filled; otherwise a ``SourceError`` names the
offending keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SourceError
from .keys import UNUSED_KEYS

# Keys of the SDXL backbone that a full (unpruned) SUPIR file may carry beside its own weights.
BACKBONE_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "conditioner.")
_SHOWN = 5


@dataclass
class SupirWeights:
    """A SUPIR checkpoint split by destination, in this package's key names.

    ``backbone`` keeps any SDXL weights the file also carries, under their official names: the
    official loader lets them override the base model, so the caller must apply them after it.
    """

    parts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    backbone: dict[str, torch.Tensor] = field(default_factory=dict)

    def part(self, name: str) -> dict[str, torch.Tensor]:
        return self.parts.get(name, {})


def listing(keys: list[str]) -> str:
    """A few sorted names and how many more: enough to recognise the problem in one sentence."""
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def split_supir_state_dict(
    state: Mapping[str, torch.Tensor],
    names: Mapping[str, tuple[str, str]],
    name: str = "The SUPIR checkpoint",
) -> SupirWeights:
    """Sort an official state dict into parts by ``names`` (official key -> (part, our key)).

    Keys under a backbone prefix that are not SUPIR's go to ``backbone``; any other key is refused.
    """
    out = SupirWeights()
    unknown: list[str] = []
    for key, tensor in state.items():
        if key in names:
            part, ours = names[key]
            out.parts.setdefault(part, {})[ours] = tensor
        elif key.startswith(BACKBONE_PREFIXES) and "project_modules." not in key and "denoise_encoder." not in key:
            out.backbone[key] = tensor
        elif key not in UNUSED_KEYS:
            unknown.append(key)
    if unknown:
        raise SourceError(
            f"{name} has {len(unknown)} weights that SUPIR v0 does not have ({listing(unknown)}); "
            "it is not a SUPIR v0Q/v0F checkpoint, or it was made for another base model."
        )
    if not out.parts:
        raise SourceError(f"{name} holds no SUPIR weights (it may be a plain SDXL checkpoint).")
    return out


def load_exact(
    module: nn.Module, state: Mapping[str, torch.Tensor], what: str, official: Mapping[str, str] | None = None
) -> None:
    """``module.load_state_dict(state, assign=True)`` after checking keys and shapes one by one.

    Works for modules on the meta device: every parameter must come from ``state``. Messages name
    keys by ``official`` (our key -> the checkpoint's name) where given.
    """
    official = official or {}
    expected = module.state_dict()
    missing = [official.get(k, k) for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{official.get(k, k)} {tuple(state[k].shape)} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({listing(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape ({listing(wrong)})")
    if problems:
        raise SourceError(f"The {what} weights do not fit the model: " + "; ".join(problems) + ".")
    module.load_state_dict(dict(state), strict=True, assign=True)

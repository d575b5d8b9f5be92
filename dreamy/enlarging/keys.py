"""Key names: the official name (in SUPIR's checkpoints) of every weight of our modules.

A SUPIR checkpoint (``SUPIR-v0Q.ckpt``, ``SUPIR-v0F.ckpt`` or the pruned ``*_fp16.safetensors``) holds
three parts under fixed prefixes:

- ``model.control_model.*``: GLVControl in LDM UNet names (``input_blocks``, ``middle_block`` ...),
  plus ``input_hint_block.0``, our ``hint_conv``;
- ``model.diffusion_model.project_modules.{0..11}.*``: the connectors, in the official list order
  (by control index, a ZeroCrossAttn before the ZeroSFT of the same index);
- ``first_stage_model.denoise_encoder.*``: a VAE encoder in LDM names.

The LDM layouts are not restated here: the exporter's renamers in ``dreamy.models.ldm_keys`` (diffusers ->
LDM) are run on placeholders of our keys and inverted, so one table of layout facts serves both
directions. Only the connectors' names are SUPIR's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from ..models.ldm_keys import unet_to_ldm, vae_to_ldm
from .connectors import ConnectorLayout

CONTROL_PREFIX = "model.control_model."
CONNECTOR_PREFIX = "model.diffusion_model.project_modules."
DENOISE_ENCODER_PREFIX = "first_stage_model.denoise_encoder."
# A training leftover in the released checkpoints that no released code reads.
UNUSED_KEYS = frozenset({"model.control_model.mask_LQ"})

_HINT = ("hint_conv.", "input_hint_block.0.")
# Our connector leaf -> official leaf. The official "param_free_norm" is affine, hence plain "norm".
_SFT_LEAVES = {
    "norm": "param_free_norm",
    "control_conv": "mlp_shared.0",
    "gamma": "zero_mul",
    "beta": "zero_add",
    "skip_proj": "zero_conv",
}
_CROSS_ATTN_LEAVES = {"norm_query": "norm1", "norm_control": "norm2", "attn": "attn"}


def _inverted(to_ldm: Callable[..., Mapping[str, torch.Tensor]], keys: Iterable[str], prefix: str) -> dict[str, str]:
    """Official name -> our key, by renaming one-element placeholders (nothing gets reshaped) by identity."""
    marks = {key: torch.empty(0, device="meta") for key in keys}
    owner = {id(t): key for key, t in marks.items()}
    return {name: owner[id(t)] for name, t in to_ldm(marks, prefix=prefix).items()}


def control_names(keys: Iterable[str]) -> dict[str, str]:
    """Official ``model.control_model.*`` name -> GLVControl key."""
    keys = list(keys)
    hint = {CONTROL_PREFIX + _HINT[1] + k[len(_HINT[0]) :]: k for k in keys if k.startswith(_HINT[0])}
    return hint | _inverted(unet_to_ldm, (k for k in keys if not k.startswith(_HINT[0])), CONTROL_PREFIX)


def denoise_encoder_names(keys: Iterable[str]) -> dict[str, str]:
    """Official ``first_stage_model.denoise_encoder.*`` name -> diffusers ``Encoder`` key."""
    # vae_to_ldm names the encoder "encoder.*" after its prefix: "first_stage_model.denoise_" + "encoder.*".
    names = _inverted(vae_to_ldm, ("encoder." + k for k in keys), DENOISE_ENCODER_PREFIX[: -len("encoder.")])
    return {name: key[len("encoder.") :] for name, key in names.items()}


def official_connector_order(layout: ConnectorLayout) -> list[str]:
    """Our module prefix for each official ``project_modules`` index, in official order."""
    upsampler_of = {ctrl: k for k, (_, ctrl, _) in enumerate(layout.upsample_blocks)}
    count = len(layout.skip_channels) + 1  # residuals, then the mid block
    order = []
    for ctrl in range(count):
        if ctrl in upsampler_of:
            order.append(f"upsamplers.{upsampler_of[ctrl]}")
        order.append("mid" if ctrl == count - 1 else f"skips.{ctrl}")
    return order


def connector_names(keys: Iterable[str], layout: ConnectorLayout) -> dict[str, str]:
    """Official ``project_modules.*`` name -> Connectors key."""
    index = {prefix: i for i, prefix in enumerate(official_connector_order(layout))}
    names = {}
    for key in keys:
        if key.startswith("mid."):
            prefix, leaf = "mid", key[len("mid.") :]
        else:
            group, slot, leaf = key.split(".", 2)
            prefix = f"{group}.{slot}"
        table = _CROSS_ATTN_LEAVES if prefix.startswith("upsamplers.") else _SFT_LEAVES
        head, rest = leaf.split(".", 1)
        names[f"{CONNECTOR_PREFIX}{index[prefix]}.{table[head]}.{rest}"] = key
    return names

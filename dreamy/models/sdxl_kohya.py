"""SDXL LoRA adapters (peft layout) in kohya's layout, the one A1111/Forge, ComfyUI and kohya sd-scripts read.

kohya sd-scripts names an SDXL LoRA module by its path in the original (SGM) model with dots as
underscores: the UNet's ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``, the first
text encoder's ``lora_te1_text_model_encoder_layers_0_self_attn_q_proj``, the second's ``lora_te2_...``.
Each module has ``.lora_down.weight`` (peft's ``lora_A``), ``.lora_up.weight`` (``lora_B``) and
``.alpha`` (a scalar; the update is ``up @ down * alpha / rank``, as peft's ``lora_alpha / r``).
The UNet's original names come from dreamy/models/ldm_keys.py (the single-file exporter's table),
applied to the LoRA's module paths; the text encoders' keep transformers 4's ``text_model.`` (kohya's
names), which transformers 5's CLIPTextModel paths lack.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .ldm_keys import UNET_PREFIX, unet_to_ldm


def unet_names(unet: Any) -> dict[str, str]:
    """diffusers module path -> SGM module path, for every weight-bearing module of the UNet."""
    marks = {k: torch.empty(0, device="meta") for k in unet.state_dict() if k.endswith(".weight")}
    owner = {id(t): k for k, t in marks.items()}
    return {owner[id(t)][: -len(".weight")]: name[len(UNET_PREFIX) : -len(".weight")]
            for name, t in unet_to_ldm(marks).items()}


def kohya_state_dict(
    *,
    alpha: float,
    unet: Any = None,
    unet_lora: Mapping[str, torch.Tensor] | None = None,
    text_encoder_lora: Mapping[str, torch.Tensor] | None = None,
    text_encoder_2_lora: Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """peft LoRA state dicts (``get_peft_model_state_dict`` of each part: ``<module>.lora_A.weight`` /
    ``<module>.lora_B.weight``) -> one kohya SDXL state dict (``lora_unet_*``, ``lora_te1_*``,
    ``lora_te2_*``; ``.lora_down``, ``.lora_up``, ``.alpha``), tensors cast to ``dtype`` (None keeps
    theirs) and contiguous on the CPU. ``unet`` (the base UNet module, for its layout) is needed with
    ``unet_lora``. Raises KeyError for a key that is not a peft LoRA weight."""
    out: dict[str, torch.Tensor] = {}
    names = unet_names(unet) if unet_lora else {}
    for prefix, sd, rename in (("lora_unet", unet_lora, names.__getitem__),
                               ("lora_te1", text_encoder_lora, str), ("lora_te2", text_encoder_2_lora, str)):
        for key, tensor in (sd or {}).items():
            for peft, kohya in ((".lora_A.weight", "lora_down"), (".lora_B.weight", "lora_up")):
                if key.endswith(peft):
                    module = rename(key[: -len(peft)])
                    if prefix != "lora_unet" and not module.startswith("text_model."):
                        module = "text_model." + module  # kohya names CLIP by transformers 4's paths
                    name = f"{prefix}_{module.replace('.', '_')}"
                    t = tensor.detach().cpu()
                    out[f"{name}.{kohya}.weight"] = (t.to(dtype) if dtype is not None else t).contiguous()
                    out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype or torch.float32)
                    break
            else:
                raise KeyError(f"{key!r} is not a peft LoRA weight (…lora_A.weight / …lora_B.weight)")
    return out

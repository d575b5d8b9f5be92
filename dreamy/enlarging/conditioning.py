"""SDXL text conditioning as SUPIR builds it.

SUPIR's conditioner equals diffusers' SDXL prompt encoding: CLIP-L ``hidden_states[-2]`` concatenated
with OpenCLIP bigG ``hidden_states[-2]`` (77 x 2048), and bigG's projected pooled output. Two things
differ from the diffusers pipeline defaults and are fixed here:

- the size conditioning is always original 1024x1024, crop (0, 0), target 1024x1024, whatever the
  image size (``SUPIRModel.prepare_condition``);
- the negative prompt is encoded like the positive one, even when empty (no zeroed embeddings).

The text actually encoded is ``caption + positive`` with no separator; without a captioner (LLaVA) the
caption is empty, so the positive prompt alone is encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# (original h, original w, crop top, crop left, target h, target w), as SUPIR hard-codes it.
SUPIR_TIME_IDS = (1024, 1024, 0, 0, 1024, 1024)


@dataclass
class TextConditioning:
    """One side of classifier-free guidance: cross-attention context and SDXL's added vector."""

    context: torch.Tensor  # (B, 77, 2048)
    vector: torch.Tensor  # (B, 2816) = pooled bigG (1280) + 6 x 256 size embeddings


def added_vector(pooled: torch.Tensor, add_time_proj: nn.Module) -> torch.Tensor:
    """SDXL's added-conditioning vector with SUPIR's fixed size conditioning (the UNet's ``add_time_proj``)."""
    ids = torch.tensor(SUPIR_TIME_IDS, dtype=torch.float32, device=pooled.device).repeat(pooled.shape[0], 1)
    sizes = add_time_proj(ids.flatten()).reshape(pooled.shape[0], -1)
    return torch.cat([pooled, sizes.to(pooled.dtype)], dim=-1)


@torch.no_grad()
def encode_text(
    prompts: Sequence[str],
    tokenizers: Sequence[nn.Module],
    text_encoders: Sequence[nn.Module],
    add_time_proj: nn.Module,
) -> TextConditioning:
    """Encode ``prompts`` with SDXL's two tokenizers/encoders (CLIP-L, then bigG with projection).

    Each tokenizer pads to its max length (77) and truncates, as both SUPIR's embedders do; the
    penultimate hidden state (no final layer norm) of each encoder is used; the pooled vector comes
    from the last encoder's ``text_embeds``.
    """
    if len(tokenizers) != 2 or len(text_encoders) != 2:
        raise ValueError("SDXL conditioning needs two tokenizers and two text encoders")
    states = []
    pooled = None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenizer(
            list(prompts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(encoder.device)
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = getattr(out, "text_embeds", None)
    if pooled is None:
        raise ValueError("the second SDXL text encoder must have a projection (CLIPTextModelWithProjection)")
    context = torch.cat(states, dim=-1)
    return TextConditioning(context=context, vector=added_vector(pooled, add_time_proj))

"""SDXL's conditioning: two text encoders, a pooled text embedding and the size/crop "time ids".

Follows stock diffusers' ``StableDiffusionXLPipeline`` operation for operation (tests hold Dream to
it bit for bit on the CPU):

- each prompt goes through both tokenizers (77 tokens, padded with their own pad token: SDXL's second
  pads with ``!``) and text encoders; the **penultimate** hidden states of both are concatenated
  (768 + 1280 = 2048 wide for SDXL), the **pooled, projected** output of the second (1280) is the
  ``text_embeds`` the UNet adds to its time embedding;
- an empty negative prompt is all zeros (embeddings and pooled) when the model's pipeline config says
  ``force_zeros_for_empty_prompt`` (SDXL base does; stock's ``negative_prompt=None``; A1111 zeros an
  empty SDXL negative prompt too); any other negative prompt is encoded like the prompt;
- ``time_ids`` = ``original_size + crops_coords_top_left + target_size`` = ``(h, w, 0, 0, h, w)``:
  the picture is asked for as an uncropped ``h`` x ``w`` original (stock's defaults), the same for the
  negative prompt, in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.sources import SDModel


@dataclass(frozen=True)
class SDXLText:
    """An encoded SDXL prompt: ``embeds`` (1, 77, hidden_1 + hidden_2) and ``pooled`` (1, projection_dim),
    in the model's dtype and device."""

    embeds: torch.Tensor
    pooled: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.embeds.shape


@torch.no_grad()
def encode(model: SDModel, text: str, negative: bool = False) -> SDXLText:
    """``text`` through both text encoders (see the module docstring); ``negative``: it is the negative
    prompt, which is all zeros when empty and the model has ``force_zeros_for_empty_prompt``."""
    encoders = (model.text_encoder, model.text_encoder_2)
    tokenizers = (model.tokenizer, model.tokenizer_2)
    if negative and text == "" and model.force_zeros_for_empty_prompt:
        width = sum(e.config.hidden_size for e in encoders)
        length = model.tokenizer.model_max_length
        dtype = model.text_encoder_2.dtype
        return SDXLText(torch.zeros(1, length, width, dtype=dtype, device=model.device),
                        torch.zeros(1, model.text_encoder_2.config.projection_dim, dtype=dtype, device=model.device))
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, encoders, strict=True):
        ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        out = encoder(ids.to(model.device), output_hidden_states=True)
        if pooled is None and out[0].ndim == 2:  # the projected pooled output: only the second encoder has one
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    dtype = model.text_encoder_2.dtype
    return SDXLText(torch.concat(hidden, dim=-1).to(dtype=dtype, device=model.device),
                    pooled.to(dtype=dtype, device=model.device))


def time_ids(model: SDModel, width: int, height: int) -> torch.Tensor:
    """(1, 6): original size (h, w), crop top-left (0, 0), target size (h, w), in the model's dtype.

    Raises ValueError when the UNet's added embedding does not fit (a UNet and text encoder of two
    different models), as stock's ``_get_add_time_ids`` does."""
    values = [height, width, 0, 0, height, width]
    want = model.unet.add_embedding.linear_1.in_features
    have = model.unet.config.addition_time_embed_dim * len(values) + model.text_encoder_2.config.projection_dim
    if want != have:
        raise ValueError(f"the UNet expects an added embedding of {want}, the text encoder and size give {have}")
    return torch.tensor([values], dtype=model.dtype, device=model.device)


def conditioning_record(model: SDModel, width: int, height: int, negative_prompt: str) -> dict:
    """What the recipe's runtime records of SDXL's conditioning (derived from the settings, so recall
    re-creates it): the three size/crop fields and how the negative prompt was made."""
    zeros = negative_prompt == "" and model.force_zeros_for_empty_prompt
    return {"original_size": [height, width], "crops_coords_top_left": [0, 0], "target_size": [height, width],
            "negative_prompt_embeds": "zeros" if zeros else "encoded", "text_encoders": "penultimate layers of both, "
            "concatenated; pooled from the second"}


def added_cond(model: SDModel, parts: list[SDXLText], n: int, ids: torch.Tensor) -> dict:
    """The UNet's ``added_cond_kwargs`` for a batch of ``n`` rows per part, parts in batch order."""
    pooled = torch.cat([p.pooled.expand(n, -1) for p in parts])
    return {"text_embeds": pooled, "time_ids": ids.expand(n * len(parts), -1)}

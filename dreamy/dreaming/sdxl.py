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

With the ``a1111`` prompt syntax the text is read as AUTOMATIC1111 (and Forge) read it for SDXL
(``modules/sd_hijack_clip.py``, ``sd_hijack_open_clip.py``, ``sd_models_xl.py``; sgm's
``GeneralConditioner``): each encoder cuts the prompt into its own 75-token chunks with a weight per
token (dreamy/models/a1111_prompt.py; both tokenizers share CLIP's vocabulary, so the cuts agree;
after a chunk's first end-of-text each pads with its own pad token, ``!`` for the second), encodes
every chunk on its own, takes the penultimate hidden states and applies the weights with A1111's
mean-restoring "Original" emphasis **per encoder and per chunk**; the two encoders' chunks are
concatenated along the width (768 + 1280) and the chunks side by side along the tokens
(1, 77 * chunks, 2048). The pooled embedding is the second encoder's for the **first chunk**,
unweighted (A1111's ``zs[0].pooled``). An empty negative prompt is all zeros whatever the model's
config says (A1111's ``force_zero_negative_prompt``). A prompt and a negative prompt with different
chunk counts are read by the UNet in two passes, as A1111's ``CFGDenoiser`` does by default ("Pad
prompt/negative prompt" off); Forge repeats the shorter to a common length instead, which attention
reads alike (every key repeated equally often), up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DreamyError
from ..models.a1111_prompt import chunk_prompt, original_emphasis
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


def zero_negative(model: SDModel, negative_prompt: str, syntax: str = "plain") -> bool:
    """Whether the negative prompt is encoded as all zeros: when it is empty and the model's pipeline
    config says ``force_zeros_for_empty_prompt`` (stock), or always when empty with the "a1111"
    syntax (A1111 zeros an empty SDXL negative prompt whatever the model)."""
    return negative_prompt == "" and (model.force_zeros_for_empty_prompt or syntax == "a1111")


@torch.no_grad()
def encode(model: SDModel, text: str, negative: bool = False, syntax: str = "plain") -> SDXLText:
    """``text`` through both text encoders (see the module docstring); ``negative``: it is the negative
    prompt, all zeros when :func:`zero_negative` says so. ``syntax``: "plain" (stock diffusers, 77
    tokens) or "a1111" (:func:`encode_a1111`). Raises PresetError for an a1111 weight that is not a
    number."""
    encoders = (model.text_encoder, model.text_encoder_2)
    tokenizers = (model.tokenizer, model.tokenizer_2)
    if negative and zero_negative(model, text, syntax):
        width = sum(e.config.hidden_size for e in encoders)
        length = model.tokenizer.model_max_length
        dtype = model.text_encoder_2.dtype
        return SDXLText(torch.zeros(1, length, width, dtype=dtype, device=model.device),
                        torch.zeros(1, model.text_encoder_2.config.projection_dim, dtype=dtype, device=model.device))
    if syntax == "a1111":
        return encode_a1111(model, text)
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


@torch.no_grad()
def encode_a1111(model: SDModel, text: str) -> SDXLText:
    """``text`` as A1111 encodes it for SDXL (module docstring): ``embeds`` (1, 77 * chunks,
    hidden_1 + hidden_2), ``pooled`` (1, projection_dim) from the first chunk, in the second encoder's
    dtype on the model's device. A one-chunk prompt without weights is bit for bit the plain encoding.

    Raises PresetError for a weight that is not a number, DreamyError when the two tokenizers cut the
    prompt into different numbers of chunks (two vocabularies: not an SDXL model A1111 could read)."""
    per_encoder: list[list[torch.Tensor]] = []
    pooled = None
    for tokenizer, encoder in ((model.tokenizer, model.text_encoder), (model.tokenizer_2, model.text_encoder_2)):
        zs = []
        for i, chunk in enumerate(chunk_prompt(tokenizer, text)):
            ids = torch.tensor([chunk.ids], dtype=torch.long, device=model.device)
            out = encoder(ids, output_hidden_states=True)
            if i == 0 and out[0].ndim == 2:  # the projected pooled output: the second encoder, first chunk only
                pooled = out[0]
            zs.append(original_emphasis(out.hidden_states[-2], chunk.weights))
        per_encoder.append(zs)
    if len(per_encoder[0]) != len(per_encoder[1]):
        raise DreamyError(f"This SDXL model's two tokenizers cut the prompt into {len(per_encoder[0])} and "
                          f"{len(per_encoder[1])} chunks of 75 tokens; the a1111 prompt syntax needs them to agree.")
    dtype = model.text_encoder_2.dtype
    embeds = torch.cat([torch.cat([a.to(dtype), b.to(dtype)], dim=-1) for a, b in zip(*per_encoder, strict=True)],
                       dim=1)
    return SDXLText(embeds.to(device=model.device), pooled.to(dtype=dtype, device=model.device))


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


def conditioning_record(model: SDModel, width: int, height: int, negative_prompt: str, syntax: str = "plain") -> dict:
    """What the recipe's runtime records of SDXL's conditioning (derived from the settings, so recall
    re-creates it): the three size/crop fields, how the negative prompt was made and how the text
    encoders read the prompt (``syntax``: the recipe's ``prompt_syntax``)."""
    zeros = zero_negative(model, negative_prompt, syntax)
    how = "penultimate layers of both, concatenated; pooled from the second"
    if syntax == "a1111":
        how += " (A1111's 75-token chunks, weighted per encoder; pooled from the first chunk)"
    return {"original_size": [height, width], "crops_coords_top_left": [0, 0], "target_size": [height, width],
            "negative_prompt_embeds": "zeros" if zeros else "encoded", "text_encoders": how}


def added_cond(model: SDModel, parts: list[SDXLText], n: int, ids: torch.Tensor) -> dict:
    """The UNet's ``added_cond_kwargs`` for a batch of ``n`` rows per part, parts in batch order."""
    pooled = torch.cat([p.pooled.expand(n, -1) for p in parts])
    return {"text_embeds": pooled, "time_ids": ids.expand(n * len(parts), -1)}

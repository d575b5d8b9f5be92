"""What an SDXL run trains: a UNet LoRA throughout, plus pivotal tuning's new tokens in BOTH text encoders
(``clip_l`` = ``text_encoder``, ``clip_g`` = ``text_encoder_2``), or plain LoRA's optional text-encoder
LoRAs on both.

As diffusers' ``examples/advanced_diffusion_training/train_dreambooth_lora_sdxl_advanced.py`` does it:
the trigger becomes the same new tokens ``<s0><s1>...`` in both tokenizers, each encoder gets new rows
drawn from N(0, std of its vocabulary's embeddings), and only those rows learn (the base vocabulary is
put back after every update); they train for the first ``ti_fraction`` of the steps and are then
frozen (``pivot_step``), while the UNet LoRA trains on. Trained tensors are fp32 masters.

Checkpoint parts (``checkpoint_parts``): ``lora_unet``, ``lora_text_encoder`` / ``lora_text_encoder_2``
(plain LoRA with ``lora_text_encoder``), ``embeddings`` = ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``
(the file layout A1111, ComfyUI and diffusers' advanced script use).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from ..recipes.settings import TrainSettings
from .data import check_caption, derived_seed
from .modes import (
    _ADAPTER,
    TEXT_LORA_TARGETS,
    TOKEN_GROUP,
    TOKEN_PARAM,
    UNET_LORA_TARGETS,
    Trainables,
    _add_tokens,
    _inject_lora,
    _named,
    lora_state_dict,
)
from .optim import TrainSetupError

TOKEN_PARAM_2 = "text_encoder_2.token_embedding"  # clip_g's embedding matrix, of which the new rows learn
SDXL_MODES = ("lora", "pivotal")


@dataclass
class SDXLTrainables(Trainables):
    """``Trainables`` with SDXL's second text encoder and tokenizer."""

    text_encoder_2: Any = None
    tokenizer_2: Any = None
    _orig_rows_2: torch.Tensor | None = None  # pivotal: clip_g's base vocabulary, kept fixed

    @property
    def encoders(self) -> tuple[Any, Any]:
        return self.text_encoder, self.text_encoder_2

    @property
    def text_trained(self) -> bool:
        return any(p.requires_grad for e in self.encoders for p in e.parameters())

    def before_step(self, step: int) -> None:
        if self.pivot_step is not None and step >= self.pivot_step:
            for e in self.encoders:
                weight = e.get_input_embeddings().weight
                weight.requires_grad_(False)
                weight.grad = None

    def after_step(self) -> None:
        with torch.no_grad():
            for e, orig in zip(self.encoders, (self._orig_rows, self._orig_rows_2), strict=True):
                if orig is not None:
                    e.get_input_embeddings().weight[: orig.shape[0]] = orig

    def substitute(self, caption: str, trigger: str) -> str:
        """The trigger word becomes the new tokens (pivotal); captions whose trigger either tokenizer would cut
        stop the run before it starts (TrainSetupError); the two tokenizers cut at the same 77 tokens."""
        out = caption
        if self.tokens and trigger:
            out = re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", "".join(self.tokens), caption)
        word = "".join(self.tokens) if self.tokens and "".join(self.tokens) in out else (
            trigger if trigger and trigger in out else "")
        for tok in (self.tokenizer, self.tokenizer_2):
            check_caption(tok, out, word)
        return out

    def checkpoint_parts(self) -> dict[str, dict[str, torch.Tensor]]:
        parts = {"lora_unet": lora_state_dict(self.unet)}
        for name, e in (("lora_text_encoder", self.text_encoder), ("lora_text_encoder_2", self.text_encoder_2)):
            te = lora_state_dict(e)
            if te:
                parts[name] = te
        if self.tokens:
            n = len(self.tokens)
            parts["embeddings"] = {k: e.get_input_embeddings().weight[-n:].detach()
                                   for k, e in (("clip_l", self.text_encoder), ("clip_g", self.text_encoder_2))}
        return parts

    def params_from_parts(self, parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        out = {}
        for key in self.params:
            module, name = key.split(".", 1)
            if key in (TOKEN_PARAM, TOKEN_PARAM_2):
                orig, clip = (self._orig_rows, "clip_l") if key == TOKEN_PARAM else (self._orig_rows_2, "clip_g")
                out[key] = torch.cat([orig.cpu(), parts["embeddings"][clip].float()])
            else:
                out[key] = parts[f"lora_{module}"][name.replace(f".{_ADAPTER}.", ".")]
        return out


def setup_sdxl_mode(unet: Any, text_encoder: Any, text_encoder_2: Any, tokenizer: Any, tokenizer_2: Any,
                    s: TrainSettings) -> SDXLTrainables:
    """Freeze, inject and name what an SDXL recipe trains (LoRA or pivotal), with the optimizer's param groups:
    ``unet`` at ``learning_rate``; ``tokens`` (both new-row matrices) or ``text_encoder`` (both encoders'
    LoRAs) at ``text_encoder_lr``. Raises TrainSetupError for a full fine-tune (SDXL trains LoRAs here)
    or pivotal tuning without a trigger word."""
    if s.mode not in SDXL_MODES:
        raise TrainSetupError(f"SDXL trains in LoRA or pivotal mode (as the advanced Dreambooth recipe does), not "
                              f"'{s.mode}'; set mode to 'lora' or 'pivotal'.")
    for m in (unet, text_encoder, text_encoder_2):
        m.requires_grad_(False)
    _inject_lora(unet, UNET_LORA_TARGETS, s, derived_seed(s.seed, "lora-unet"))
    params = _named("unet", unet)
    groups = [{"name": "unet", "params": list(params.values()), "lr": s.learning_rate}]
    tokens: list[str] = []
    orig = orig_2 = None
    pivot = None
    if s.mode == "lora" and s.lora_text_encoder:
        _inject_lora(text_encoder, TEXT_LORA_TARGETS, s, derived_seed(s.seed, "lora-text"))
        _inject_lora(text_encoder_2, TEXT_LORA_TARGETS, s, derived_seed(s.seed, "lora-text-2"))
        te = {**_named("text_encoder", text_encoder), **_named("text_encoder_2", text_encoder_2)}
        params.update(te)
        groups.append({"name": "text_encoder", "params": list(te.values()), "lr": s.text_encoder_lr})
    elif s.mode == "pivotal":
        if not s.trigger_word.strip():
            raise TrainSetupError("Pivotal tuning needs a trigger word: the new tokens are learned in its place.")
        tokens, orig = _add_tokens(tokenizer, text_encoder, s.num_new_tokens, s.seed)
        tokens_2, orig_2 = _add_tokens(tokenizer_2, text_encoder_2, s.num_new_tokens,
                                       derived_seed(s.seed, "clip_g"))
        if tokens_2 != tokens:  # the same strings in both tokenizers: one caption serves both
            raise TrainSetupError("SDXL's two tokenizers did not take the same new tokens for the trigger word.")
        weights = []
        for key, e in ((TOKEN_PARAM, text_encoder), (TOKEN_PARAM_2, text_encoder_2)):
            weight = e.get_input_embeddings().weight
            weight.requires_grad_(True)
            params[key] = weight
            weights.append(weight)
        groups.append({"name": TOKEN_GROUP, "params": weights, "lr": s.text_encoder_lr})
        pivot = int(s.ti_fraction * s.max_train_steps)
    return SDXLTrainables(s.mode, unet, text_encoder, tokenizer, params, groups, tokens, pivot, orig,
                          text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, _orig_rows_2=orig_2)

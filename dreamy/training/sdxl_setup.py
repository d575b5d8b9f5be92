"""``train()``'s set-up for an SDXL base: what is trained, the live model, the batches (``run_setup.py`` calls these).

Precision as diffusers' SDXL LoRA scripts: on CUDA with fp16 mixed precision the frozen UNet base
is cast to fp16 (the LoRA adapters stay fp32 masters, the forward runs under autocast with a
GradScaler); the VAE stays fp32 (SDXL's overflows in fp16); the text encoders are cast too unless
they train (pivotal's new rows, plain LoRA's text-encoder LoRAs: fp32 masters), in which case they
compute under autocast. On the CPU everything is fp32.
"""

from __future__ import annotations

import torch

from ..models.sources import SDModel
from ..recipes.settings import TrainSettings
from .data import TrainingSet
from .optim import TrainSetupError
from .sdxl_loss import SDXLBatchable, sdxl_batchable
from .sdxl_modes import SDXLTrainables, setup_sdxl_mode


def check_sdxl_recipe(s: TrainSettings) -> None:
    """Refuse (TrainSetupError, before any model loads) what an SDXL run does not do."""
    if s.mode not in ("lora", "pivotal"):
        raise TrainSetupError(f"SDXL trains in LoRA or pivotal mode (as the advanced Dreambooth recipe does), not "
                              f"'{s.mode}'; set mode to 'lora' or 'pivotal'.")
    if s.prior_preservation:
        raise TrainSetupError("Prior preservation is not available for SDXL runs; turn prior_preservation off.")


def sdxl_trainables(model: SDModel, s: TrainSettings, dtype: torch.dtype, compiled: bool) -> SDXLTrainables:
    """What an SDXL recipe trains, set up on ``model``'s modules (fp32), the frozen parts cast to ``dtype``."""
    check_sdxl_recipe(s)
    if dtype != torch.float32:
        model.unet.to(dtype)  # the LoRA's frozen base; adapters are created in fp32
    tr = setup_sdxl_mode(model.unet, model.text_encoder, model.text_encoder_2, model.tokenizer, model.tokenizer_2, s)
    if dtype != torch.float32 and not tr.text_trained:
        for e in tr.encoders:
            e.to(dtype)
    if s.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        if tr.text_trained:
            for e in tr.encoders:
                e.gradient_checkpointing_enable()
    if compiled:
        model.unet.compile()
    model.unet.train()
    for e in tr.encoders:
        e.train(tr.text_trained)
    return tr


def sdxl_live(model: SDModel, tr: SDXLTrainables, device: torch.device, dtype: torch.dtype) -> SDModel:
    """The live modules as a model (what the run's own renders would see)."""
    return SDModel(model.ref, "sdxl", tr.unet, model.vae, tr.text_encoder, tr.tokenizer, device, dtype,
                   text_encoder_2=tr.text_encoder_2, tokenizer_2=tr.tokenizer_2,
                   force_zeros_for_empty_prompt=model.force_zeros_for_empty_prompt)


def sdxl_batches(s: TrainSettings, tr: SDXLTrainables, live: SDModel, data: TrainingSet,
                 notices: list[str]) -> SDXLBatchable:
    """The photos with their captions (trigger substituted) tokenized by both tokenizers; latent statistics
    cached once for a center crop."""
    from .loss import cache_latents

    captions = [tr.substitute(im.caption, s.trigger_word) for im in data.images]
    inst = sdxl_batchable(data, (tr.tokenizer, tr.tokenizer_2), captions, notices)
    if s.cache_latents and s.crop == "center":
        cache_latents(live.vae, inst)
    return inst

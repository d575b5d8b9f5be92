"""The loss of one SDXL micro-step: as ``loss.py`` for SD 1.5, with SDXL's conditioning.

SDXL's UNet is conditioned as diffusers' SDXL training scripts (and ``dreaming/sdxl.py`` at inference)
condition it:

- ``encoder_hidden_states``: the **penultimate** hidden states of both text encoders, concatenated
  (768 + 1280 = 2048 wide for SDXL), each caption tokenized by its own tokenizer (77 tokens);
- ``text_embeds``: the pooled, projected output of the second text encoder (1280);
- ``time_ids`` per image: ``original_size`` (the photo's height, width as loaded, before resizing) +
  ``crops_coords_top_left`` (where the square was cut from the resized photo: the center crop's
  offset, or each step's random crop) + ``target_size`` (resolution, resolution), as
  ``train_dreambooth_lora_sdxl_advanced.py`` records them in its data pipeline.

Random draws come from generators seeded by (seed, micro-step, purpose) exactly as for SD 1.5, so a
resumed run is bit-identical. SDXL's VAE stays fp32 (it overflows in fp16, which is why diffusers'
scripts keep it fp32 unless a fixed VAE is given); with the default center crop each photo's latent
statistics are encoded once anyway.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..models.single_file import CONFIGS
from .data import batch_indices, generator
from .loss import Batchable, MicroLoss, tokenize


@dataclass
class SDXLBatchable(Batchable):
    """``Batchable`` with the second tokenizer's ids."""

    ids_2: torch.Tensor | None = None  # [n, 77]


def sdxl_batchable(data: Any, tokenizers: Sequence[Any], captions: Sequence[str], notices: list[str]) -> SDXLBatchable:
    ids = tokenize(tokenizers[0], captions, notices)
    ids_2 = tokenize(tokenizers[1], captions, [])  # the same cuts (77 tokens each): noticed once
    return SDXLBatchable(data, ids, ids_2=ids_2)


def encode_ids(text_encoder: Any, text_encoder_2: Any, ids: torch.Tensor,
               ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeds [n, 77, h1 + h2], pooled text embeds [n, projection_dim]) for token ids of both
    tokenizers: penultimate hidden states of both encoders concatenated, pooled from the second."""
    out_1 = text_encoder(ids, output_hidden_states=True)
    out_2 = text_encoder_2(ids_2, output_hidden_states=True)
    return torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1), out_2[0]


def _scheduler():
    from diffusers import DDPMScheduler

    config = json.loads((CONFIGS / "sdxl" / "scheduler" / "scheduler_config.json").read_text())
    keep = ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type", "steps_offset",
            "clip_sample", "set_alpha_to_one", "trained_betas", "timestep_spacing")
    return DDPMScheduler.from_config({k: v for k, v in config.items() if k in keep})


class SDXLMicroLoss(MicroLoss):
    """``loss(micro)`` for an SDXL run (LoRA or pivotal; no prior preservation)."""

    def __init__(self, s, model, tr, inst: SDXLBatchable, device, dtype, group) -> None:
        super().__init__(s, model, tr, inst, None, device, dtype, group)
        self.noise_scheduler = _scheduler()
        self.alphas = self.noise_scheduler.alphas_cumprod.to(device)
        self.te_cache: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}

    def _rows(self, micro: int, g: torch.Generator):
        """This rank's rows: scaled latents, both token ids, time ids [n, 6], rows, weights, global size."""
        s, group, b = self.s, self.group, self.inst
        idx = batch_indices(s.seed, micro, len(b.data), s.train_batch_size * group.size, "order")
        rows, weight = group.shard(len(idx), s.train_batch_size)
        ids_rows = []
        if b.mean is not None:
            mean, std = group.pick(b.mean[idx], rows), group.pick(b.std[idx], rows)
            crops_at = [b.data.images[idx[j]].crop_top_left for j in rows]
        else:
            crops, crops_at = [], []
            for j in rows:  # j: the position in the global batch, which seeds the crop (as loss.py)
                px = b.data.images[idx[j]].pixels
                top = left = 0
                if px.shape[1:] != (s.resolution, s.resolution):
                    gen = generator(s.seed, "crop", "order", micro, j)
                    _, h, w = px.shape
                    top = int(torch.randint(0, h - s.resolution + 1, (1,), generator=gen))
                    left = int(torch.randint(0, w - s.resolution + 1, (1,), generator=gen))
                    px = px[:, top : top + s.resolution, left : left + s.resolution]
                else:
                    top, left = b.data.images[idx[j]].crop_top_left
                crops.append(px)
                crops_at.append((top, left))
            vae = self.model.vae
            with torch.no_grad():
                dist = vae.encode(torch.stack(crops).to(vae.device, vae.dtype)).latent_dist
            mean, std = dist.mean.float(), dist.std.float()
        for j, at in zip(rows, crops_at, strict=True):
            im = b.data.images[idx[j]]
            original = im.original_size if im.original_size != (0, 0) else (s.resolution, s.resolution)
            ids_rows.append([*original, *at, s.resolution, s.resolution])
        eps = torch.randn((len(idx), *mean.shape[1:]), generator=g, device=self.device, dtype=mean.dtype)
        sample = mean + std * group.pick(eps, rows)
        pick = [idx[j] for j in rows]
        time_ids = torch.tensor(ids_rows, dtype=torch.float32, device=self.device)
        return sample * self.scaling, b.ids[pick], b.ids_2[pick], time_ids, rows, weight, len(idx)

    def _text(self, ids: torch.Tensor, ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tr = self.tr
        if tr.text_trained:
            return encode_ids(tr.text_encoder, tr.text_encoder_2, ids.to(self.device), ids_2.to(self.device))
        embeds, pooled = [], []
        for a, b in zip(ids, ids_2, strict=True):  # frozen text encoders (after the pivot): each caption once
            key = a.numpy().tobytes() + b.numpy().tobytes()
            if key not in self.te_cache:
                with torch.no_grad():
                    self.te_cache[key] = encode_ids(tr.text_encoder, tr.text_encoder_2, a[None].to(self.device),
                                                    b[None].to(self.device))
            e, p = self.te_cache[key]
            embeds.append(e)
            pooled.append(p)
        return torch.cat(embeds), torch.cat(pooled)

    def __call__(self, micro: int) -> torch.Tensor:
        s = self.s
        g = generator(s.seed, "step", micro, device=self.device)
        pick = self.group.pick
        latents, ids, ids_2, time_ids, rows, inst_w, n_all = self._rows(micro, g)
        shape = (n_all, *latents.shape[1:])
        noise = pick(torch.randn(shape, generator=g, device=self.device), rows)
        if s.noise_offset:
            offset = torch.randn((*shape[:2], 1, 1), generator=g, device=self.device)
            noise = noise + s.noise_offset * pick(offset, rows)
        t = pick(torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (n_all,),
                               generator=g, device=self.device), rows)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        with self._autocast():
            emb, pooled = self._text(ids, ids_2)
            added = {"text_embeds": pooled, "time_ids": time_ids}
            pred = self.tr.unet(noisy, t, encoder_hidden_states=emb, added_cond_kwargs=added, return_dict=False)[0]
        pred = pred.float()
        target = noise
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        if s.snr_gamma > 0:  # min-SNR weighting
            snr = self.alphas[t] / (1 - self.alphas[t])
            per_sample = per_sample * torch.clamp(snr, max=s.snr_gamma) / (snr + 1 if target is not noise else snr)
        if inst_w is None:
            return per_sample.mean()
        return (per_sample * inst_w).sum() / n_all

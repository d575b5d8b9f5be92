"""The loss of one micro-step: batch, crops, VAE sample, noise, timesteps, prediction, (min-SNR) MSE.

Every random number is drawn from a generator seeded by (seed, micro-step), never from the global
RNG, so micro-step ``k`` computes the same loss in a straight run and in a resumed one. Under
``accelerate launch`` each process computes its own rows of the global batch (``parallel.py``);
the draws are made for the whole global batch and then picked, so no row depends on the split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..models.single_file import CONFIGS
from ..models.sources import SDModel
from ..recipes.settings import TrainSettings
from .data import TrainingSet, batch_indices, generator, random_crop
from .modes import Trainables
from .parallel import Group


@dataclass
class Batchable:
    """One image set ready for the loop: token ids, and (center crop) the cached latent mean/std."""

    data: TrainingSet
    ids: torch.Tensor  # [n, 77]
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None


def tokenize(tokenizer: Any, captions: Sequence[str], notices: list[str]) -> torch.Tensor:
    """Token ids [n, 77]; each caption the encoder cuts (the class prompt, a long caption) adds one
    notice to ``notices`` (shown as a Notice event when the run starts, and logged)."""
    from ..models.tokens import check_prompts

    notices += check_prompts(tokenizer, {f"training caption \"{c[:40]}...\"": c for c in dict.fromkeys(captions)})[1]
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def _latent_stats(vae: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def cache_latents(vae: Any, b: Batchable) -> None:
    """Each image's latent mean/std, encoded one at a time as the loop would (a batch may round differently).

    A sample is still drawn fresh every step, so this changes no number the loop computes.
    """
    stats = [_latent_stats(vae, im.pixels[None]) for im in b.data.images]
    b.mean, b.std = torch.cat([m for m, _ in stats]), torch.cat([v for _, v in stats])


def _noise_scheduler():
    from diffusers import DDPMScheduler

    config = json.loads((CONFIGS / "sd15" / "scheduler" / "scheduler_config.json").read_text())
    return DDPMScheduler.from_config(config)


class MicroLoss:
    """``loss(micro)``: the training loss of micro-step ``micro`` (the loop's state between steps)."""

    def __init__(self, s: TrainSettings, model: SDModel, tr: Trainables, inst: Batchable,
                 prior: Batchable | None, device: torch.device, dtype: torch.dtype, group: Group) -> None:
        self.s, self.model, self.tr, self.inst, self.prior = s, model, tr, inst, prior
        self.device, self.dtype, self.group = device, dtype, group
        self.noise_scheduler = _noise_scheduler()
        self.alphas = self.noise_scheduler.alphas_cumprod.to(device)
        self.scaling = model.vae.config.scaling_factor
        self.te_cache: dict[bytes, torch.Tensor] = {}

    def _autocast(self):
        return torch.autocast("cuda", dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()

    def _half(self, b: Batchable, micro: int, salt: str, g: torch.Generator):
        """This rank's rows of the micro-step's global batch: scaled latents, token ids, rows, weights, size.

        Random numbers are drawn for the whole global batch and then picked, so a row's draws do not
        depend on how many processes share the batch.
        """
        s, group = self.s, self.group
        idx = batch_indices(s.seed, micro, len(b.data), s.train_batch_size * group.size, salt)
        rows, weight = group.shard(len(idx), s.train_batch_size)
        if b.mean is not None:
            mean, std = group.pick(b.mean[idx], rows), group.pick(b.std[idx], rows)
        else:
            crops = []
            for j in rows:  # j: the position in the global batch, which seeds the crop
                px = b.data.images[idx[j]].pixels
                if px.shape[1:] != (s.resolution, s.resolution):
                    px = random_crop(px, s.resolution, generator(s.seed, "crop", salt, micro, j))
                crops.append(px)
            mean, std = _latent_stats(self.model.vae, torch.stack(crops))
        eps = torch.randn((len(idx), *mean.shape[1:]), generator=g, device=self.device, dtype=mean.dtype)
        sample = mean + std * group.pick(eps, rows)
        ids = b.ids[[idx[j] for j in rows]]  # ids stay on the CPU until _text
        return sample * self.scaling, ids, rows, weight, len(idx)

    def _text(self, ids: torch.Tensor) -> torch.Tensor:
        te = self.tr.text_encoder
        if self.tr.text_trained:
            return te(ids.to(self.device))[0]
        out = []
        for row in ids:  # a frozen text encoder: each caption is encoded once
            key = row.numpy().tobytes()
            if key not in self.te_cache:
                with torch.no_grad():
                    self.te_cache[key] = te(row[None].to(self.device))[0]
            out.append(self.te_cache[key])
        return torch.cat(out)

    def __call__(self, micro: int) -> torch.Tensor:
        s = self.s
        g = generator(s.seed, "step", micro, device=self.device)
        pick = self.group.pick
        latents, ids, rows, inst_w, n_all_inst = self._half(self.inst, micro, "order", g)
        n_inst, n_all = latents.shape[0], n_all_inst
        if self.prior is not None:
            c_lat, c_ids, c_rows, prior_w, n_all_prior = self._half(self.prior, micro, "class", g)
            latents, ids = torch.cat([latents, c_lat]), torch.cat([ids, c_ids])
            rows = rows + [n_all_inst + j for j in c_rows]
            n_all += n_all_prior
        shape = (n_all, *latents.shape[1:])  # the global batch's (one process: latents.shape)
        noise = pick(torch.randn(shape, generator=g, device=self.device), rows)
        if s.noise_offset:
            offset = torch.randn((*shape[:2], 1, 1), generator=g, device=self.device)
            noise = noise + s.noise_offset * pick(offset, rows)
        t = pick(torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (n_all,),
                               generator=g, device=self.device), rows)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        with self._autocast():
            emb = self._text(ids)
            pred = self.tr.unet(noisy, t, encoder_hidden_states=emb, return_dict=False)[0]
        pred = pred.float()
        target = noise
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        inst_loss = per_sample[:n_inst]
        if s.snr_gamma > 0:  # min-SNR weighting, computed on the instance half only
            snr = self.alphas[t[:n_inst]] / (1 - self.alphas[t[:n_inst]])
            weight = torch.clamp(snr, max=s.snr_gamma) / (snr + 1 if target is not noise else snr)
            inst_loss = inst_loss * weight
        if inst_w is None:  # one process
            loss = inst_loss.mean()
            if self.prior is not None:
                loss = loss + s.prior_loss_weight * per_sample[n_inst:].mean()
            return loss
        # this rank's share of the global batch's mean: summed over ranks (as the gradients are), it is that mean
        loss = (inst_loss * inst_w).sum() / n_all_inst
        if self.prior is not None:
            loss = loss + s.prior_loss_weight * (per_sample[n_inst:] * prior_w).sum() / n_all_prior
        return loss

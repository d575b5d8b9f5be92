"""``train()``: the Dreambooth loop as a generator of events, with cooperative stop and exact resume.

Precision follows diffusers' dreambooth example without its pitfalls: the trained tensors are fp32
masters; on CUDA the forward runs under fp16 autocast with a GradScaler (the frozen VAE, and a
LoRA's frozen base, are cast to fp16); on the CPU everything is fp32. Each optimizer step:
pivot/lr for the step -> ``accum`` micro-steps of forward/backward -> unscale, clip, step, update.
Every random draw is seeded by (seed, micro-step), see ``data.py``, so a resumed run is bit-identical.
Under ``accelerate launch`` with N processes the run is data-parallel (``parallel.py``): a global
batch of ``train_batch_size`` x N, gradients summed across ranks, files written by the main process.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..events import CancelToken
from ..models.checkpoints import checkpoint_sha256
from ..models.devices import pick_device
from ..models.single_file import CONFIGS
from ..models.sources import SDModel, load_model
from ..recipes.presets import Preset, load_preset
from ..recipes.recipe import ModelRef, resolve
from ..recipes.seeds import parse_seeds
from ..recipes.settings import TrainSettings
from . import checkpoints as ckpt
from .data import TrainingSet, batch_indices, generator, prepare_images, random_crop
from .events import CheckpointSaved, Finished, Notice, Started, StepDone, TrainEvent, ValidationDone
from .logbook import LOG_NAME, PLOT_NAME, LossLog, plot
from .modes import Trainables, setup_mode
from .optim import apply_lr, make_optimizer
from .parallel import Group, join
from .prior import class_folder, generate_class_images, load_class_images, missing_class_images
from .runs import TrainError, base_record, check_resumable, run_dir_for, write_run_record
from .validation import GRID_NAME, render, write_grid


@dataclass
class _Batchable:
    """One image set ready for the loop: token ids, and (center crop) the cached latent mean/std."""

    data: TrainingSet
    ids: torch.Tensor  # [n, 77]
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None


def _compute_dtype(s: TrainSettings, device: torch.device) -> torch.dtype:
    if device.type != "cuda" or s.mixed_precision == "no":
        return torch.float32
    return torch.float16 if s.mixed_precision == "fp16" else torch.bfloat16


def _noise_scheduler():
    from diffusers import DDPMScheduler

    config = json.loads((CONFIGS / "sd15" / "scheduler" / "scheduler_config.json").read_text())
    return DDPMScheduler.from_config(config)


def _tokenize(tokenizer: Any, captions: Sequence[str]) -> torch.Tensor:
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def _latent_stats(vae: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


def _cache_latents(vae: Any, b: _Batchable) -> None:
    """Each image's latent mean/std, encoded one at a time as the loop would (a batch may round differently).

    A sample is still drawn fresh every step, so this changes no number the loop computes.
    """
    stats = [_latent_stats(vae, im.pixels[None]) for im in b.data.images]
    b.mean, b.std = torch.cat([m for m, _ in stats]), torch.cat([v for _, v in stats])


def _restore(path: Path, tr: Trainables, optimizer: torch.optim.Optimizer, scaler: Any) -> int:
    """Load a checkpoint's resume state into the live run; returns its step."""
    masters, state = ckpt.read_resume(path)
    with torch.no_grad():
        for key, p in tr.params.items():
            p.copy_(masters[key].to(p.device))
    optimizer.load_state_dict(state["optimizer"])
    if state["scaler"] is not None and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    ckpt.restore_rng_states(state["rng"])
    return int(state["step"])


class _Loop:
    """The state of one training run between steps (kept out of ``train`` to keep that readable)."""

    def __init__(self, s: TrainSettings, model: SDModel, tr: Trainables, inst: _Batchable,
                 prior: _Batchable | None, device: torch.device, dtype: torch.dtype, group: Group) -> None:
        self.s, self.model, self.tr, self.inst, self.prior = s, model, tr, inst, prior
        self.device, self.dtype, self.group = device, dtype, group
        self.noise_scheduler = _noise_scheduler()
        self.alphas = self.noise_scheduler.alphas_cumprod.to(device)
        self.scaling = model.vae.config.scaling_factor
        self.te_cache: dict[bytes, torch.Tensor] = {}

    def _autocast(self):
        return torch.autocast("cuda", dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()

    def _half(self, b: _Batchable, micro: int, salt: str, g: torch.Generator):
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

    def micro_loss(self, micro: int) -> torch.Tensor:
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


def train(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    name: str,
    preset: str | Preset = "sweet-spot",
    base: str = "tiny",
    overrides: dict[str, Any] | None = None,
    unlock: bool | Iterable[str] = (),
    models_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | None = None,
    validation: dict[str, Any] | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[TrainEvent]:
    """Fine-tune ``base`` on ``images`` with ``preset``'s [train] recipe; yields events as it goes.

    Writes ``models/<name>/`` (run.json, checkpoints/step-XXXX/, validation/ with grid.png,
    logs/loss.jsonl and loss.png). ``validation`` overrides the preset's locked [dream] settings
    for the validation renders only (e.g. a smaller size on a CPU); the change is recorded in each
    PNG's recipe. ``cancel`` stops after the current step: a checkpoint is saved and the generator
    ends with ``Finished(stopped=True)``. ``resume=True`` continues from the newest checkpoint.

    Under ``accelerate launch`` with N > 1 processes each one calls ``train`` alike and trains on its
    own GPU (``device="cpu"``: N CPU processes); the main process alone writes files and yields
    ``Notice`` and ``ValidationDone``; the others yield the same steps and checkpoints.
    """
    preset = load_preset(preset) if isinstance(preset, str) else preset
    recipe = resolve(preset, "train", overrides, unlock)
    s: TrainSettings = recipe.settings
    dream_recipe = resolve(preset, "dream", validation, unlock=list(validation or {}))
    seeds = parse_seeds(s.validation_seeds) if s.validation_seeds.strip() else []
    run_dir = run_dir_for(name, models_dir)
    if resume:
        ckpt.remove_leftovers(run_dir)  # temporary folders of writes a crash cut short
    existing = ckpt.list_checkpoints(run_dir)
    resume_from = ckpt.latest_resumable(run_dir) if resume else None
    if existing and not resume:
        raise TrainError(f"Run '{name}' already exists with {len(existing)} checkpoint(s) (last: step "
                         f"{existing[-1][0]}); resume it or choose another name.")
    if resume and resume_from is None:
        raise TrainError(f"Run '{name}' has no checkpoint with a resume state to continue from.")
    uses_prior = s.mode == "prior" or s.prior_preservation
    if uses_prior and not s.class_prompt.strip():
        raise TrainError("Prior preservation needs a class prompt (e.g. 'a photo of a person').")

    group = join(device)  # one process without a launcher: no collective at all
    dev = group.device if group.device is not None else pick_device(device)
    dtype = _compute_dtype(s, dev)
    data = prepare_images(images, resolution=s.resolution, prompt=s.instance_prompt, trigger=s.trigger_word,
                          captions=s.captions, crop=s.crop)
    model = load_model(base, device=dev, precision="fp32")  # fp32: the trained tensors are the masters
    base_ref = model.ref
    if resume_from is not None:
        check_resumable(run_dir, recipe, base_ref, group.size)
    recipe = recipe.replace(model=base_ref)
    if dtype != torch.float32:
        model.vae.to(dtype)  # frozen: compute precision is enough
        if s.mode in ("lora", "pivotal"):
            model.unet.to(dtype)  # a LoRA's frozen base; the adapters are created in fp32
    tr = setup_mode(model.unet, model.text_encoder, model.tokenizer, s)
    if dtype != torch.float32 and not tr.text_trained and s.mode == "lora":
        model.text_encoder.to(dtype)
    if s.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        if tr.text_trained:
            model.text_encoder.gradient_checkpointing_enable()
    if s.fused_params:
        tr.fuse()
    if s.compile_unet:
        model.unet.compile()  # in place: the module, its state_dict names and validation stay the same
    model.unet.train()
    model.text_encoder.train(tr.text_trained)
    optimizer, opt_note = make_optimizer(tr.groups, s)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda" and dtype == torch.float16)
    # the model a validation render sees: live modules, compute dtype
    live = SDModel(base_ref, "sd15", tr.unet, model.vae, tr.text_encoder, tr.tokenizer, dev, dtype)

    captions = [tr.substitute(im.caption, s.trigger_word) for im in data.images]
    inst = _Batchable(data, _tokenize(tr.tokenizer, captions))
    notices = [opt_note] if opt_note else []
    if group.size > 1:
        notices.append(f"Data-parallel over {group.size} processes: a global batch of {s.train_batch_size} x "
                       f"{group.size} = {s.train_batch_size * group.size} images per micro-step.")
    prior = None
    if uses_prior:
        folder = class_folder(s, run_dir)
        group.barrier()  # every rank sees the same missing images before any is made
        todo = missing_class_images(s, folder)
        if todo:
            notices.append(f"Generating {len(todo)} class image(s) of '{s.class_prompt}' into {folder}.")
            for _ in generate_class_images(live, preset, s, folder, todo[group.rank :: group.size]):
                if cancel is not None:
                    cancel.check()  # the images made so far stay and are reused next time
        group.barrier()
        class_data = load_class_images(s, folder)
        prior = _Batchable(class_data, _tokenize(tr.tokenizer, [s.class_prompt] * len(class_data)))
    if s.cache_latents and s.crop == "center":
        for b in (inst, prior):
            if b is not None:
                _cache_latents(model.vae, b)

    start = 0
    log = LossLog(run_dir / "logs" / LOG_NAME)
    meta = {"run": name, "mode": s.mode, "base": base_record(base_ref), "trigger_word": s.trigger_word,
            "lora_rank": s.lora_rank, "lora_alpha": s.lora_alpha, "recipe": recipe.to_dict()}
    if group.size > 1:
        meta["processes"] = group.size
    if resume_from is not None:
        start = _restore(resume_from, tr, optimizer, scaler)
        if group.is_main:
            log.truncate(start)
            for f in (run_dir / "validation").glob("step*-seed*.png"):
                m = re.match(r"step(\d+)-", f.name)
                if m and int(m.group(1)) > start:
                    f.unlink()  # rendered after the checkpoint by a run that did not get to save
    elif group.is_main:
        if run_dir.exists():  # a run that never reached a checkpoint: start it over
            for sub in ("validation", "logs"):
                shutil.rmtree(run_dir / sub, ignore_errors=True)
        record = {"format": 1, "name": name, "base": base_record(base_ref), "recipe": recipe.to_dict(),
                  "images": data.report}
        if group.size > 1:
            record["processes"] = group.size
        write_run_record(run_dir, record)
    group.barrier()  # the run folder is set up before anyone trains
    total = s.max_train_steps
    if start >= total:
        raise TrainError(f"Run '{name}' is already at step {start} of {total}; raise max_train_steps to continue.")
    yield Started(start, total, run_dir.resolve(), start if resume_from is not None else None, tuple(data.report))
    for note in notices if group.is_main else ():
        yield Notice(start, total, note)

    loop = _Loop(s, model, tr, inst, prior, dev, dtype, group)
    files = {"log": log.path, "plot": run_dir / "logs" / PLOT_NAME, "grid": run_dir / "validation" / GRID_NAME}

    def validate(step: int, ref: ModelRef) -> ValidationDone | None:
        if not seeds or not group.is_main:
            return None
        live.ref = ref
        paths = render(live, dream_recipe, seeds, run_dir / "validation", step)
        grid = write_grid(run_dir / "validation", seeds, recipe)
        return ValidationDone(step, total, tuple(paths), grid)

    def save(step: int) -> Path:
        """The main process writes the checkpoint; everyone returns once it is complete."""
        path = ckpt.step_dir(run_dir, step)
        if group.is_main:
            path = ckpt.save_checkpoint(run_dir, step, tr, meta, optimizer, scaler)
            ckpt.prune(run_dir, s.checkpoints_total_limit, s.keep_resume_state)
        group.barrier()
        return path

    if start == 0:
        done = validate(0, base_ref)
        group.barrier()  # the others wait while the main process renders
        if done is not None:
            yield done
    step_times: list[float] = []
    extra_times: list[float] = []
    last_saved = start
    step = start
    stopped = False
    while step < total:
        if group.any(cancel is not None and cancel.cancelled):
            stopped = True
            break
        t0 = time.perf_counter()
        tr.before_step(step)
        lr = apply_lr(optimizer, s, step, tr.frozen_groups(step))
        accum = s.gradient_accumulation_steps
        losses = []
        for a in range(accum):
            loss = loop.micro_loss(step * accum + a)
            scaler.scale(loss / accum).backward()
            losses.append(loss.detach())
        params = tr.optimizer_params()
        group.sum_grads(params)  # N processes: the global batch's gradient, identical on every rank
        if scaler.is_enabled():
            scaler.unscale_(optimizer)
        if s.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(optimizer)
        scaler.update()
        skipped = scale_before is not None and scaler.get_scale() < scale_before
        tr.zero_grad(optimizer)
        tr.after_step()
        step += 1
        loss_value = float(group.sum(torch.stack(losses).mean()))
        if not math.isfinite(loss_value):
            raise TrainError(f"The loss became {loss_value} at step {step}; the run diverged: lower the learning "
                             "rate or resume from an earlier checkpoint.")
        row = {"step": step, "loss": loss_value, "lr": lr}
        if skipped:
            row["skipped"] = True  # fp16 overflow: the scaler skipped this update and lowered its scale
        if group.is_main:
            log.append(**row)
        step_times.append(time.perf_counter() - t0)
        stop_now = group.any(cancel is not None and cancel.cancelled)
        due = step % s.checkpointing_steps == 0 or step == total or stop_now
        mean_step = sum(step_times) / len(step_times)
        per_ckpt = (sum(extra_times) / len(extra_times)) if extra_times else 0.0
        left_ckpts = len(range(step + s.checkpointing_steps - step % s.checkpointing_steps, total + 1,
                               s.checkpointing_steps))
        eta = (total - step) * mean_step + left_ckpts * per_ckpt
        yield StepDone(step, total, loss_value, lr, sum(step_times), eta)
        if due:
            t1 = time.perf_counter()
            if group.is_main:
                plot(log.rows(), files["plot"])
            path = save(step)
            last_saved = step
            yield CheckpointSaved(step, total, path)
            if stop_now:
                stopped = True
                break
            done = None
            if group.is_main:
                ref = ModelRef(source=str(path.resolve()), kind="checkpoint",
                               sha256=checkpoint_sha256(path, base_ref.sha256),
                               label=f"{name} step {step}", checkpoint_step=step)
                done = validate(step, ref)
            group.barrier()
            extra_times.append(time.perf_counter() - t1)
            if done is not None:
                yield done
    if stopped and last_saved != step:  # stop requested before the loop body ran
        yield CheckpointSaved(step, total, save(step))
    if group.is_main:
        plot(log.rows(), files["plot"])
    group.barrier()  # every file is in place before any process reports the end
    last = ckpt.list_checkpoints(run_dir)
    yield Finished(step, total, run_dir.resolve(), last[-1][1] if last else None, stopped,
                   {k: v for k, v in files.items() if v.exists()})

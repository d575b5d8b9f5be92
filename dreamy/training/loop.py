"""``train()``: the Dreambooth loop as a generator of events, with cooperative stop and exact resume.

Precision follows diffusers' dreambooth example without its pitfalls: the trained tensors are fp32
masters; on CUDA the forward runs under fp16 autocast with a GradScaler (the frozen VAE, and a
LoRA's frozen base, are cast to fp16); on the CPU everything is fp32. Each optimizer step:
pivot/lr for the step -> ``accum`` micro-steps of forward/backward -> unscale, clip, step, update.
Every random draw is seeded by (seed, micro-step), see ``data.py``, so a resumed run is bit-identical.
Under ``accelerate launch`` with N processes the run is data-parallel (``parallel.py``): a global
batch of ``train_batch_size`` x N, gradients summed across ranks, files written by the main process.

``train`` holds the control flow and the ``yield``s (``_catch_up`` those of a resume's first renders); its
phases are plain functions over one ``_Run``: ``_set_up`` (checks, base model, trainables, optimizer, batches,
run folder or resume), ``_catch_up`` (a resume: what a killed run left out, ``catch_up.py``), ``_optimizer_step``,
``_save`` + ``_validate`` at each checkpoint, ``_finish``. The loss of one micro-step is ``loss.py``'s.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import Cancelled
from ..events import CancelToken
from ..layout import step_of
from ..models.checkpoints import checkpoint_sha256
from ..models.devices import pick_device
from ..models.sources import SDModel, load_model
from ..recipes.presets import Preset, load_preset
from ..recipes.recipe import ModelRef, Recipe, resolve
from ..recipes.seeds import parse_seeds
from ..recipes.settings import TrainSettings
from . import checkpoints as ckpt
from . import corridor_run
from .catch_up import LeftOut, left_out, load_params
from .data import TrainingSet, prepare_images
from .events import CheckpointSaved, Finished, Notice, Started, StepDone, TrainEvent, ValidationDone
from .logbook import LOG_NAME, PLOT_NAME, LossLog, plot
from .loss import Batchable, MicroLoss, cache_latents, tokenize
from .modes import Trainables, setup_mode
from .optim import apply_lr, make_optimizer
from .parallel import Group, join
from .prior import class_folder, generate_class_images, load_class_images, missing_class_images
from .runs import (
    TrainError,
    base_record,
    check_photos,
    check_resumable,
    photo_record,
    record_photo_change,
    resume_point,
    run_dir_for,
    write_run_record,
)
from .validation import GRID_NAME, render, validation_images, write_grid


@dataclass
class _Run:
    """One run's state, shared by the phases of ``train``; set up once, then stepped."""

    name: str
    s: TrainSettings
    recipe: Recipe  # the [train] recipe, its model the loaded base
    dream_recipe: Recipe  # what the validation renders use
    seeds: list[int]  # validation seeds; [] renders nothing
    run_dir: Path
    group: Group  # the processes training together (one without a launcher)
    tr: Trainables
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # disabled unless the compute dtype is fp16
    live: SDModel  # what a validation render sees: the live modules, in the compute dtype
    micro_loss: MicroLoss
    log: LossLog
    start: int = 0  # the step this call starts at: 0, or the resumed checkpoint's
    resume_from: Path | None = None  # the checkpoint whose resume state ``_catch_up`` restores
    left: LeftOut = field(default_factory=LeftOut)  # what a killed run left out up to ``start``
    cancel: CancelToken | None = None  # Stop: ends the step or validation render in progress
    corridor_note: str | None = None  # the corridor meter's failure at the last checkpoint, said once

    @property
    def total(self) -> int:
        return self.s.max_train_steps

    @property
    def base(self) -> ModelRef:
        return self.recipe.model

    @property
    def meta(self) -> dict[str, Any]:
        """What every checkpoint's dreamy-checkpoint.json says about the run (it adds step, parts, tokens)."""
        s = self.s
        meta = {"run": self.name, "mode": s.mode, "base": base_record(self.base), "trigger_word": s.trigger_word,
                "lora_rank": s.lora_rank, "lora_alpha": s.lora_alpha, "recipe": self.recipe.to_dict()}
        if self.group.size > 1:
            meta["processes"] = self.group.size
        return meta


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
    allow_changed_photos: bool = False,
) -> Iterator[TrainEvent]:
    """Fine-tune ``base`` on ``images`` with ``preset``'s [train] recipe, as a generator of events.

    Nothing happens until the first ``next()``. The checks that need no model (preset, settings,
    seeds, run name, resume) come first, so a mistake fails before any model is loaded. The run
    trains as the caller consumes the events.

    Args:
        images: the instance photos: a folder, an image file, or a list of them. Unusable files
            are skipped and listed in ``Started.images``.
        name: the run's folder under ``models_dir`` (letters, digits, ``.``, ``_``, ``-``; up to 100).
        preset: a preset name or .toml path, or a loaded ``Preset``. Its [train] section is the
            recipe; its [dream] section is what the validation renders use.
        base: the model to fine-tune: ``"tiny"`` (the offline demo), a hub id, a diffusers folder
            or a single .safetensors/.ckpt file.
        overrides: [train] settings to change, e.g. ``{"max_train_steps": 800}``.
        unlock: ``True``, or the names of the preset's locked settings that ``overrides`` may change.
        models_dir: where runs live; default ``$DREAMY_MODELS``, else the project's ``models/``.
        resume: continue run ``name`` from its newest checkpoint with a resume state; only
            max_train_steps, checkpointing_steps, checkpoints_total_limit, keep_resume_state and
            validation_seeds may differ from the run's. The result is bit-identical to an
            uninterrupted run. First it completes what a killed run left out: the validation
            images of step 0 and of every kept checkpoint (each rendered with that step's
            weights), the grid, the loss plot. A run already at ``max_train_steps`` only completes
            those and finishes; with nothing left out it is refused (raise max_train_steps).
        device: ``"cuda"``, ``"cpu"``, ... or None for the best one here.
        validation: [dream] overrides for the validation renders only (e.g. a smaller size on a
            CPU); they need no unlock and are recorded in each PNG's recipe.
        cancel: once set, the current step finishes (a validation render in progress ends at its
            next denoising step, its row left for the resume to finish), a checkpoint of the steps
            done is saved (none when no step was trained: ``Finished.checkpoint`` is then None) and
            the generator ends with ``Finished(stopped=True)``; continue later with ``resume=True``.
        allow_changed_photos: resume although the photos differ from those run.json recorded (added,
            removed or changed); run.json records the change and the step it happened at.

    Yields (``step`` is always the optimizer steps done, ``total`` is ``max_train_steps``):
        ``Started`` (run folder, the step resumed from or None, one line per image), then on the
        main process ``Notice``s (optimizer fallback, data-parallel batch, class images being made,
        what a resume completes first); for a new run, ``ValidationDone`` for the base model at step 0
        (a resume: one per row it renders of those left out); per step ``StepDone`` (loss,
        lr, elapsed and ETA in seconds); every ``checkpointing_steps`` steps, at the last step and
        on a stop ``CheckpointSaved``, then (not on a stop) ``ValidationDone``; last ``Finished``
        (the last checkpoint, whether stopped, the log/plot/grid files that exist).

    Units: a step is one optimizer update of ``gradient_accumulation_steps`` micro-steps of
    ``train_batch_size`` images (per process). ``max_train_steps``, ``checkpointing_steps`` and
    ``lr_warmup_steps`` count steps. ``learning_rate`` is the peak lr of ``lr_scheduler`` (Prodigy:
    a multiplier of its own estimate). ``StepDone.lr`` is the first parameter group's (UNet's) lr
    for that step, ``StepDone.loss`` the mean MSE of its micro-steps (over all processes).

    Writes ``<models_dir>/<name>/``:
        ``run.json``: the name, the base (source + sha256), the whole recipe, the image report, the
        photos (name, sha256, caption) and any ``photo_changes`` allowed on a resume (with their step).
        ``checkpoints/step-XXXX/``: the trained parts (fp16) and ``resume/`` (fp32 masters,
        optimizer, scaler, RNG states); beyond ``checkpoints_total_limit`` the oldest are removed,
        and older resume states too unless ``keep_resume_state="all"``.
        ``validation/stepNNNNNN-seedNNNNNN.png`` (each with its recipe) and ``validation/grid.png``.
        ``logs/loss.jsonl`` (per step: step, loss, lr; ``skipped`` on an fp16 overflow), ``logs/loss.png``.
        ``class-images/``: prior preservation's generated class images (unless ``class_images_dir``).
    A new run clears the validation/ and logs/ of an earlier attempt that saved no checkpoint;
    a resumed one drops the log rows and renders after its checkpoint.

    Raises (``DreamyError`` subclasses, each one sentence for the user):
        PresetError: unknown or unreadable preset, a setting that is unknown, of the wrong type or
            out of range; its subclass LockedFieldError: ``overrides`` changes a locked setting
            that ``unlock`` does not name.
        SeedSyntaxError: ``validation_seeds`` cannot be parsed.
        TrainError: a bad run name; the run has checkpoints and ``resume`` is False; nothing to
            resume (or no checkpoint with an intact resume state: a damaged newer one is named in a
            ``Notice``, moved aside as ``damaged-step-XXXX`` and the newest intact one resumed); a
            resume with another base, process count, a setting that may not change, or other photos
            (unless ``allow_changed_photos``); prior preservation without a class prompt; already at
            ``max_train_steps`` with nothing left out; the loss, the gradients or the weights became NaN or infinite
            (diverged: no checkpoint of that step is written).
        TrainSetupError (TrainError's base): a missing package (peft, prodigyopt) or a mode that
            cannot be set up (e.g. pivotal tuning without a trigger word).
        TrainDataError: no usable training (or class) image.
        SourceError: ``base`` cannot be found or loaded.
        OutputError: run.json, a checkpoint or a validation image cannot be written (disk full,
            read-only); the checkpoints already written are kept.
        Cancelled: ``cancel`` was set while class images were being generated (those made are kept).
    Running out of memory is raised as torch raises it; ``dreamy.errors.user_error`` words it.

    Under ``accelerate launch`` with N > 1 processes each one calls ``train`` alike and trains on its
    own GPU (``device="cpu"``: N CPU processes); the main process alone writes files and yields
    ``Notice`` and ``ValidationDone``; the others yield the same steps and checkpoints.
    """
    run, opening = _set_up(images, name, preset, base, overrides, unlock, models_dir, resume, device,
                           validation, cancel, allow_changed_photos)
    yield from opening  # Started, then the main process's notices
    s, group, total = run.s, run.group, run.total
    if run.start == 0:  # the base model's renders: the grid's first row
        done = _validate(run, 0, None)
        if done is not None:
            yield done
        yield from _corridor_notice(run, 0)
    else:
        yield from _catch_up(run)
    step_times: list[float] = []  # seconds per step, and per checkpoint + validation: the ETA
    ckpt_times: list[float] = []
    step = last_saved = run.start
    stopped = False
    while step < total:
        if _stop_requested(group, cancel):
            stopped = True
            break
        t0 = time.perf_counter()
        loss, lr = _optimizer_step(run, step)
        step += 1
        step_times.append(time.perf_counter() - t0)
        stop_now = _stop_requested(group, cancel)  # asked during this step: save it now
        yield StepDone(step, total, loss, lr, sum(step_times), _eta(s, step, step_times, ckpt_times))
        if not (step % s.checkpointing_steps == 0 or step == total or stop_now):
            continue
        t1 = time.perf_counter()
        _plot(run)
        path = _save(run, step)
        last_saved = step
        yield CheckpointSaved(step, total, path)
        if stop_now:
            stopped = True
            break
        done = _validate(run, step, path)
        ckpt_times.append(time.perf_counter() - t1)
        if done is not None:
            yield done
        yield from _corridor_notice(run, step)
    if stopped and last_saved != step:  # asked between steps (or before the first): save where it is
        yield CheckpointSaved(step, total, _save(run, step))
    yield _finish(run, step, stopped)


# ------------------------------------------------------------------------------------------ set-up


def _set_up(images: str | os.PathLike | Sequence[str | os.PathLike], name: str, preset: str | Preset, base: str, overrides: dict[str, Any] | None,
            unlock: bool | Iterable[str], models_dir: str | os.PathLike | None, resume: bool,
            device: str | None, validation: dict[str, Any] | None,
            cancel: CancelToken | None, allow_changed_photos: bool = False) -> tuple[_Run, list[TrainEvent]]:
    """Everything before the first event; returns the run and its opening events (Started, Notices)."""
    preset = load_preset(preset) if isinstance(preset, str) else preset
    recipe = resolve(preset, "train", overrides, unlock)
    s: TrainSettings = recipe.settings
    dream_recipe = resolve(preset, "dream", validation, unlock=list(validation or {}))
    seeds = parse_seeds(s.validation_seeds) if s.validation_seeds.strip() else []
    run_dir = run_dir_for(name, models_dir)
    resume_from, skipped = resume_point(name, run_dir, resume)
    if _uses_prior(s) and not s.class_prompt.strip():
        raise TrainError("Prior preservation needs a class prompt (e.g. 'a photo of a person').")

    group = join(device)  # one process without a launcher: no collective at all
    dev = group.device if group.device is not None else pick_device(device)
    dtype = _compute_dtype(s, dev)
    data = prepare_images(images, resolution=s.resolution, prompt=s.instance_prompt, trigger=s.trigger_word,
                          captions=s.captions, crop=s.crop)
    photos = photo_record(data.images, s.captions == "files")
    changed = check_photos(run_dir, photos, allow_changed_photos) if resume_from is not None else None
    model = load_model(base, device=dev, precision="fp32")  # fp32: the trained tensors are the masters
    if resume_from is not None:
        check_resumable(run_dir, recipe, model.ref, group.size)
    tr = _trainables(model, s, dtype)
    optimizer, opt_note = make_optimizer(tr.groups, s)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda" and dtype == torch.float16)
    live = SDModel(model.ref, "sd15", tr.unet, model.vae, tr.text_encoder, tr.tokenizer, dev, dtype)
    notices = [*skipped, *([opt_note] if opt_note else [])]
    if group.size > 1:
        notices.append(f"Data-parallel over {group.size} processes: a global batch of {s.train_batch_size} x "
                       f"{group.size} = {s.train_batch_size * group.size} images per micro-step.")
    inst, prior = _batches(s, tr, live, data, preset, run_dir, group, notices, cancel)

    run = _Run(name, s, recipe.replace(model=model.ref), dream_recipe, seeds, run_dir, group, tr, optimizer,
               scaler, live, MicroLoss(s, model, tr, inst, prior, dev, dtype, group),
               LossLog(run_dir / "logs" / LOG_NAME))
    run.start = _start_at(run, resume_from, data.report, photos)
    run.cancel = cancel
    run.resume_from = resume_from
    if changed is not None and group.is_main:
        record_photo_change(run_dir, run.start, changed, photos)
        if any(changed.values()):
            notices.append(f"The photos changed since step {run.start} (" + "; ".join(
                f"{k}: {', '.join(v)}" for k, v in changed.items() if v) + "); run.json records it.")
    group.barrier()  # the run folder is set up before anyone trains
    if resume_from is not None and group.is_main:
        run.left = left_out(run_dir, seeds, run.start)
    if run.start > run.total or (run.start == run.total and not group.any(bool(run.left))):
        raise TrainError(f"Run '{name}' is already at step {run.start} of {run.total}"
                         f"{' and complete' if run.start == run.total else ''}; raise max_train_steps to continue.")
    if run.left:
        notices.append(f"Run '{name}' has already trained its {run.total} steps; completing what the interrupted "
                       f"run left out ({run.left.describe()}) without training more." if run.start == run.total else
                       f"Completing what the interrupted run left out ({run.left.describe()}) before training on.")
    started = Started(run.start, run.total, run_dir.resolve(), run.start if resume_from is not None else None,
                      tuple(data.report))
    return run, [started, *(Notice(run.start, run.total, n) for n in (notices if group.is_main else ()))]


def _uses_prior(s: TrainSettings) -> bool:
    return s.mode == "prior" or s.prior_preservation


def _compute_dtype(s: TrainSettings, device: torch.device) -> torch.dtype:
    if device.type != "cuda" or s.mixed_precision == "no":
        return torch.float32
    return torch.float16 if s.mixed_precision == "fp16" else torch.bfloat16


def _trainables(model: SDModel, s: TrainSettings, dtype: torch.dtype) -> Trainables:
    """What the recipe's mode trains, in fp32; the frozen parts cast to the compute ``dtype``."""
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
    return tr


def _batches(s: TrainSettings, tr: Trainables, live: SDModel, data: TrainingSet, preset: Preset, run_dir: Path,
             group: Group, notices: list[str], cancel: CancelToken | None) -> tuple[Batchable, Batchable | None]:
    """The instance images and (prior preservation) the class images, tokenized; missing class images
    are generated first with the base model (before any training, so it is still the base)."""
    captions = [tr.substitute(im.caption, s.trigger_word) for im in data.images]
    inst = Batchable(data, tokenize(tr.tokenizer, captions, notices))
    prior = None
    if _uses_prior(s):
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
        prior = Batchable(class_data, tokenize(tr.tokenizer, [s.class_prompt] * len(class_data), notices))
    if s.cache_latents and s.crop == "center":
        for b in (inst, prior):
            if b is not None:
                cache_latents(live.vae, b)
    return inst, prior


def _start_at(run: _Run, resume_from: Path | None, report: list[str], photos: list[dict[str, Any]]) -> int:
    """The step the run starts at. A resume drops the log rows and renders made after its checkpoint
    (``_catch_up`` restores it); a new run starts its folder over (an attempt that saved no checkpoint)
    with run.json."""
    if resume_from is not None:
        start = step_of(resume_from)
        if run.group.is_main:
            run.log.truncate(start)
            for step, files in validation_images(run.run_dir / "validation").items():
                for f in files.values() if step > start else ():
                    f.unlink()  # rendered after the checkpoint by a run that did not get to save
        return start
    if run.group.is_main:
        if run.run_dir.exists():  # a run that never reached a checkpoint: start it over
            for sub in ("validation", "logs"):
                shutil.rmtree(run.run_dir / sub, ignore_errors=True)
        record = {"format": 1, "name": run.name, "base": base_record(run.base), "recipe": run.recipe.to_dict(),
                  "images": report, "photos": photos}
        if run.group.size > 1:
            record["processes"] = run.group.size
        write_run_record(run.run_dir, record)
    return 0


# ------------------------------------------------------------------------------------------- steps


def _stop_requested(group: Group, cancel: CancelToken | None) -> bool:
    """Whether any process was asked to stop: all of them then stop at the same step."""
    return group.any(cancel is not None and cancel.cancelled)


def _optimizer_step(run: _Run, step: int) -> tuple[float, float]:
    """Optimizer step ``step`` (0-based), logged as step + 1; returns its loss and lr.

    The loss is divided by ``accum`` before backward, so the accumulated gradient is the mean's.
    """
    s, tr, optimizer, scaler, group = run.s, run.tr, run.optimizer, run.scaler, run.group
    tr.before_step(step)  # pivotal tuning: from the pivot on, the new tokens are frozen
    lr = apply_lr(optimizer, s, step, tr.frozen_groups(step))
    accum = s.gradient_accumulation_steps
    losses = []
    for a in range(accum):
        loss = run.micro_loss(step * accum + a)
        scaler.scale(loss / accum).backward()
        losses.append(loss.detach())
    params = tr.optimizer_params()
    group.sum_grads(params)  # N processes: the global batch's gradient, identical on every rank
    loss_value = float(group.sum(torch.stack(losses).mean()))
    if not math.isfinite(loss_value):  # before the update: the weights (and every checkpoint) stay finite
        _diverged(f"the loss became {loss_value}", step)
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm) if s.max_grad_norm > 0 else None
    if not scaler.is_enabled():  # (fp16: the scaler skips a step with inf/NaN gradients and lowers its scale)
        if not _finite(params, norm, grads=True):
            _diverged("the gradients became NaN or infinite", step)
    scale_before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    skipped = scale_before is not None and scaler.get_scale() < scale_before
    tr.zero_grad(optimizer)
    tr.after_step()
    if not _finite(params):
        _diverged("the trained weights became NaN or infinite", step)
    row = {"step": step + 1, "loss": loss_value, "lr": lr}
    if skipped:
        row["skipped"] = True  # fp16 overflow: the scaler skipped this update and lowered its scale
    if group.is_main:
        run.log.append(**row)
    return loss_value, lr


def _finite(tensors: list[torch.Tensor], norm: torch.Tensor | None = None, grads: bool = False) -> bool:
    """Whether every value is finite (the gradients' when ``grads``): one sum per tensor, one sync."""
    if norm is not None:
        return bool(torch.isfinite(norm))
    sums = [(t.grad if grads else t).detach().sum(dtype=torch.float32) for t in tensors if not grads or t.grad is not None]
    return not sums or bool(torch.isfinite(torch.stack(sums).sum()))


def _diverged(what: str, step: int) -> None:
    raise TrainError(f"Training stopped at step {step + 1}: {what}, so the run diverged; the checkpoints already "
                     "saved are kept and intact: lower the learning rate, or resume from an earlier checkpoint.")


def _eta(s: TrainSettings, step: int, step_times: list[float], ckpt_times: list[float]) -> float:
    """Seconds left: the mean step time per step left, plus the mean checkpoint time per checkpoint left."""
    total, every = s.max_train_steps, s.checkpointing_steps
    mean_step = sum(step_times) / len(step_times)
    per_ckpt = (sum(ckpt_times) / len(ckpt_times)) if ckpt_times else 0.0
    left_ckpts = len(range(step + every - step % every, total + 1, every))
    return (total - step) * mean_step + left_ckpts * per_ckpt


# ------------------------------------------------------------------------------ checkpoints, the end


def _plot(run: _Run) -> None:
    if run.group.is_main:
        plot(run.log.rows(), run.run_dir / "logs" / PLOT_NAME)


def _save(run: _Run, step: int) -> Path:
    """Checkpoint ``step``: the main process writes it, then prunes; everyone returns once it is complete."""
    path = ckpt.step_dir(run.run_dir, step)
    if run.group.is_main:
        path = ckpt.save_checkpoint(run.run_dir, step, run.tr, run.meta, run.optimizer, run.scaler)
        ckpt.prune(run.run_dir, run.s.checkpoints_total_limit, run.s.keep_resume_state)
    run.group.barrier()
    return path


def _validate(run: _Run, step: int, checkpoint: Path | None) -> ValidationDone | None:
    """The main process renders the validation seeds with the live weights (``checkpoint``'s, or the base
    model's at step 0) and redraws the grid; everyone returns once it is done. A Stop cuts the render
    short (None): the loop then stops, and a resume renders what is missing."""
    done = None
    if run.group.is_main and run.seeds:
        try:
            done = _render_row(run, step, checkpoint, run.seeds, run.cancel)
        except Cancelled:
            pass
    if run.group.is_main and not (run.cancel is not None and run.cancel.cancelled):
        # the corridor meter (~2% of the time between checkpoints); a failure is a sentence, never a stop
        run.corridor_note = corridor_run.after_checkpoint(run.live, run.run_dir, step, run.micro_loss.inst.data.images,
                                                          run.tr.tokens, fresh=step == 0)
    run.group.barrier()  # the others wait while the main process renders
    return done


def _render_row(run: _Run, step: int, checkpoint: Path | None, seeds: list[int],
                cancel: CancelToken | None = None) -> ValidationDone:
    """Render ``seeds`` of step ``step`` with the live weights and redraw the grid (the main process only)."""
    ref = run.base
    if checkpoint is not None:  # the PNGs' recipes name the checkpoint as a model, by its content hash
        ref = ModelRef(source=str(checkpoint.resolve()), kind="checkpoint",
                       sha256=checkpoint_sha256(checkpoint, run.base.sha256),
                       label=f"{run.name} step {step}", checkpoint_step=step)
    run.live.ref = ref
    paths = render(run.live, run.dream_recipe, seeds, run.run_dir / "validation", step, cancel)
    return ValidationDone(step, run.total, tuple(paths), write_grid(run.run_dir / "validation", run.seeds, run.recipe))


def _catch_up(run: _Run) -> Iterator[TrainEvent]:
    """A resume: the main process renders each row a killed run left out with its step's weights (step 0's are
    the set-up's, as yet unrestored), redraws a stale grid and a missing plot; then everyone restores the
    resumed checkpoint's state and returns once all is done."""
    if run.group.is_main:
        for step, path, seeds in run.left.rows:
            why = load_params(path, run.tr) if path is not None else None
            if why is None:
                yield _render_row(run, step, path, seeds)
            else:
                yield Notice(run.start, run.total, f"Checkpoint {path.name} cannot be rendered ({why}); its "
                                                   "validation row stays missing.")
        if run.left.grid:
            write_grid(run.run_dir / "validation", run.seeds, run.recipe)
        if run.left.plot:
            _plot(run)
        note = corridor_run.after_resume(run.run_dir, run.start, run.live.device, run.micro_loss.inst.data.images,
                                         run.tr.tokens)  # rows a kill (or an older Dreamy) left out
        if note:
            yield Notice(run.start, run.total, note)
    ckpt.restore(run.resume_from, run.tr, run.optimizer, run.scaler)
    run.group.barrier()


def _corridor_notice(run: _Run, step: int) -> Iterator[TrainEvent]:
    if run.corridor_note:
        yield Notice(step, run.total, run.corridor_note)
        run.corridor_note = None


def _finish(run: _Run, step: int, stopped: bool) -> Finished:
    """The last loss plot; the end event once every process is done."""
    _plot(run)
    run.group.barrier()  # every file is in place before any process reports the end
    last = ckpt.list_checkpoints(run.run_dir)
    files = {"log": run.log.path, "plot": run.run_dir / "logs" / PLOT_NAME,
             "grid": run.run_dir / "validation" / GRID_NAME}
    return Finished(step, run.total, run.run_dir.resolve(), last[-1][1] if last else None, stopped,
                    {k: v for k, v in files.items() if v.exists()})

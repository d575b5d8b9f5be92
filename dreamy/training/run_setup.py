"""``train()``'s set-up: checks, the base model, what is trained, the optimizer, the batches, the run folder.

``set_up`` does everything before the first event and returns the ``Run`` that the other phases
(``steps.py``, ``checkpointing.py``) share, with the opening events (Started, Notices).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..events import CancelToken
from ..layout import step_of
from ..models.devices import pick_device
from ..models.sources import SDModel, load_model
from ..recipes.presets import Preset, load_preset
from ..recipes.recipe import ModelRef, Recipe, resolve
from ..recipes.seeds import parse_seeds
from ..recipes.settings import TrainSettings
from . import speed
from .catch_up import LeftOut, left_out
from .data import TrainingSet, prepare_images
from .events import Notice, Started, TrainEvent
from .logbook import LOG_NAME, LossLog
from .loss import Batchable, MicroLoss, cache_latents, tokenize
from .modes import Trainables, setup_mode
from .optim import make_optimizer
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
from .snapshot import HostBuffers
from .validation import validation_images
from .validation_model import ValidationModel
from .writer import CheckpointWriter


@dataclass
class Run:
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
    view: ValidationModel | None = None  # what Dream loads for each checkpoint: the validation renders' model
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)  # checkpoint writes, in the background
    buffers: HostBuffers = field(default_factory=HostBuffers)  # pinned host memory for the snapshots
    fast: dict[str, bool] = field(default_factory=dict)  # the step's speed choices (speed.py), run.json "runtime"
    more_prompts: list[Recipe] = field(default_factory=list)  # validation_prompts after the first: validation/prompt-N/

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
        if self.live.arch == "sdxl":  # SD 1.5 markers stay as they were
            meta["arch"] = "sdxl"
        if self.group.size > 1:
            meta["processes"] = self.group.size
        return meta


def set_up(images: str | os.PathLike | Sequence[str | os.PathLike], name: str, preset: str | Preset, base: str, overrides: dict[str, Any] | None,
            unlock: bool | Iterable[str], models_dir: str | os.PathLike | None, resume: bool,
            device: str | None, validation: dict[str, Any] | None,
            cancel: CancelToken | None, allow_changed_photos: bool = False) -> tuple[Run, list[TrainEvent]]:
    """Everything before the first event; returns the run and its opening events (Started, Notices)."""
    preset = load_preset(preset) if isinstance(preset, str) else preset
    recipe = resolve(preset, "train", overrides, unlock)
    s: TrainSettings = recipe.settings
    dream_recipe, more_prompts = validation_recipes(preset, validation, s.validation_prompts)
    seeds = parse_seeds(s.validation_seeds) if s.validation_seeds.strip() else []
    run_dir = run_dir_for(name, models_dir)
    resume_from, skipped = resume_point(name, run_dir, resume)
    if uses_prior(s) and not s.class_prompt.strip():
        raise TrainError("Prior preservation needs a class prompt (e.g. 'a photo of a person').")

    group = join(device)  # one process without a launcher: no collective at all
    dev = group.device if group.device is not None else pick_device(device)
    dtype = _compute_dtype(s, dev)
    data = prepare_images(images, resolution=s.resolution, prompt=s.instance_prompt, trigger=s.trigger_word,
                          captions=s.captions, crop=s.crop)
    photos = photo_record(data.images, s.captions == "files")
    changed = check_photos(run_dir, photos, allow_changed_photos) if resume_from is not None else None
    # fp32: the trained tensors are the masters; SD 1.x or SDXL (sdxl_setup.py)
    model = load_model(base, device=dev, precision="fp32", expected_arch=None)
    if model.arch == "sdxl":
        from . import sdxl_setup

        sdxl_setup.check_sdxl_recipe(s)
    if resume_from is not None:
        check_resumable(run_dir, recipe, model.ref, group.size)
    recorded = (read_runtime(run_dir) or {}) if resume_from is not None else None
    fused, compiled = speed.choose(s, dev, recorded)
    if model.arch == "sdxl":
        tr = sdxl_setup.sdxl_trainables(model, s, dtype, compiled)
        live = sdxl_setup.sdxl_live(model, tr, dev, dtype)
    else:
        tr = _trainables(model, s, dtype, fused, compiled)
        live = SDModel(model.ref, "sd15", tr.unet, model.vae, tr.text_encoder, tr.tokenizer, dev, dtype)
    optimizer, opt_note = make_optimizer(tr.groups, s)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda" and dtype == torch.float16)
    notices = [*skipped, *([opt_note] if opt_note else [])]
    if group.size > 1:
        notices.append(f"Data-parallel over {group.size} processes: a global batch of {s.train_batch_size} x "
                       f"{group.size} = {s.train_batch_size * group.size} images per micro-step.")
    if model.arch == "sdxl":
        from .sdxl_loss import SDXLMicroLoss

        micro_loss: MicroLoss = SDXLMicroLoss(s, model, tr, sdxl_setup.sdxl_batches(s, tr, live, data, notices),
                                              dev, dtype, group)
    else:
        inst, prior = _batches(s, tr, live, data, preset, run_dir, group, notices, cancel)
        micro_loss = MicroLoss(s, model, tr, inst, prior, dev, dtype, group)

    run = Run(name, s, recipe.replace(model=model.ref), dream_recipe, seeds, run_dir, group, tr, optimizer,
               scaler, live, micro_loss, LossLog(run_dir / "logs" / LOG_NAME))
    run.fast = {"fused_params": tr.flat_grad is not None, "compile_unet": compiled}
    if tr.tokens and s.validation_prompts.strip():  # the learned tokens in place of the trigger word
        run.dream_recipe, more_prompts = validation_recipes(preset, validation, s.validation_prompts, s.trigger_word,
                                                            tr.tokens)
    run.more_prompts = more_prompts
    if group.is_main and seeds:  # Dream's model for each checkpoint, loaded as Dream loads the base
        run.view = ValidationModel(base, dev, dream_recipe.settings.precision, s.lora_alpha / s.lora_rank)
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


def validation_recipes(preset: Preset, validation: dict[str, Any] | None, prompts: str, trigger: str = "",
                       tokens: Sequence[str] = ()) -> tuple[Recipe, list[Recipe]]:
    """The dream recipes the validation renders use: the preset's [dream] with the caller's ``validation``
    overrides, once per line of ``validation_prompts`` (none: the preset's prompt). A prompt other than
    the preset's is recorded as unlocked in its PNGs' recipes. Pivotal tuning (``tokens``): the trigger
    word of each ``validation_prompts`` line becomes the new tokens, as in the captions (diffusers'
    advanced Dreambooth script does the same to its validation prompt), so the renders use what is learned."""
    validation = dict(validation or {})
    lines = [line.strip() for line in prompts.splitlines() if line.strip()]
    if tokens and trigger:
        lines = [re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", "".join(tokens), line) for line in lines]
    first = resolve(preset, "dream", validation, unlock=list(validation))
    if not lines:
        return first, []

    def with_prompt(prompt: str) -> Recipe:
        if prompt == first.settings.prompt:
            return first
        return resolve(preset, "dream", {**validation, "prompt": prompt}, unlock=[*validation, "prompt"])

    return with_prompt(lines[0]), [with_prompt(p) for p in lines[1:]]


def uses_prior(s: TrainSettings) -> bool:
    return s.mode == "prior" or s.prior_preservation


def _compute_dtype(s: TrainSettings, device: torch.device) -> torch.dtype:
    if device.type != "cuda" or s.mixed_precision == "no":
        return torch.float32
    return torch.float16 if s.mixed_precision == "fp16" else torch.bfloat16


def _trainables(model: SDModel, s: TrainSettings, dtype: torch.dtype, fused: bool, compiled: bool) -> Trainables:
    """What the recipe's mode trains, in fp32; the frozen parts cast to the compute ``dtype``; ``fused`` /
    ``compiled``: the flat buffer and the compiled UNet (``speed.choose``)."""
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
    if fused:
        tr.fuse()
    if compiled:
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
    if uses_prior(s):
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


def _start_at(run: Run, resume_from: Path | None, report: list[str], photos: list[dict[str, Any]]) -> int:
    """The step the run starts at. A resume drops the log rows and renders made after its checkpoint
    (``_catch_up`` restores it); a new run starts its folder over (an attempt that saved no checkpoint)
    with run.json."""
    if resume_from is not None:
        start = step_of(resume_from)
        if run.group.is_main:
            run.log.truncate(start)
            folders = [run.run_dir / "validation", *sorted((run.run_dir / "validation").glob("prompt-*"))]
            for folder in folders:  # validation_prompts after the first have a folder each
                for step, files in validation_images(folder).items():
                    for f in files.values() if step > start else ():
                        f.unlink()  # rendered after the checkpoint by a run that did not get to save
        return start
    if run.group.is_main:
        if run.run_dir.exists():  # a run that never reached a checkpoint: start it over
            for sub in ("validation", "logs"):
                shutil.rmtree(run.run_dir / sub, ignore_errors=True)
        record = {"format": 1, "name": run.name, "base": base_record(run.base), "recipe": run.recipe.to_dict(),
                  "images": report, "photos": photos, "runtime": run.fast}
        if run.group.size > 1:
            record["processes"] = run.group.size
        write_run_record(run.run_dir, record)
    return 0


def read_runtime(run_dir: Path) -> dict[str, Any] | None:
    """run.json's ``runtime`` (the speed choices the run started with), or None (an older run's record)."""
    try:
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    runtime = record.get("runtime") if isinstance(record, dict) else None
    return runtime if isinstance(runtime, dict) else None

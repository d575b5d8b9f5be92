"""``train()``: the Dreambooth loop as a generator of events, with cooperative stop and exact resume.

Precision follows diffusers' dreambooth example without its pitfalls: the trained tensors are fp32
masters; on CUDA the forward runs under fp16 autocast with a GradScaler (the frozen VAE, and a
LoRA's frozen base, are cast to fp16); on the CPU everything is fp32. Every random draw is seeded by
(seed, micro-step), see ``data.py``, so a resumed run is bit-identical. Under ``accelerate launch``
with N processes the run is data-parallel (``parallel.py``): a global batch of ``train_batch_size``
x N, gradients summed across ranks, files written by the main process.

``train`` holds the control flow and the ``yield``s; its phases live in their own modules, over one
``Run``: ``run_setup.set_up`` (checks, base model, trainables, optimizer, batches, run folder or
resume; ``speed.py`` picks the step), ``steps.optimizer_step`` (``loss.py`` for a micro-step), and
``checkpointing``: ``save`` (a snapshot written in the background), ``start_row`` (Dream's path on
the checkpoint's weights, then the corridor meter, beside the next steps on CUDA: ``rows.py``),
``meter`` (the meter alone, for a run without renders), ``catch_up`` (a resume: what a killed run
left out), ``finish``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..events import CancelToken
from ..recipes.presets import Preset
from .checkpointing import catch_up, corridor_notice, finish, meter, plot_loss, save, start_row
from .events import CheckpointSaved, StepDone, TrainEvent
from .rows import RowRenderer, background_rows
from .run_setup import Run, set_up
from .steps import eta, optimizer_step, stop_requested


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
        on a stop ``CheckpointSaved``, then (not on a stop) ``ValidationDone`` once its row is rendered
        (on the CPU right away; on CUDA the row renders beside the next steps and its event comes
        after a later ``StepDone``, at the latest before the next checkpoint's); last ``Finished``
        (the last checkpoint, whether stopped, the log/plot/grid files that exist).
        ``CheckpointSaved`` comes once the checkpoint's state is taken; its folder is written in the
        background and appears whole (renamed into place) while the next steps train; every write
        is complete before ``Finished`` (and before the next checkpoint's snapshot).

    Units: a step is one optimizer update of ``gradient_accumulation_steps`` micro-steps of
    ``train_batch_size`` images (per process). ``max_train_steps``, ``checkpointing_steps`` and
    ``lr_warmup_steps`` count steps. ``learning_rate`` is the peak lr of ``lr_scheduler`` (Prodigy:
    a multiplier of its own estimate). ``StepDone.lr`` is the first parameter group's (UNet's) lr
    for that step, ``StepDone.loss`` the mean MSE of its micro-steps (over all processes).

    Writes ``<models_dir>/<name>/``:
        ``run.json``: the name, the base (source + sha256), the whole recipe, the image report, the
        photos (name, sha256, caption) and any ``photo_changes`` allowed on a resume (with their step).
        ``checkpoints/step-XXXX/``: the trained parts (fp16) and ``resume/`` (the exact fp32 masters
        as int16 residuals over those parts, optimizer, scaler, RNG states); beyond ``checkpoints_total_limit`` the oldest are removed,
        and older resume states too unless ``keep_resume_state="all"``.
        ``validation/stepNNNNNN-seedNNNNNN.png`` (each with its recipe: the picture Dream gives for that
        checkpoint and seed, rendered through Dream itself) and ``validation/grid.png``.
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
    run, opening = set_up(images, name, preset, base, overrides, unlock, models_dir, resume, device,
                          validation, cancel, allow_changed_photos)
    try:
        yield from opening  # Started, then the main process's notices
        yield from _run(run, cancel)
    finally:  # any end (an error, a closed generator): the write in flight completes, the thread stops
        run.writer.close(raising=False)


def _run(run: Run, cancel: CancelToken | None) -> Iterator[TrainEvent]:
    rows = RowRenderer(run.live.device, background_rows(run.live.device))
    try:
        yield from _steps(run, cancel, rows)
    finally:
        rows.close()


def _steps(run: Run, cancel: CancelToken | None, rows: RowRenderer) -> Iterator[TrainEvent]:
    s, group, total = run.s, run.group, run.total
    if run.start == 0:  # the base model's renders: the grid's first row
        if not start_row(run, rows, 0, None, None):  # the main process only: the others get False
            meter(run, 0)
        group.barrier()  # every process passes here alike, whatever the main process did
        yield from rows.results()  # rendered in the loop (CPU): its events now, as a resume's rows
        yield from corridor_notice(run, 0)
    else:
        yield from catch_up(run)
    step_times: list[float] = []  # seconds per step, and per checkpoint: the ETA
    ckpt_times: list[float] = []
    step = last_saved = run.start
    stopped = False
    while step < total:
        if stop_requested(group, cancel):
            stopped = True
            break
        t0 = time.perf_counter()
        loss, lr = optimizer_step(run, step)
        step += 1
        step_times.append(time.perf_counter() - t0)
        run.writer.check()  # a background write that failed stops the run here, with its sentence
        stop_now = stop_requested(group, cancel)  # asked during this step: save it now
        yield StepDone(step, total, loss, lr, sum(step_times), eta(s, step, step_times, ckpt_times))
        yield from rows.results()  # the row rendering beside these steps, once it is done
        if not (step % s.checkpointing_steps == 0 or step == total or stop_now):
            continue
        t1 = time.perf_counter()
        plot_loss(run)
        path, pending, parts = save(run, step)
        last_saved = step
        yield CheckpointSaved(step, total, path)
        if stop_now:
            stopped = True
            break
        yield from rows.results(wait=True)  # the previous row, should it still render: the model is shared
        if not start_row(run, rows, step, pending, parts, last=step == total):
            meter(run, step)
        group.barrier()
        del parts  # the snapshot's device copy: the validation model has taken it
        ckpt_times.append(time.perf_counter() - t1)
        yield from rows.results()
        yield from corridor_notice(run, step)
    yield from rows.results(wait=True)  # a Stop cuts it short (no event); the resume renders it
    if stopped and last_saved != step:  # asked between steps (or before the first): save where it is
        yield CheckpointSaved(step, total, save(run, step)[0])
    yield finish(run, step, stopped)

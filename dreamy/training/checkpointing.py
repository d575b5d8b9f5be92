"""``train()``'s checkpoint phases: save (in the background), validate, a resume's catch-up, the end.

At a checkpoint the loop takes a snapshot and hands it to the writer thread (``checkpoints.py``,
``writer.py``), puts its fp16 parts into the model Dream loads for that checkpoint
(``validation_model.py``) and hands the validation row to the row thread (``rows.py``: Dream's own
path, on CUDA beside the next steps), then runs the corridor meter on the live weights. Only the
main process writes and renders; the others wait at the barriers. The loop waits for a write or a
row only when the next checkpoint comes while it is still in flight, and at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from ..dreaming.fast import captured
from ..events import CancelToken
from ..models.checkpoints import checkpoint_sha256, damage
from ..models.sources import SDModel
from ..recipes.recipe import ModelRef
from . import checkpoints as ckpt
from . import corridor_run
from .events import Finished, Notice, TrainEvent, ValidationDone
from .logbook import PLOT_NAME, plot
from .rows import RowRenderer
from .run_setup import Run
from .speed import eager
from .validation import GRID_NAME, render, write_grid
from .writer import PendingWrite

Parts = dict[str, dict]


def plot_loss(run: Run) -> None:
    if run.group.is_main:
        plot(run.log.rows(), run.run_dir / "logs" / PLOT_NAME)


def save(run: Run, step: int) -> tuple[Path, PendingWrite | None, Parts | None]:
    """Checkpoint ``step``: the main process snapshots it and starts its write (pruning once it is in
    place), after the write before it has finished; returns its folder (complete once the write ends),
    the write, and the snapshot's fp16 parts on the device (for the validation model)."""
    path = ckpt.step_dir(run.run_dir, step)
    pending = parts = None
    if run.group.is_main:
        s = run.s
        pending, parts = ckpt.save_checkpoint(
            run.run_dir, step, run.tr, run.meta, run.optimizer, run.scaler, run.writer, run.buffers,
            lambda: ckpt.prune(run.run_dir, s.checkpoints_total_limit, s.keep_resume_state))
    run.group.barrier()
    return path, pending, parts


def checkpoint_ref(run: Run, step: int, path: Path, sha256: str) -> ModelRef:
    """How a validation PNG names checkpoint ``step``: as Dream names it, by content hash."""
    return ModelRef(source=str(path.resolve()), kind="checkpoint", sha256=sha256, label=f"{run.name} step {step}",
                    checkpoint_step=step, arch="sdxl" if run.live.arch == "sdxl" else None)  # SD 1.5's as before


def start_row(run: Run, rows: RowRenderer, step: int, pending: PendingWrite | None, parts: Parts | None,
              last: bool = False) -> bool:
    """The main process starts the validation row of checkpoint ``step`` (its snapshot's ``parts``; the
    base model at step 0) beside the loop (``rows.py``), and the corridor meter after it on the same
    model; their ``ValidationDone`` and meter ``Notice`` come from ``rows``, whose previous row the
    caller has collected (the validation model is shared). Returns whether the meter rides with the
    row (False without validation renders: the caller then runs ``meter`` on the live weights).

    The model is filled here, on the loop's stream; the render waits for the checkpoint's content hash
    only to name it in the PNGs, and for the whole write when ``last`` (a kill before the last
    checkpoint is in place must leave its row to the resume). A Stop cuts the render short, and the
    meter is skipped: a resume renders and measures what is missing."""
    if not (run.group.is_main and run.seeds and run.view is not None):
        return False
    model = run.view.as_base() if parts is None else run.view.put(parts, run.tr.tokens)
    ref = None
    if pending is not None:
        def ref() -> ModelRef:
            if last:
                pending.future.result()
            return checkpoint_ref(run, step, pending.path, pending.content_sha256())

    def job() -> list[TrainEvent]:
        events: list[TrainEvent] = [render_row(run, step, model, run.seeds, ref, run.cancel)]
        # The meter measures the checkpoint's fp16 parts, as Dream loads them: the weights a resume
        # measures a missing row with (corridor_run.after_resume), and off the loop's critical path.
        note = _measure(run, model, step)
        if note:
            events.append(Notice(step, run.total, note))
        return events

    # the run's first row captures Dream's CUDA graphs: in the loop (rows.py says why); then replays beside it
    inline = model.device.type == "cuda" and not captured(model)
    rows.start(job, inline=inline)
    return True


def meter(run: Run, step: int) -> None:
    """The corridor meter of checkpoint ``step`` on the live weights, for a run without validation renders
    (the main process only; the caller's barrier makes the others wait); its failure is said by
    ``corridor_notice``. It measures the live weights eagerly: its eval batches would each cost a compile
    of their own."""
    if run.group.is_main:
        with eager(run.tr.unet):
            run.corridor_note = _measure(run, run.live, step)


def _measure(run: Run, model: SDModel, step: int) -> str | None:
    """~2% of the time between checkpoints; a failure is a sentence, never a stop; nothing after a Stop."""
    if run.cancel is not None and run.cancel.cancelled:
        return None
    return corridor_run.after_checkpoint(model, run.run_dir, step, run.micro_loss.inst.data.images, run.tr.tokens,
                                         fresh=step == 0)


def render_row(run: Run, step: int, model: SDModel, seeds: list[int], ref: Callable[[], ModelRef] | None,
               cancel: CancelToken | None = None) -> ValidationDone:
    """Render ``seeds`` of step ``step`` on ``model`` and redraw the grid (the main process only).
    ``ref`` names the checkpoint in the PNGs (None: step 0, the base model's own ref)."""
    if ref is None:
        model.ref = run.base
    paths = render(model, run.dream_recipe, seeds, run.run_dir / "validation", step, cancel, ref)
    for n, recipe in enumerate(run.more_prompts, 2):  # validation_prompts after the first: a folder and grid each
        folder = run.run_dir / "validation" / f"prompt-{n}"
        paths += render(model, recipe, seeds, folder, step, cancel, ref)
        write_grid(folder, run.seeds, run.recipe)
    return ValidationDone(step, run.total, tuple(paths), write_grid(run.run_dir / "validation", run.seeds, run.recipe))


def catch_up(run: Run) -> Iterator[TrainEvent]:
    """A resume: the main process renders each row a killed run left out with the model Dream loads for that
    step, redraws a stale grid and a missing plot; then everyone restores the resumed checkpoint's state and
    returns once all is done."""
    if run.group.is_main:
        for step, path, seeds in run.left.rows:
            if run.view is None:
                break
            why, model = None, None
            if path is None:
                model = run.view.as_base()
            elif (why := damage(path, resume=False, cached=True)) is None:
                try:
                    model = run.view.put_checkpoint(path, run.tr.tokens)
                except KeyError as e:
                    why = f"it holds no {e.args[0]}, so it is not this run's"
                except RuntimeError as e:  # a shape that does not fit: another run's checkpoint moved in
                    why = f"its weights do not fit this run ({str(e).splitlines()[0][:80]})"
            if model is None:
                yield Notice(run.start, run.total, f"Checkpoint {path.name} cannot be rendered ({why}); its "
                                                   "validation row stays missing.")
                continue
            ref = None if path is None else (
                lambda step=step, path=path: checkpoint_ref(run, step, path, checkpoint_sha256(path, run.base.sha256)))
            yield render_row(run, step, model, seeds, ref)
        if run.left.grid:
            write_grid(run.run_dir / "validation", run.seeds, run.recipe)
        if run.left.plot:
            plot_loss(run)
        note = corridor_run.after_resume(run.run_dir, run.start, run.live.device, run.micro_loss.inst.data.images,
                                         run.tr.tokens)  # rows a kill (or an older Dreamy) left out
        if note:
            yield Notice(run.start, run.total, note)
    ckpt.restore(run.resume_from, run.tr, run.optimizer, run.scaler)
    run.group.barrier()


def corridor_notice(run: Run, step: int) -> Iterator[TrainEvent]:
    if run.corridor_note:
        yield Notice(step, run.total, run.corridor_note)
        run.corridor_note = None


def finish(run: Run, step: int, stopped: bool) -> Finished:
    """The last write and loss plot; the end event once every process is done."""
    run.writer.close()  # raises a failed last write's sentence
    plot_loss(run)
    run.group.barrier()  # every file is in place before any process reports the end
    last = ckpt.list_checkpoints(run.run_dir)
    files = {"log": run.log.path, "plot": run.run_dir / "logs" / PLOT_NAME,
             "grid": run.run_dir / "validation" / GRID_NAME}
    return Finished(step, run.total, run.run_dir.resolve(), last[-1][1] if last else None, stopped,
                    {k: v for k, v in files.items() if v.exists()})

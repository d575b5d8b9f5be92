"""Sweeps: every model (or training checkpoint) x every seed, spread over processes, resumable.

    accelerate launch -m dreamy sweep --model models/my-run --seeds 0-9999 --out sweeps/my-run

Accelerate starts one process per GPU; ``PartialState.split_between_processes`` hands each its
share. The same command without ``accelerate launch`` is one process doing all of it.

Three rules keep the result independent of how many processes made it, and of crashes:
- Batches are cut from the *full* plan (per model, seeds in order, ``batch_size`` at a time), never
  from what is left to do, so a seed always shares its batch with the same seeds. Its image is
  then identical on 1 or N GPUs of one kind (CPU: bit-exact anyway).
- A batch whose images all exist is skipped; a partly done batch is re-run whole and only its
  missing images are written. Every file is written atomically, so a re-run after a crash resumes.
- Each process logs what it wrote to its own manifest file; the main process merges them and draws
  the contact sheets and the checkpoint x seed grid at the end.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import DreamyError
from ..events import CancelToken, Progress, ProgressCallback
from ..layout import step_of
from ..png.metadata import save_png
from ..recipes.seeds import parse_seeds
from .contact_sheet import grid

PAGE = 100  # seeds per contact-sheet page
GRID_SEEDS = 16  # seeds per row of the checkpoint x seed grid
GRID_NAME = "grid.png"


@dataclass(frozen=True)
class Row:
    """One model of a sweep: a row of its checkpoint x seed grid."""

    source: str  # what load_model loads
    label: str  # the grid's row label: "step 400", "step 0 (base)", or the model's name ("run-a · step 400")
    name: str  # its subfolder's name (numbered when there are several: model_folder)
    block: str = ""  # several runs side by side: the run this row belongs to (its folder's name)
    step: str = ""  # several runs: the row's label within its run's block ("step 400")


BASE_LABEL = "step 0 (base)"


def run_base(run: Path) -> str | None:
    """The base model a training run started from, as its ``run.json`` records it (None: no record)."""
    try:
        source = json.loads((run / "run.json").read_text(encoding="utf-8"))["base"]["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return source if isinstance(source, str) and source else None


def expand_rows(specs: Iterable[str], steps: str | None = None,
                check_source: Callable[[str], str] | None = None) -> tuple[list[Row], list[str]]:
    """(rows, notes): model sources, with a training run folder replaced by its checkpoints in step
    order, after the base model it was trained from (its step 0, from ``run.json``), so the grid
    shows where training started.

    ``steps`` filters a run's checkpoints with the seed syntax (``250,500`` or ``0-1200:250``); the
    base row is there unless ``steps`` leaves out 0. ``check_source`` vets the base's source (the
    studio's: a run.json may name any path); a refused base is left out with a note, as is a run
    without a readable run.json.

    Two or more runs are compared side by side: every row then carries its run's name as ``block``
    and its step as ``step`` (``label`` is "run · step"), and the grid draws one block of seed columns
    per run, rows matched by step (:func:`dreamy.dreaming.run_grid.draw_runs_grid`). Every spec must
    then be a run (DreamyError otherwise): a lone model has no steps to line up with.
    """
    wanted = set(parse_seeds(steps)) if steps not in (None, "", "all") else None
    out: list[Row] = []
    notes: list[str] = []
    specs = list(specs)
    found_by_spec = [_checkpoints(Path(spec)) for spec in specs]
    several = sum(bool(f) for f in found_by_spec) > 1
    if several and not all(found_by_spec):
        plain = next(s for s, f in zip(specs, found_by_spec, strict=True) if not f)
        raise DreamyError(f"'{plain}' is not a training run with checkpoints; runs are compared only with runs.")
    blocks = _block_names(specs) if several else [""] * len(specs)
    for spec, found, block in zip(specs, found_by_spec, blocks, strict=True):
        run = Path(spec)
        if not found:
            out.append(Row(spec, _label(spec), _name(spec)))
            continue
        rows: list[Row] = []
        if (wanted is None or 0 in wanted) and (run / "run.json").is_file():
            base = run_base(run)
            try:
                if base is None:
                    raise DreamyError("its run.json does not name it")
                rows.append(Row(check_source(base) if check_source else base, BASE_LABEL, "base"))
            except DreamyError as e:
                notes.append(f"The base model of {run.name} is left out: {str(e).rstrip('.')}.")
        rows += [Row(str(p), f"step {step}", _name(str(p))) for step, p in found if wanted is None or step in wanted]
        if block:
            rows = [Row(r.source, f"{block} · {r.label}", r.name, block, r.label) for r in rows]
        out += rows
    if not out:
        raise DreamyError(f"No checkpoints match --checkpoints {steps!r} in {', '.join(specs)}.")
    return out, notes


def _checkpoints(run: Path) -> list[tuple[int, Path]]:
    """A training run's checkpoint folders in step order ([] when ``run`` is no run folder)."""
    found = []
    for parent in (run / "checkpoints", run):
        if run.is_dir() and parent.is_dir() and not (run / "unet").is_dir():
            found += [(step, p) for p in parent.iterdir() if p.is_dir() and (step := step_of(p)) is not None]
    return sorted(found)


def _block_names(specs: list[str]) -> list[str]:
    """Each run's name in a side-by-side grid: its folder's name, numbered where two share one."""
    names = [Path(s.rstrip("/\\")).name or s for s in specs]
    return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def expand_models(specs: Iterable[str], steps: str | None = None) -> list[str]:
    """The sources of :func:`expand_rows`'s rows."""
    return [r.source for r in expand_rows(specs, steps)[0]]


def _label(spec: str) -> str:
    step = step_of(spec.rstrip("/\\"))
    return f"step {step}" if step is not None else _name(spec)


def _name(spec: str) -> str:
    return re.sub(r"[^\w.-]+", "_", Path(spec.rstrip("/\\")).name or spec).strip("._") or "model"


def model_folder(index: int, spec: str, count: int) -> str:
    """A model's subfolder in the sweep: its last path part, numbered when there are several."""
    name = _name(spec)
    return f"{index:02d}-{name}" if count > 1 else name


@dataclass
class SweepPlan:
    models: list[str]
    seeds: list[int]
    out: Path
    batch_size: int
    batches: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)  # (model index, seeds)
    rows: list[Row] = field(default_factory=list)  # labels and folder names; default: from the sources

    def __post_init__(self) -> None:
        self.rows = self.rows or [Row(m, _label(m), _name(m)) for m in self.models]
        for m in range(len(self.models)):
            for i in range(0, len(self.seeds), self.batch_size):
                self.batches.append((m, tuple(self.seeds[i : i + self.batch_size])))

    def folder(self, m: int) -> Path:
        return self.out / model_folder(m, self.rows[m].name, len(self.models))

    def path(self, m: int, seed: int) -> Path:
        return self.folder(m) / f"seed{seed:06d}.png"

    def pending(self) -> list[tuple[int, tuple[int, ...]]]:
        return [(m, seeds) for m, seeds in self.batches if not all(self.path(m, s).exists() for s in seeds)]


def _state(device: str | None):
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


def sweep(
    models: str | Iterable[str],
    preset: str = "biased-dreams",
    seeds: str | Iterable[int] = "0",
    out_dir: str | Path = "sweep",
    *,
    checkpoints: str | None = None,
    overrides: dict[str, Any] | None = None,
    unlock: bool | Iterable[str] = (),
    batch_size: int = 1,
    device: str | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    fast: bool | str | None = None,
    check_source: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Dream every (model, seed) once; returns the merged manifest (main process) or this rank's part.

    ``models``: sources, or a training run folder, which becomes its base model (step 0) and its
    checkpoints (``checkpoints`` filters them; ``check_source`` vets the base: :func:`expand_rows`).
    The main process's result also names what it drew: ``sheets``, each model's contact sheets (pages
    of 100 seeds), ``grid``, the checkpoint x seed grid (``out_dir/grid.png``; None for one model),
    ``cells``, every image as ``{"path", "row", "seed"}`` in the grid's order (rows, then seeds), and
    ``notes``, one sentence each (a base model left out). Two or more runs in ``models`` are drawn side
    by side in the grid (rows = steps, one block of seed columns per run; every row dreams the same
    seeds with the same recipe, so the same prompt: put the runs' validation prompt in ``overrides``).
    ``cells``' ``row`` is then "run · step"."""
    from ..models.sources import load_model
    from ..recipes.presets import load_preset
    from ..recipes.recipe import resolve
    from .dreams import dream_iter

    rows, notes = expand_rows([models] if isinstance(models, str) else list(models), checkpoints, check_source)
    recipe = resolve(load_preset(preset), "dream", overrides, unlock)  # refuse locked changes before any work
    plan = SweepPlan([r.source for r in rows], parse_seeds(seeds), Path(out_dir), batch_size, rows=rows)
    state = _state(device)
    todo = plan.pending()
    state.wait_for_everyone()  # every process has read the same "done" state before anyone writes
    rank_log = plan.out / ".manifest" / f"rank-{state.process_index:03d}.jsonl"
    rank_log.parent.mkdir(parents=True, exist_ok=True)
    written: list[dict] = []
    timing = {"load_s": 0.0, "dream_s": 0.0}
    with state.split_between_processes(todo) as mine:
        loaded: tuple[int, Any] | None = None
        for done, (m, batch) in enumerate(mine):
            t0 = time.perf_counter()
            if loaded is None or loaded[0] != m:
                loaded = None  # free the previous model first
                dev = "cpu" if device == "cpu" else str(state.device)
                loaded = (m, load_model(plan.models[m], device=dev, precision=recipe.settings.precision,
                                             expected_arch=None))  # SD 1.x or SDXL
            t1 = time.perf_counter()
            made = []
            for img in dream_iter(loaded[1], seeds=list(batch), recipe=recipe, batch_size=len(batch), cancel=cancel,
                                  fast=fast):
                target = plan.path(m, img.seed)
                if not target.exists():  # finished before a crash: written once, never again
                    save_png(img.image, target, img.recipe)
                    made.append((img.seed, target))
            t2 = time.perf_counter()
            timing["load_s"] += t1 - t0
            timing["dream_s"] += t2 - t1
            with open(rank_log, "a", encoding="utf-8") as f:
                for seed, target in made:
                    entry = {"file": str(target.relative_to(plan.out)), "model": plan.models[m], "seed": seed,
                             "rank": state.process_index, "processes": state.num_processes,
                             "device": str(state.device), "host": socket.gethostname(), "pid": os.getpid(),
                             "seconds": round((t2 - t1) / len(batch), 4)}  # the batch's time, shared out
                    f.write(json.dumps(entry) + "\n")
                    written.append(entry)
            if on_progress is not None:
                on_progress(Progress("sweep", done + 1, len(mine), message=f"{plan.rows[m].label}: seeds {batch[0]}…"))
        with open(rank_log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"run": True, "rank": state.process_index, "batches": len(mine),
                                **{k: round(v, 3) for k, v in timing.items()}}) + "\n")
    state.wait_for_everyone()
    if not state.is_main_process:
        return {"written": written}
    manifest = merge_manifests(plan.out)
    t = time.perf_counter()
    drawn = write_sheets(plan)
    manifest["sheets_s"] = round(time.perf_counter() - t, 3)
    manifest["grid"] = plan.out / GRID_NAME if len(plan.models) > 1 else None
    manifest["sheets"] = [p for p in drawn if p != manifest["grid"]]
    manifest["cells"] = [{"path": plan.path(m, s), "row": row.label, "seed": s}
                         for m, row in enumerate(plan.rows) for s in plan.seeds if plan.path(m, s).exists()]
    manifest["notes"] = notes
    return manifest


def merge_manifests(out: Path) -> dict[str, Any]:
    """Fold every rank's log into ``manifest.json`` (atomically), keeping entries of earlier runs."""
    path = out / "manifest.json"
    try:
        entries = {e["file"]: e for e in json.loads(path.read_text())["images"]}
    except (OSError, ValueError, KeyError, TypeError):
        entries = {}
    duplicates, fresh, runs = [], {}, []
    logs = out / ".manifest"
    for log in sorted(logs.glob("rank-*.jsonl")):
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash; its image is re-checked by existence anyway
            if e.get("run"):
                runs.append(e)  # one per process: how long it spent loading models and dreaming
                continue
            if e["file"] in fresh:
                duplicates.append(e)  # should never happen: each file has one writer per run
            fresh.setdefault(e["file"], e)
        log.unlink()
    entries.update(fresh)  # an image re-made after it was lost is listed with its new maker
    if logs.is_dir() and not any(logs.iterdir()):
        logs.rmdir()
    manifest = {"images": sorted(entries.values(), key=lambda e: e["file"]), "duplicates": duplicates,
                "last_run": runs}
    atomic_write_text(path, json.dumps(manifest, indent=1))
    return manifest


def write_sheets(plan: SweepPlan) -> list[Path]:
    """Contact sheets per model (pages of 100 seeds) and, for several models, the checkpoint x seed grid."""
    from PIL import Image

    written = []
    for m in range(len(plan.models)):
        done = [s for s in plan.seeds if plan.path(m, s).exists()]
        pages = [done[i : i + PAGE] for i in range(0, len(done), PAGE)]
        for p, page in enumerate(pages):
            cells = []
            for s in page:
                with Image.open(plan.path(m, s)) as im:
                    cells.append((f"seed {s}", im.convert("RGB")))
            name = "contact-sheet.png" if len(pages) == 1 else f"contact-sheet-p{p + 1:03d}.png"
            written.append(save_png(grid(cells, cell=128), plan.folder(m) / name))
    if len({r.block for r in plan.rows}) > 1:  # several runs: one block of seed columns per run
        from .run_grid import draw_runs_grid

        written.append(draw_runs_grid(plan, plan.seeds[:GRID_SEEDS], plan.out / GRID_NAME))
    elif len(plan.models) > 1:
        seeds = plan.seeds[:GRID_SEEDS]
        cells, rows = [], []
        for m in range(len(plan.models)):
            rows.append(plan.rows[m].label)
            for s in seeds:
                p = plan.path(m, s)
                if p.exists():
                    with Image.open(p) as im:
                        cells.append((f"seed {s}", im.convert("RGB")))
                else:
                    cells.append((f"seed {s} (missing)", Image.new("RGB", (8, 8))))
        written.append(save_png(grid(cells, columns=len(seeds), cell=128, row_labels=rows), plan.out / GRID_NAME))
    return written

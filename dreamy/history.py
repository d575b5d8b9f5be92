"""What can be reopened from disk: past training runs (``models/<run>/``) and past dream jobs
(``outputs/dream``, ``prompt-sweep``, ``checkpoint-grid``, ``word``), listed newest first and read back with
their recipes. The studio's *Open run* and *Past dreams* pickers and ``python -m dreamy history``
are views of these functions.

    list_runs(models/)            -> [RunSummary]  newest first
    open_run(models/r1, models/)  -> RunView       loss history, grid cells, corridor rows, status,
                                                   the other validation prompts' grids
    list_dreams(outputs/)         -> [DreamJob]    newest first
    open_dreams(folder, outputs/) -> DreamView     pictures with captions, sheet or grid, recipe

No torch here (pickers list on page load); PNG recipes are read from their text chunks only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import DreamyError, PathError
from .layout import checkpoints, step_of
from .paths import within

# the outputs/<job>/ folders Past dreams lists (word: the Word box's picture and its particles.gif)
DREAM_JOBS = ("dream", "prompt-sweep", "checkpoint-grid", "word")
JOB_NAME = re.compile(r"(\d{8})-(\d{6})(?:-(\d+))?")  # layout.new_run_dir's <YYYYmmdd-HHMMSS>[-n]
CELL_NAME = re.compile(r"step(\d+)-seed(\d+)\.png")  # a validation render (training/validation.py names them)
SEED_NAME = re.compile(r"(?:step\d+-)?seed(\d+)\.png")  # a dreamed picture (dreaming/dreams.py image_name)
SHEETS = ("grid.png", "prompt-grid.png", "contact-sheet.png")  # what a job's overview is called, by preference


# --------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunSummary:
    """One training run as a picker lists it."""

    name: str
    folder: Path
    steps: tuple[int, ...]  # its complete checkpoints' steps, oldest first
    total: int | None  # max_train_steps as run.json records it (None: unreadable)
    preset: str | None
    mark: str | None  # the newest corridor mark (before / inside / past), None when unmeasured
    modified: float  # seconds since the epoch: the newest of run.json, the loss log, the corridor file

    @property
    def last(self) -> int | None:
        return self.steps[-1] if self.steps else None

    @property
    def state(self) -> str:
        """``finished`` (a checkpoint at max_train_steps), ``stopped`` (an earlier one), ``empty`` (none)."""
        if self.last is None:
            return "empty"
        return "finished" if self.total is not None and self.last >= self.total else "stopped"

    @property
    def label(self) -> str:
        """E.g. ``r1 · step 400 of 1200 · inside · 2026-11-30 22:18``."""
        at = "no checkpoint" if self.last is None else f"step {self.last} of {self.total if self.total else '?'}"
        mark = f" · {self.mark}" if self.mark else ""
        return f"{self.name} · {at}{mark} · {time.strftime('%Y-%m-%d %H:%M', time.localtime(self.modified))}"


def _record(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _settings(record: dict[str, Any]) -> dict[str, Any]:
    s = record.get("recipe", {}).get("settings") if isinstance(record.get("recipe"), dict) else None
    return s if isinstance(s, dict) else {}


def run_settings(run_dir: Path) -> dict[str, Any]:
    """The training settings the run last ran with: its newest checkpoint's recipe (a resume may raise
    max_train_steps, change checkpointing_steps or validation_seeds; run.json keeps the first session's),
    else run.json's; {} when neither is readable."""
    from .layout import CHECKPOINT_FILE

    found = checkpoints(run_dir)
    if found:
        try:
            marker = json.loads((found[-1][1] / CHECKPOINT_FILE).read_text(encoding="utf-8"))
            settings = _settings(marker) if isinstance(marker, dict) else {}
        except (OSError, ValueError):
            settings = {}
        if settings:
            return settings
    return _settings(_record(run_dir))


def _mtime(*paths: Path) -> float:
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def summarize_run(run_dir: Path) -> RunSummary:
    """A run folder (one holding ``run.json``) as :class:`RunSummary`; unreadable parts stay None."""
    from .training.corridor_report import CORRIDOR_FILE, read_rows

    run_dir = Path(run_dir)
    record = _record(run_dir)
    total = run_settings(run_dir).get("max_train_steps")
    rows = read_rows(run_dir)
    preset = record.get("recipe", {}).get("preset") if isinstance(record.get("recipe"), dict) else None
    return RunSummary(
        name=run_dir.name, folder=run_dir, steps=tuple(s for s, _ in checkpoints(run_dir)),
        total=total if isinstance(total, int) else None, preset=preset if isinstance(preset, str) else None,
        mark=rows[-1].get("mark") if rows else None,
        modified=_mtime(run_dir / "run.json", run_dir / "logs" / "loss.jsonl", run_dir / CORRIDOR_FILE))


def list_runs(models_dir: str | os.PathLike) -> list[RunSummary]:
    """Every training run in ``models_dir`` (a folder with a ``run.json``; a link leading out of
    ``models_dir`` is skipped), the most recently trained first. [] when the folder does not exist."""
    root = Path(models_dir)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.name.startswith(".") or not (d / "run.json").is_file():
            continue
        try:
            within(d, [root], "run")
        except PathError:
            continue
        found.append(summarize_run(d))
    return sorted(found, key=lambda r: (-r.modified, r.name))


@dataclass(frozen=True)
class Cell:
    """One validation render: checkpoint ``step`` (0 = the base model) dreamed with ``seed``."""

    path: Path
    step: int
    seed: int

    @property
    def caption(self) -> str:
        return f"step {self.step} · seed {self.seed}"


@dataclass(frozen=True)
class PromptGrid:
    """The grid of one validation prompt after the first: ``validation/prompt-N/grid.png`` (N = 2 for
    ``validation_prompts``' second line), checkpoints × seeds as the main grid."""

    path: Path
    number: int
    prompt: str | None  # its line of validation_prompts, None when the settings no longer name it

    @property
    def caption(self) -> str:
        return f"prompt {self.number}: {self.prompt}" if self.prompt else f"prompt {self.number}"


def prompt_grids(run_dir: str | os.PathLike, settings: dict[str, Any] | None = None) -> list[PromptGrid]:
    """The grids of a run's other validation prompts (``validation/prompt-N/grid.png``), by N; [] for a
    run with one prompt. ``settings``: the run's (run_settings), for each grid's prompt."""
    lines = [p.strip() for p in str((settings or {}).get("validation_prompts", "")).splitlines() if p.strip()]
    out = []
    folder = Path(run_dir) / "validation"
    for d in folder.glob("prompt-*") if folder.is_dir() else ():
        n = d.name.removeprefix("prompt-")
        if n.isdigit() and int(n) >= 2 and (d / "grid.png").is_file():
            out.append(PromptGrid(d / "grid.png", int(n), lines[int(n) - 1] if int(n) <= len(lines) else None))
    return sorted(out, key=lambda g: g.number)


@dataclass
class RunView:
    """Everything the Train tab shows of a run, read from its folder."""

    summary: RunSummary
    record: dict[str, Any]  # run.json
    losses: list[dict[str, Any]]  # logs/loss.jsonl: {"step", "loss", "lr"} per logged step, finite losses only
    grid: Path | None  # validation/grid.png
    cells: list[Cell]  # the grid's cells, row by row (steps), seeds in the grid's column order
    seeds: list[int]  # the grid's columns
    corridor: list[dict[str, Any]]  # corridor.json's rows (corridor_report.read_rows)
    validation: dict[str, Any] = field(default_factory=dict)  # width, height, steps of the renders (from a PNG)
    settings: dict[str, Any] = field(default_factory=dict)  # the training settings it last ran with (run_settings)
    prompt_grids: list[PromptGrid] = field(default_factory=list)  # validation/prompt-N/grid.png, N = 2, 3...

    @property
    def status(self) -> str:
        """One Markdown paragraph: where the run stands and what comes next."""
        from .training.corridor_report import summary as corridor_summary

        s, name = self.summary, self.summary.name
        logged = self.losses[-1]["step"] if self.losses else None
        if s.last is None:
            said = f"Run **{name}** has no checkpoint yet" + (f" (steps up to {logged} were logged)." if logged else ".")
        elif s.state == "finished":
            said = f"Run **{name}**: finished at step **{s.last}** of {s.total}, {len(s.steps)} checkpoint(s)."
        else:
            said = (f"Run **{name}**: stopped at step **{s.last}** of {s.total or '?'} (its newest checkpoint); "
                    "Resume continues from there.")
        if logged is not None and s.last is not None and logged > s.last:
            said += f" Steps {s.last + 1}-{logged} were trained after it but never saved (a crash, or still running)."
        meter = corridor_summary(s.folder)
        return said + (f" {meter}" if meter else "")

    def log_lines(self) -> list[str]:
        """What the log box shows for a reopened run: the recipe, photos, checkpoints, loss, corridor table."""
        from .training.corridor_report import table_lines

        rec, s = self.record, self.summary
        recipe = rec.get("recipe") if isinstance(rec.get("recipe"), dict) else {}
        base = rec.get("base", {}).get("label") if isinstance(rec.get("base"), dict) else None
        lines = [f"run {s.name} · preset {s.preset or '?'} · base {base or '?'}"]
        unlocked = recipe.get("unlocked") if isinstance(recipe.get("unlocked"), dict) else {}
        if unlocked:
            lines.append("unlocked: " + "; ".join(f"{k} {v.get('preset')!r} -> {v.get('value')!r}"
                                                  for k, v in unlocked.items() if isinstance(v, dict)))
        images = [i for i in rec.get("images", []) if isinstance(i, str)]
        lines += [f"photos ({len(images)}):", *(f"  {i}" for i in images)]
        lines.append("checkpoints: " + (", ".join(f"step {x}" for x in s.steps) or "none"))
        if self.losses:
            a, b = self.losses[0], self.losses[-1]
            lines.append(f"loss: step {a['step']} {a['loss']:.4f} -> step {b['step']} {b['loss']:.4f} "
                         f"({len(self.losses)} steps logged)")
        if self.corridor:
            lines += ["corridor meter:", *table_lines(self.corridor)]
        return [*lines, self.status.replace("**", "")]


def loss_history(run_dir: str | os.PathLike, upto: int | None = None) -> list[dict[str, Any]]:
    """A run's logged losses (``logs/loss.jsonl``), by step: {"step", "loss", "lr"}, finite losses only,
    up to step ``upto`` when given (a resumed run's history before this session). [] without a log."""
    run_dir = Path(run_dir)
    out = []
    try:
        text = (run_dir / "logs" / "loss.jsonl").read_text(encoding="utf-8")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line a crash cut short
            continue
        if (isinstance(row, dict) and isinstance(row.get("step"), int) and isinstance(row.get("loss"), int | float)
                and math.isfinite(row["loss"])):
            out.append({"step": row["step"], "loss": float(row["loss"]), "lr": row.get("lr")})
    by_step = {r["step"]: r for r in out if upto is None or r["step"] <= upto}  # a duplicate step: its newest row
    return [by_step[k] for k in sorted(by_step)]


def _grid_info(grid: Path) -> dict[str, Any] | None:
    try:
        with Image.open(grid) as im:
            info = json.loads(im.text["dreamy_grid"])
    except (OSError, KeyError, ValueError, AttributeError):
        return None
    return info if isinstance(info, dict) else None


def validation_cells(run_dir: Path) -> tuple[list[Cell], list[int]]:
    """(cells, seeds): the run's validation renders in its grid's order (rows = steps, columns = the
    grid's seeds); without a readable grid, every render on disk by step and seed."""
    found: dict[tuple[int, int], Path] = {}
    folder = Path(run_dir) / "validation"
    if folder.is_dir():
        for f in folder.iterdir():
            m = CELL_NAME.fullmatch(f.name)
            if m:
                found[(int(m.group(1)), int(m.group(2)))] = f
    info = _grid_info(folder / "grid.png") or {}
    seeds = [s for s in info.get("seeds", []) if isinstance(s, int)] or sorted({seed for _, seed in found})
    steps = sorted({step for step, _ in found})
    cells = [Cell(found[(st, se)], st, se) for st in steps for se in seeds if (st, se) in found]
    return cells, seeds


def _validation_settings(cells: list[Cell]) -> dict[str, Any]:
    from .png.metadata import read_recipe

    for c in cells[:1]:
        try:
            s = read_recipe(c.path).settings
        except DreamyError:
            return {}
        return {"width": s.width, "height": s.height, "steps": s.steps}
    return {}


def open_run(run_dir: str | os.PathLike, models_dir: str | os.PathLike) -> RunView:
    """Read run ``run_dir`` (a folder, or a run's name, inside ``models_dir``) as :class:`RunView`.

    Raises PathError when it lies outside ``models_dir`` (symbolic links followed), DreamyError when it
    is no run (no ``run.json``)."""
    root = Path(models_dir)
    path = Path(run_dir) if os.sep in str(run_dir) or Path(run_dir).is_absolute() else root / str(run_dir)
    folder = within(path, [root], "run")
    if not (folder / "run.json").is_file():
        raise DreamyError(f"'{Path(run_dir).name}' is not a training run (it has no run.json).")
    cells, seeds = validation_cells(folder)
    grid = folder / "validation" / "grid.png"
    from .training.corridor_report import read_rows

    settings = run_settings(folder)
    return RunView(summary=summarize_run(folder), record=_record(folder), losses=loss_history(folder),
                   grid=grid if grid.is_file() else None, cells=cells, seeds=seeds, corridor=read_rows(folder),
                   validation=_validation_settings(cells), settings=settings,
                   prompt_grids=prompt_grids(folder, settings))


def checkpoint_source(run_dir: str | os.PathLike, step: int) -> str:
    """What Dream loads for ``step`` of a run: its checkpoint folder, or for step 0 the base model
    run.json records. DreamyError when the run has no such checkpoint (pruned, or never saved)."""
    run = Path(run_dir)
    if step == 0:
        base = _record(run).get("base", {})
        source = base.get("source") if isinstance(base, dict) else None
        if isinstance(source, str) and source:
            return source
        raise DreamyError(f"Run '{run.name}' does not record its base model (run.json is missing or damaged).")
    for at, folder in checkpoints(run):
        if at == step:
            return str(folder.resolve())
    raise DreamyError(f"Run '{run.name}' has no checkpoint at step {step} (pruned, or never saved); pick another row.")


def training_set_of(record: dict[str, Any], sets_root: str | os.PathLike) -> str | None:
    """The training set under ``sets_root`` holding every photo run.json records (same names, same
    sha256), so a reopened run can be resumed on it; None when no set does."""
    photos = [p for p in record.get("photos", []) if isinstance(p, dict) and isinstance(p.get("name"), str)]
    root = Path(sets_root)
    if not photos or not root.is_dir():
        return None
    for s in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        try:
            if all(hashlib.sha256((s / Path(p["name"]).name).read_bytes()).hexdigest() == p.get("sha256")
                   for p in photos):
                return s.name
        except OSError:
            continue
    return None


# ------------------------------------------------------------------------------------------- dreams


@dataclass(frozen=True)
class DreamJob:
    """One past job folder: ``outputs/<kind>/<YYYYmmdd-HHMMSS>[-n]/``."""

    kind: str  # dream, prompt-sweep, checkpoint-grid, word
    folder: Path
    pictures: int

    @property
    def when(self) -> str:
        m = JOB_NAME.fullmatch(self.folder.name)
        if not m:
            return self.folder.name
        d, t = m.group(1), m.group(2)
        return f"{d[:4]}-{d[4:6]}-{d[6:]} {t[:2]}:{t[2:4]}:{t[4:]}" + (f" ({m.group(3)})" if m.group(3) else "")

    @property
    def label(self) -> str:
        """E.g. ``2026-11-30 22:18:17 · dream · 4 pictures``."""
        return f"{self.when} · {self.kind.replace('-', ' ')} · {self.pictures} picture{'s' if self.pictures != 1 else ''}"


def _pictures(folder: Path) -> list[Path]:
    """A job's dreamed PNGs (not its sheets): in the folder, or one subfolder deep (sweeps' rows)."""
    found = [f for f in folder.glob("*seed*.png") if SEED_NAME.fullmatch(f.name)]
    found += [f for f in folder.glob("*/*seed*.png") if SEED_NAME.fullmatch(f.name)]
    return sorted(found, key=lambda f: (f.parent.name if f.parent != folder else "", int(SEED_NAME.fullmatch(f.name)[1])))


def list_dreams(outputs_dir: str | os.PathLike, limit: int = 200) -> list[DreamJob]:
    """Past dreams, prompt sweeps, checkpoint grids and words under ``outputs_dir``, newest first (by the
    time in the folder's name), at most ``limit``; folders with no picture are left out."""
    root = Path(outputs_dir)
    jobs: list[tuple[tuple, Path, str]] = []
    for kind in DREAM_JOBS:
        parent = root / kind
        if not parent.is_dir():
            continue
        try:
            within(parent, [root], "job folder")
        except PathError:
            continue
        for d in parent.iterdir():
            m = JOB_NAME.fullmatch(d.name)
            if m and d.is_dir():  # two jobs of one second: the later-changed first
                jobs.append(((m.group(1), m.group(2), int(m.group(3) or 0), d.stat().st_mtime), d, kind))
    out = []
    for _, d, kind in sorted(jobs, key=lambda j: j[0], reverse=True):
        n = len(_pictures(d))
        if n:
            out.append(DreamJob(kind, d, n))
        if len(out) >= limit:
            break
    return out


@dataclass
class DreamView:
    """A past job as Dream's gallery shows it."""

    job: DreamJob
    pictures: list[tuple[Path, str]]  # (PNG, caption) in the order the job made them
    sheet: Path | None  # its grid or contact sheet
    recipe: Any  # the first picture's Recipe (None when its PNG carries none)

    @property
    def status(self) -> str:
        """Markdown: what the job was and its recipe."""
        word = _word_of(self.recipe)
        what = f"word **{word}**" if word else self.job.kind.replace('-', ' ')
        head = f"Reopened the {what} of {self.job.when}: {len(self.pictures)} picture(s)."
        return head + ("\n\n" + self.recipe.summary(markdown=True) if self.recipe is not None else "")


def _row_label(folder: Path, job: Path, prompts: list[str]) -> str:
    """A picture's row: a prompt sweep's variant number, a checkpoint grid's step (``00-base``: step 0)."""
    if folder == job:
        return ""
    name = folder.name
    if prompts and name.isdigit():
        return f"{int(name) + 1}"
    rest = name.split("-", 1)[1] if re.match(r"\d\d-", name) else name
    step = step_of(rest)
    return "step 0 (base)" if rest == "base" else (f"step {step}" if step is not None else rest)


def open_dreams(folder: str | os.PathLike, outputs_dir: str | os.PathLike) -> DreamView:
    """Read the job folder ``folder`` (inside ``outputs_dir``) as :class:`DreamView`.

    Raises PathError outside ``outputs_dir``, DreamyError when it holds no dreamed picture."""
    from .png.metadata import read_recipe

    root = Path(outputs_dir)
    path = within(folder, [root], "past dream")
    kind = path.parent.name if path.parent.name in DREAM_JOBS else "dream"
    files = _pictures(path)
    if not files:
        raise DreamyError(f"'{path.name}' holds no dreamed picture (deleted, or a job stopped before its first).")
    try:
        prompts = json.loads((path / "prompts.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        prompts = []
    prompts = prompts if isinstance(prompts, list) else []
    try:
        recipe = read_recipe(files[0])
    except DreamyError:
        recipe = None
    word = _word_of(recipe)  # a Word box job: its pictures are captioned with the word, as the box shows them
    pictures = []
    for f in files:
        row = word or _row_label(f.parent, path, prompts)
        seed = int(SEED_NAME.fullmatch(f.name)[1])
        pictures.append((f, f"{row} · seed {seed}" if row else f"seed {seed}"))
    sheet = next((path / n for n in SHEETS if (path / n).is_file()), None)
    return DreamView(DreamJob(kind, path, len(files)), pictures, sheet, recipe)


def _word_of(recipe: Any) -> str | None:
    """The word a Word box picture was dreamed from (its recipe's ``runtime.word.word``), else None."""
    runtime = getattr(recipe, "runtime", None)
    word = runtime.get("word") if isinstance(runtime, dict) else None
    text = word.get("word") if isinstance(word, dict) else None
    return " ".join(text.split())[:80] if isinstance(text, str) and text.strip() else None

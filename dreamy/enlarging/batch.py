"""Many keepers through SUPIR with the models loaded once: ``enlarge_many()`` / ``enlarge_iter()``.

A batch is a list of pictures and folders (a folder gives its pictures, sorted, not searched further;
a file counts as a picture by its first bytes, whatever its name: images.image_files). Each picture
goes through :func:`enlarge` with the same recipe and seed, one PNG each, and a batch can be run again:
a picture whose enlargement is already in the output folder is skipped. "Already" is read from the
PNGs themselves, not from their names: the recipe written into a PNG must name the same input
(its sha256), the same seed and settings, and the same SUPIR and SDXL sources. A bad picture costs
that picture only (one sentence), so one unreadable file never loses the night's other keepers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import Cancelled, DreamyError, RecallError, SourceError
from ..events import CancelToken, Progress, ProgressCallback
from ..images import image_files
from ..recipes.presets import Preset, load_preset
from ..recipes.recipe import Recipe, resolve
from ..recipes.settings import EnlargeSettings
from .models import EnlargeModels, cached_enlarge_models
from .pipeline import EnlargeResult, _read_input, enlarge, output_name

log = logging.getLogger(__name__)

Picture = str | os.PathLike | Image.Image


@dataclass
class PictureOutcome:
    """What became of one picture of a batch."""

    source: str  # the picture as given (a path), or "picture <n>" for a PIL image
    index: int  # 1-based place in the batch
    total: int  # pictures in the batch
    status: str  # "enlarged" | "skipped" (an earlier PNG has the same recipe) | "failed"
    path: Path | None = None  # the PNG written ("enlarged") or found ("skipped")
    result: EnlargeResult | None = None  # "enlarged" only
    error: str | None = None  # "failed" only: one sentence
    seconds: float = 0.0  # wall time spent on this picture (model loading included for the first)
    notes: list[str] = field(default_factory=list)  # what was done to the input (EXIF rotation, alpha ...)


def collect_pictures(sources: Picture | Iterable[Picture]) -> tuple[list[Picture], list[str]]:
    """Pictures and folders -> (the pictures, in order; notes on what was left out).

    A folder gives its picture files, sorted by name and not searched further (images.image_files:
    a file is a picture by its suffix or its first bytes; hidden files, captions and other files are
    noted); a folder's PNGs that are Enlarge's own results (their recipe says ``enlarge``) are left
    out too, so ``enlarge keepers/ --out keepers/`` never enlarges its own output again. Anything
    else (a file, a path that does not exist, a PIL image) is kept as given: if it is not a usable
    picture, its turn in the batch says so in one sentence.
    """
    if isinstance(sources, str | os.PathLike | Image.Image):
        sources = [sources]
    pictures: list[Picture] = []
    notes: list[str] = []
    for source in sources:
        if isinstance(source, Image.Image) or not Path(source).is_dir():
            pictures.append(source)
            continue
        files, skipped = image_files(source)
        notes += [f"{Path(source).name}/{s}" for s in skipped]
        for f in files:
            if _enlarge_output(f):
                notes.append(f"{Path(source).name}/{f.name}: an enlargement already (left out)")
            else:
                pictures.append(f)
        if not files:
            notes.append(f"{Path(source).name}/: no pictures in it")
    return pictures, notes


def _enlarge_output(path: Path) -> bool:
    if path.suffix.lower() != ".png":
        return False
    try:
        return _recipe_of(path).job == "enlarge"
    except RecallError:
        return False


def _recipe_of(path: Path) -> Recipe:
    from ..png.metadata import read_recipe

    try:
        return read_recipe(path)
    except (KeyError, TypeError, ValueError) as e:  # a recipe of another format or version
        raise RecallError(f"'{path.name}' has a recipe this version cannot read ({e!s:.60}).") from None


@dataclass(frozen=True)
class _Wanted:
    """What an earlier PNG's recipe must say for its picture to count as enlarged already."""

    settings: dict[str, Any]  # EnlargeSettings as asked (before the demo stood in)
    seed: int
    supir: str  # the SUPIR source that runs (sources.Located.spec)
    base: str  # the SDXL base source that runs
    tiled: bool | None  # None: whichever the device chose

    def matches(self, recipe: Recipe, sha256: str) -> bool:
        runtime = recipe.runtime or {}
        asked = dataclasses.asdict(recipe.settings) | dict(runtime.get("asked") or {})
        base = (runtime.get("base_model") or {}).get("source")
        return (recipe.job == "enlarge" and recipe.seed == self.seed
                and (runtime.get("input") or {}).get("sha256") == sha256
                and asked == self.settings and recipe.model is not None and recipe.model.source == self.supir
                and base == self.base and (self.tiled is None or runtime.get("tiled") == self.tiled))


def _sources_that_run(supir: str | None, base: str | None, s: EnlargeSettings,
                      models: EnlargeModels | None) -> tuple[str, str]:
    """The (SUPIR, base) sources a run would use, without loading them (sources.default_sources)."""
    if models is not None:
        return models.supir_ref.source, models.base_ref.source
    from .sources import default_sources

    picked_supir, picked_base, _ = default_sources(supir, base, s.supir_model, s.sdxl_base)
    return str(picked_supir).strip(), str(picked_base).strip()


class _Done:
    """The output folder's enlargements by input hash: read once, added to as the batch writes."""

    def __init__(self, folder: Path | None) -> None:
        self.by_input: dict[str, list[tuple[Path, Recipe]]] = {}
        for png in sorted(folder.glob("*.png")) if folder is not None and folder.is_dir() else []:
            try:
                recipe = _recipe_of(png)
            except RecallError:
                continue  # not ours, or not an enlargement: never matches
            self.add(png, recipe)

    def add(self, path: Path, recipe: Recipe) -> None:
        sha = ((recipe.runtime or {}).get("input") or {}).get("sha256")
        if recipe.job == "enlarge" and isinstance(sha, str):
            self.by_input.setdefault(sha, []).append((path, recipe))

    def find(self, wanted: _Wanted, sha256: str) -> Path | None:
        return next((p for p, r in self.by_input.get(sha256, []) if p.is_file() and wanted.matches(r, sha256)), None)


def _input_sha256(picture: Picture) -> str | None:
    """The hash the recipe records for this input (pipeline._read_input: the file's bytes, or the
    pixels of a PIL image); None when the file cannot be read (its turn will say why)."""
    try:
        if isinstance(picture, Image.Image):
            return _read_input(picture)[1]["sha256"]
        return hashlib.sha256(Path(picture).read_bytes()).hexdigest()
    except (OSError, DreamyError):
        return None


def _free_name(folder: Path, name: str, wanted: _Wanted, sha256: str | None, done: _Done) -> str:
    """``name``, or ``<stem>-2.png``, ``-3`` ... when a PNG of another picture or recipe holds it
    (two keepers called ``a.png`` from two folders): a batch never overwrites another result."""
    stem, n, candidate = Path(name).stem, 1, name
    while (folder / candidate).exists():
        path = folder / candidate
        same = sha256 is not None and any(p == path for p, r in done.by_input.get(sha256, [])
                                          if wanted.matches(r, sha256))
        if same:  # the same enlargement (skip_done=False): replaced by the new one
            return candidate
        n += 1
        candidate = f"{stem}-{n}.png"
    return candidate


def enlarge_iter(
    pictures: Picture | Iterable[Picture],
    preset: str | Preset = "biased-dreams",
    *,
    overrides: dict[str, Any] | None = None,
    unlock: bool | Iterable[str] = (),
    out_dir: str | os.PathLike | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    supir: str | None = None,
    base: str | None = None,
    device: str | None = None,
    seed: int = 0,
    tiled: bool | None = None,
    models: EnlargeModels | None = None,
    skip_done: bool = True,
) -> Iterator[PictureOutcome]:
    """Enlarge many pictures with one recipe, loading the models once; yields one outcome per picture.

    ``pictures``: files, folders (their pictures, sorted; :func:`collect_pictures`) and PIL images,
    in order. Every picture goes through :func:`enlarge` with the same preset, ``overrides``,
    ``unlock``, ``seed`` and ``tiled`` (see there for input rules, output sizes, dtypes and the
    recipe), into ``out_dir`` (None: one new run folder for the whole batch). The models (SDXL base
    and SUPIR, chosen by ``supir`` / ``base`` / ``device`` as in enlarge(), or ``models``) are
    loaded once, when the first picture that needs them comes up, and kept loaded
    (models.cached_enlarge_models).

    ``skip_done``: a picture whose enlargement is already in ``out_dir`` is not redone: a PNG there
    whose recipe records this input's sha256 (the file's bytes; a PIL image's pixels), this seed,
    these settings (as asked, before the demo stood in), the same SUPIR and SDXL sources and, if
    ``tiled`` was given, the same tiling. File names play no part; a new result never overwrites
    another picture's PNG (``<name>-2.png`` instead). Pictures repeated in a batch are enlarged once.

    Yields :class:`PictureOutcome` per picture, in order: ``enlarged`` (with the EnlargeResult),
    ``skipped`` (the PNG found) or ``failed`` (``error``: one sentence; the batch goes on).
    ``on_progress`` gets ``Progress("enlarge", step, steps, item=<pictures before>, items=<pictures>,
    message="picture 3 of 8: name · step 5 of 30")``.

    Raises before the first picture: PresetError / LockedFieldError (preset, overrides) and
    DreamyError (seed); when the models are needed: SourceError (missing, corrupt or mismatched
    models: every picture would fail). Raises Cancelled when ``cancel`` is set: the pictures
    already yielded are kept, the one in progress writes nothing.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise DreamyError(f"The seed must be a whole number from 0 to {2**32 - 1}, got {seed!r}.")
    preset = load_preset(preset) if isinstance(preset, str) else preset
    s: EnlargeSettings = resolve(preset, "enlarge", overrides, unlock).settings  # locks refused before any work
    items, notes = collect_pictures(pictures)
    for note in notes:
        log.info("Left out %s", note)
    folder = Path(out_dir) if out_dir is not None else None
    done = _Done(folder)
    wanted: _Wanted | None = None
    total = len(items)

    for index, picture in enumerate(items, start=1):
        name = _label(picture, index)

        def progress(e: Progress, index: int = index, name: str = name) -> None:
            if on_progress is not None:
                on_progress(Progress("enlarge", e.step, e.steps, item=index - 1, items=total,
                                     message=f"picture {index} of {total}: {name} · {e.message}"))

        if cancel is not None:
            cancel.check()
        started = time.perf_counter()
        sha = _input_sha256(picture)
        if wanted is None:  # the sources that will run: known without loading anything
            supir_src, base_src = _sources_that_run(supir, base, s, models)
            wanted = _Wanted(dataclasses.asdict(s), seed, supir_src, base_src, tiled)
        found = done.find(wanted, sha) if skip_done and sha is not None else None
        if found is not None:
            progress(Progress("enlarge", s.steps, s.steps, message=f"enlarged already: {found.name}"))
            yield PictureOutcome(name, index, total, "skipped", path=found, seconds=time.perf_counter() - started)
            continue
        try:
            if models is None:
                _read_input(picture)  # a bad first picture fails before gigabytes of weights load
                progress(Progress("enlarge", 0, s.steps, message="loading models"))
                models = cached_enlarge_models(supir, base, supir_model=s.supir_model, sdxl_base=s.sdxl_base,
                                               device=device, precision=s.precision, on_progress=progress)
                if models.is_demo:
                    log.warning("Enlarging with the %s.", models.supir_ref.label)
                # what loaded decides from now on (the demo may have stood in for an unreachable hub)
                wanted = dataclasses.replace(wanted, supir=models.supir_ref.source, base=models.base_ref.source)
            if folder is None:
                from ..layout import new_run_dir

                folder = new_run_dir("enlarge")  # one folder for the whole batch
            filename = _free_name(folder, output_name(_input_name(picture), s.upscale, seed), wanted, sha, done)
            result = enlarge(picture, preset, overrides=overrides, unlock=unlock, out_dir=folder,
                             on_progress=progress, cancel=cancel, seed=seed, tiled=tiled, models=models,
                             filename=filename)
        except Cancelled:
            raise
        except DreamyError as e:
            if isinstance(e, SourceError):
                raise  # the models, not this picture: every other picture would fail the same way
            log.info("%s failed: %s", name, e)
            yield PictureOutcome(name, index, total, "failed", error=_one_sentence(name, str(e)),
                                 seconds=time.perf_counter() - started)
            continue
        done.add(result.path, result.recipe)
        yield PictureOutcome(name, index, total, "enlarged", path=result.path, result=result,
                             seconds=time.perf_counter() - started, notes=list(result.notes))


def enlarge_many(pictures: Picture | Iterable[Picture], preset: str | Preset = "biased-dreams",
                 **kwargs: Any) -> list[PictureOutcome]:
    """:func:`enlarge_iter` run to the end: every picture's :class:`PictureOutcome`, in order.

    Takes the same arguments and raises the same errors; a bad picture is a ``failed`` outcome, not an
    exception. Cancelled still raises (the PNGs written before it are kept on disk).
    """
    return list(enlarge_iter(pictures, preset, **kwargs))


def _input_name(picture: Picture) -> str | None:
    return None if isinstance(picture, Image.Image) else Path(picture).name


def _label(picture: Picture, index: int) -> str:
    return f"picture {index}" if isinstance(picture, Image.Image) else Path(picture).name


def _one_sentence(name: str, message: str) -> str:
    """The error as one sentence that names the picture (image errors already start with its name)."""
    message = " ".join(message.split())
    return message if message.startswith(name) else f"{name}: {message}"

"""Training sets: folders of photos to train on, filled by uploads or by picking good dreams.

The curation loop is "dream candidates, keep the good ones, train on them": ``add_to_training_set``
copies chosen files into ``<root>/<set>/`` under safe names (an uploaded name can never escape the
folder; a file Train would refuse is not copied), with ``captions=True`` each beside its caption file
(``<stem>.txt``: the prompt that made it, the trigger word applied, as kohya and A1111 read captions and
``--captions files`` trains on them), ``remove_from_training_set`` takes photos out again,
``inspect_training_set`` says, per file, what Train will do with it or why it cannot
(``training_set_report`` sums a set up by name), and ``train_on_set`` trains on one.
"""

from __future__ import annotations

import filecmp
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text, file_mode
from ..errors import TrainDataError
from ..images import ImageError, image_files, is_image_name, load_image, sniff
from ..paths import check_name, check_tree, safe_filename
from .events import TrainEvent


@dataclass
class ImageCheck:
    """One file of a training set: usable or not, and what is worth knowing about it."""

    name: str
    path: Path
    usable: bool
    size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)  # converted, rotated, upscaled, refused because ...

    @property
    def line(self) -> str:
        size = f" {self.size[0]}x{self.size[1]}" if self.size else ""
        mark = "" if self.usable else "refused: "
        return f"{self.name}{size}" + (f" — {mark}{'; '.join(self.notes)}" if self.notes else "")


@dataclass
class SetReport:
    """A training set as it stands: what the studio shows after a look at it or an upload."""

    name: str
    folder: Path
    exists: bool  # False: nothing has been added yet (no folder)
    files: int  # files in the folder, hidden ones aside (captions and refused files included)
    checks: list[ImageCheck]  # with a resolution: every file, flagged (inspect_training_set); else empty
    sets: list[str]  # every training set under the root, by name (this one included once it exists)
    added: list[Path] = field(default_factory=list)  # add_to_training_set: the given files, now in the set
    notes: list[str] = field(default_factory=list)  # add_to_training_set: given files it skipped, and why

    @property
    def usable(self) -> int:
        return sum(c.usable for c in self.checks)


def list_training_sets(root: Path) -> list[str]:
    """The sets under ``root`` by name (a link that leads out of ``root`` is not one of them)."""
    if not root.is_dir():
        return []
    real = root.resolve()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (real == p.resolve() or real in p.resolve().parents))


def training_set_dir(root: Path, name: str) -> Path:
    """``root/name``, checked: PathError for a name that is not one, or when the set's folder or any
    link inside it leads out of ``root`` (a set is read and written as a whole)."""
    folder = Path(root) / check_name(name, "training set name")
    check_tree(folder, [root], "training set")
    return folder


def training_set_report(root: Path, name: str, resolution: int | None = None) -> SetReport:
    """The set ``name`` under ``root``; with ``resolution`` (Train's, in px) every file is checked too."""
    folder = training_set_dir(root, name)
    exists = folder.is_dir()
    files = sum(not f.name.startswith(".") for f in folder.iterdir()) if exists else 0
    checks = inspect_training_set(folder, resolution) if exists and resolution else []
    return SetReport(folder.name, folder, exists, files, checks, list_training_sets(Path(root)))


def picture_caption(path: str | os.PathLike, trigger: str | None = None) -> tuple[str | None, str]:
    """(caption, why none): the prompt that made a picture, read from its recipe (a Dreamy PNG) or its
    infotext (A1111/Forge, Fooocus, ComfyUI), with the trigger word applied as training applies it
    (:func:`dreamy.training.data.apply_trigger`: kept where the prompt has it, put at ``[trigger]``,
    else prepended as ``trigger, prompt``); (None, the reason) when the file holds no prompt.

    ``trigger``: None takes the trigger of the preset the picture names (its ``[word] trigger``, else
    its ``[train] trigger_word``; none when that preset is not installed here); "" applies none."""
    from ..errors import DreamyError
    from ..png.info import describe_png
    from .data import apply_trigger

    try:
        info = describe_png(path)
    except DreamyError:
        return None, "not a readable picture"
    prompt = info.values.get("prompt") if info.values else None
    if not isinstance(prompt, str) or not prompt.strip():
        return None, "no prompt in it"
    if trigger is None:
        trigger = _preset_trigger(info.preset) if info.kind == "dreamy" else ""
    return apply_trigger(prompt, trigger.strip()), ""


def _preset_trigger(name: str | None) -> str:
    from ..errors import PresetError
    from ..recipes.presets import load_named_preset

    try:
        preset = load_named_preset(str(name))  # a name from an untrusted file: never a path
    except PresetError:
        return ""
    return preset.word.trigger or preset.train.trigger_word


def add_to_training_set(
    files: Sequence[str | os.PathLike], name: str, root: Path, *, resolution: int | None = None,
    captions: bool = False, trigger: str | None = None,
) -> SetReport:
    """Copy ``files`` into the set ``name`` (created if new; nothing kept, nothing made); returns the
    set's report (:func:`training_set_report`, checked at ``resolution`` if given) with ``added``, the
    files now in the set, and ``notes`` on the skipped ones: not images, and images Train would refuse
    (:func:`dreamy.images.load_image`: corrupt, under 64 px, too many pixels), which are not copied.

    A file already in the set with the same bytes is not copied twice; a different file with the
    same name gets a numbered name. Copies are written to a temporary name and renamed.

    ``captions``: write each picture's caption file beside it, ``<its name in the set>.txt`` (UTF-8,
    one line: :func:`picture_caption` with ``trigger``), which Train reads with ``captions = "files"``
    (CLI ``--captions files``). A caption file already there is kept (it may have been edited by hand);
    a picture with no prompt gets none. Both are said in ``notes``.
    """
    folder = training_set_dir(root, name)
    added, notes = [], []
    for f in files:
        src = Path(f)
        target_name = safe_filename(src.name)
        if not src.exists():  # a mistyped path is said as such, not as "not an image"
            notes.append(f"{target_name}: no such file, skipped")
            continue
        if not is_image_name(target_name) or not src.is_file():
            kind = sniff(src) if src.is_file() else None
            notes.append(f"{target_name}: a {kind} picture under another suffix; rename it to .{kind.lower()}, skipped"
                         if kind else f"{target_name}: not an image file, skipped")
            continue
        # What Train would refuse (corrupt, too small, a decompression bomb) is not copied in: a refused
        # file kept in the set would be flagged on every look at the set and skipped by every run.
        try:
            load_image(src).image.close()
        except ImageError as e:
            notes.append(f"{target_name}: {str(e).removeprefix(f'{src.name}: ').rstrip('.')}, skipped")
            continue
        folder.mkdir(parents=True, exist_ok=True)  # only once a file is kept: refusals make no empty set
        target = folder / target_name
        stem, suffix = target.stem, target.suffix
        n = 1
        while target.exists() and not filecmp.cmp(target, src, shallow=False):
            target = folder / f"{stem}-{n}{suffix}"
            n += 1
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
            os.close(fd)
            os.chmod(tmp, file_mode())  # mkstemp makes 0600; a set's photos are ordinary files
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        added.append(target)
        if captions:
            notes += _write_caption(src, target, trigger)
    report = training_set_report(root, name, resolution)
    report.added, report.notes = added, notes
    return report


def _write_caption(src: Path, target: Path, trigger: str | None) -> list[str]:
    """``target``'s caption file from ``src``'s prompt; the notes to give (none when it was written)."""
    txt = target.with_suffix(".txt")
    if txt.exists():
        return [f"{txt.name}: already there, kept"]
    caption, why = picture_caption(src, trigger)
    if caption is None:
        return [f"{target.name}: {why}, so no caption file (Train uses the instance prompt for it)"]
    atomic_write_text(txt, caption + "\n")
    return []


def remove_from_training_set(
    root: Path, name: str, files: Sequence[str], *, resolution: int | None = None
) -> SetReport:
    """Delete ``files`` (names of files in the set ``name``, as its report lists them) from the set;
    returns the set's report (:func:`training_set_report`). A photo's caption (``<stem>.txt``) goes
    with it unless another image of the set shares the stem.

    Every name is checked before anything is deleted: a name that is not a file directly in the set
    (a path, a folder, a file not there) refuses the whole call as TrainDataError.
    """
    folder = training_set_dir(root, name)
    targets = []
    for f in dict.fromkeys(files):  # each name once, in the order given
        entry = str(f)
        target = folder / entry
        if not entry or entry != Path(entry).name or not target.is_file():
            raise TrainDataError(f"Training set '{folder.name}' has no photo named '{entry[:60]}'.")
        targets.append(target)
    for target in targets:
        target.unlink()
        caption = target.with_suffix(".txt")
        others = [p for p in folder.glob(f"{glob.escape(target.stem)}.*") if p != caption and is_image_name(p)]
        if target.suffix.lower() != ".txt" and caption.is_file() and not others:
            caption.unlink()
    return training_set_report(root, name, resolution)


def train_on_set(root: Path, set_name: str, **train_kwargs: Any) -> Iterator[TrainEvent]:
    """:func:`dreamy.training.loop.train` on the training set ``set_name`` under ``root`` (the
    studio's Train); ``train_kwargs`` are train's (its ``name`` is the run's).

    A set with no folder yet is refused as TrainDataError ("has no photos yet") where train looks
    for its photos: after train's own checks (recipe and locks, run), before any model is loaded.
    """
    from .loop import train

    folder = training_set_dir(root, set_name)
    try:
        yield from train(folder, **train_kwargs)
    except ImageError:
        if folder.is_dir():
            raise
        raise TrainDataError(f"Training set '{folder.name}' has no photos yet: upload some first.") from None


def inspect_training_set(folder: Path, resolution: int) -> list[ImageCheck]:
    """Every file of a set with its problems flagged: refused (corrupt, too small, not an image),
    converted (CMYK, 16-bit, alpha, EXIF-rotated, animated) or smaller than the training resolution."""
    files, skipped = image_files(folder)
    checks = []
    for f in files:
        try:
            li = load_image(f)
        except ImageError as e:
            reason = str(e).removeprefix(f"{f.name}: ")
            checks.append(ImageCheck(f.name, f, False, None, [reason]))
            continue
        notes = list(li.notes)
        if min(li.image.size) < resolution:
            notes.append(f"smaller than {resolution} px: will be upscaled")
        li.image.close()
        checks.append(ImageCheck(f.name, f, True, li.image.size, notes))
    for s in skipped:
        entry, _, why = s.partition(": ")
        checks.append(ImageCheck(entry, folder / entry.rstrip("/"), False, None, [why]))
    return checks

"""Training sets: folders of photos to train on, filled by uploads or by picking good dreams.

The curation loop is "dream candidates, keep the good ones, train on them": ``add_to_training_set``
copies chosen files into ``<root>/<set>/`` under safe names (an uploaded name can never escape the
folder), and ``inspect_training_set`` says, per file, what Train will do with it or why it cannot.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..images import ImageError, image_files, is_image_name, load_image
from ..paths import check_name, safe_filename


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


def list_training_sets(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def training_set_dir(root: Path, name: str) -> Path:
    return Path(root) / check_name(name, "training set name")


def add_to_training_set(files: Sequence[str | os.PathLike], name: str, root: Path) -> tuple[list[Path], list[str]]:
    """Copy ``files`` into the set ``name`` (created if new): (files now in the set, notes on skipped ones).

    A file already in the set with the same bytes is not copied twice; a different file with the
    same name gets a numbered name. Copies are written to a temporary name and renamed.
    """
    folder = training_set_dir(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    added, notes = [], []
    for f in files:
        src = Path(f)
        target_name = safe_filename(src.name)
        if not is_image_name(target_name) or not src.is_file():
            notes.append(f"{target_name}: not an image file, skipped")
            continue
        target = folder / target_name
        stem, suffix = target.stem, target.suffix
        n = 1
        while target.exists() and not filecmp.cmp(target, src, shallow=False):
            target = folder / f"{stem}-{n}{suffix}"
            n += 1
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        added.append(target)
    return added, notes


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

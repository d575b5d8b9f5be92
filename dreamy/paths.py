"""Where the studio may read and write: its roots, checked user paths and names.

Anything a browser or an API call names (a model folder, a training set, a recalled recipe's model)
is untrusted. It is resolved with symlinks followed and must land inside one of the allowed roots,
so ``../../etc/passwd``, an absolute path elsewhere and a symlink pointing out are all refused.
A folder the core reads or writes as a whole (a run, a checkpoint, a training set) is also checked
inside: a symbolic link anywhere in it that leads out of its roots is refused (:func:`check_tree`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import PathError

# Run and training-set names: a single folder name, never a path.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_UNSAFE = re.compile(r"[^\w.-]+")
# A folder checked entry by entry holds at most this many entries (a run with its class images,
# validation renders and checkpoints has a few thousand); more is refused rather than walked for minutes.
MAX_ENTRIES = 200_000


def within(path: str | os.PathLike, roots: Iterable[str | os.PathLike], what: str = "path") -> Path:
    """``path`` resolved (symlinks followed, component by component); PathError unless it lies inside
    one of ``roots`` (each resolved too, so a root may itself be a link, e.g. models/ on another disk)."""
    text = os.fspath(path)
    if not text.strip() or "\x00" in text or len(text) > 4096:
        raise PathError(f"The {what} is empty or malformed.")
    roots = [Path(r).expanduser() for r in roots]
    resolved = Path(text).expanduser().resolve()
    if _inside(resolved, roots):
        return resolved
    shown = text if len(text) <= 80 else text[:77] + "..."
    lexical = Path(os.path.abspath(Path(text).expanduser()))
    for r in roots:  # written inside a root, but a link on the way leads out
        if lexical == Path(os.path.abspath(r)) or Path(os.path.abspath(r)) in lexical.parents:
            raise PathError(f"The {what} '{shown}' leads outside {r} through a symbolic link; Dreamy reads "
                            "and writes only inside its own folders.")
    raise PathError(f"The {what} '{shown}' is outside the folders the studio may use "
                    f"({', '.join(str(r) for r in roots)}).")


def _inside(resolved: Path, roots: Iterable[Path]) -> bool:
    for root in roots:
        r = root.resolve()
        if resolved == r or r in resolved.parents:
            return True
    return False


def check_tree(folder: str | os.PathLike, roots: Iterable[str | os.PathLike], what: str = "folder") -> Path:
    """``folder`` resolved, after checking it and everything in it: PathError if it or any symbolic
    link inside it (files, folders, links to links) leads outside ``roots``.

    Links that stay inside are followed and their targets checked too (each real folder once, so a
    link loop ends). A folder that does not exist yet passes (it is checked where it would be made).
    """
    roots = [Path(r).expanduser() for r in roots]
    top = within(folder, roots, what)
    seen: set[Path] = set()
    todo = [(top, Path(folder))]
    count = 0
    while todo:
        real, shown = todo.pop()
        if real in seen or not real.is_dir():
            continue
        seen.add(real)
        with os.scandir(real) as entries:
            for entry in entries:
                count += 1
                if count > MAX_ENTRIES:
                    raise PathError(f"The {what} '{Path(folder).name}' holds more than {MAX_ENTRIES} files; "
                                    "Dreamy will not open it.")
                if entry.is_symlink():
                    target = Path(entry.path).resolve()
                    if not _inside(target, roots):
                        raise PathError(f"'{shown / entry.name}' is a symbolic link that leads outside "
                                        f"{', '.join(str(r) for r in roots)}; Dreamy reads and writes only "
                                        "inside its own folders, so remove the link or move what it points to.")
                    todo.append((target, shown / entry.name))
                elif entry.is_dir(follow_symlinks=False):
                    todo.append((Path(entry.path), shown / entry.name))
    return top


def check_name(name: str, what: str = "name") -> str:
    """A run or training-set name: letters, digits, '.', '_', '-'; never a path."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name.strip()):
        raise PathError(f"'{str(name)[:60]}' is not a usable {what}: use letters, digits, '.', '_' or '-' "
                        "(up to 100, not starting with a dot).")
    return name.strip()


def safe_filename(name: str, fallback: str = "image") -> str:
    """The last part of an uploaded file's name, reduced to safe characters (never '..', never hidden)."""
    base = re.split(r"[\\/]", str(name))[-1]
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    stem = _UNSAFE.sub("_", stem).strip("._")[:80] or fallback
    suffix = _UNSAFE.sub("", suffix)[:10].lower()
    return f"{stem}.{suffix}" if suffix else stem


def check_model_source(
    spec: str,
    roots: Sequence[str | os.PathLike],
    allowed: Iterable[str] = (),
    allow_hub: bool = True,
) -> str:
    """A model source the studio may load: ``tiny``/``tiny-sdxl``, one of ``allowed``, a hub id, or a path in ``roots``.

    A string that exists as a path is always treated as a path (and checked, with every link inside
    a folder: :func:`check_tree`), never as a hub id. Raises PathError with one sentence.
    """
    spec = str(spec or "").strip()
    if not spec:
        raise PathError("Choose a model.")
    if spec in ("tiny", "tiny-sdxl") or spec in set(allowed):
        return spec
    if "\x00" in spec or len(spec) > 4096:
        raise PathError("The model source is malformed.")
    local = Path(spec).expanduser()
    if local.exists() or local.is_symlink() or not HUB_ID.match(spec):
        # a model or checkpoint folder is read file by file: a link inside it must not lead out either
        return str(check_tree(spec, roots, "model path"))
    if not allow_hub:
        raise PathError(f"'{spec}': downloading models from the Hugging Face Hub is turned off on shared links; "
                        "choose a model from the list.")
    return spec

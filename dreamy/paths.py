"""Where the studio may read and write: its roots, checked user paths, and one fresh folder per job.

Anything a browser or an API call names (a model folder, a training set, a recalled recipe's model)
is untrusted. It is resolved with symlinks followed and must land inside one of the allowed roots,
so ``../../etc/passwd``, an absolute path elsewhere and a symlink pointing out are all refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import PathError
from .layout import HUB_ID, RUN_NAME

_UNSAFE = re.compile(r"[^\w.-]+")


def within(path: str | os.PathLike, roots: Iterable[str | os.PathLike], what: str = "path") -> Path:
    """``path`` resolved (symlinks followed); PathError unless it lies inside one of ``roots``."""
    text = os.fspath(path)
    if not text.strip() or "\x00" in text or len(text) > 4096:
        raise PathError(f"The {what} is empty or malformed.")
    resolved = Path(text).expanduser().resolve()
    for root in roots:
        r = Path(root).expanduser().resolve()
        if resolved == r or r in resolved.parents:
            return resolved
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise PathError(f"The {what} '{shown}' is outside the folders the studio may use "
                    f"({', '.join(str(Path(r)) for r in roots)}).")


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
    """A model source the studio may load: ``tiny``, one of ``allowed``, a hub id, or a path in ``roots``.

    A string that exists as a path is always treated as a path (and checked), never as a hub id.
    """
    spec = str(spec or "").strip()
    if not spec:
        raise PathError("Choose a model.")
    if spec == "tiny" or spec in set(allowed):
        return spec
    if "\x00" in spec or len(spec) > 4096:
        raise PathError("The model source is malformed.")
    local = Path(spec).expanduser()
    if local.exists() or local.is_symlink() or not HUB_ID.match(spec):
        return str(within(spec, roots, "model path"))
    if not allow_hub:
        raise PathError(f"'{spec}': downloading models from the Hugging Face Hub is turned off on shared links; "
                        "choose a model from the list.")
    return spec

"""Atomic file writes: a file is complete or absent, and a failed write explains itself.

Every output (PNGs, manifests, checkpoints' small files) goes through here: write to a temporary
name in the same folder, flush to disk, then rename over the target. A crash or a full disk
leaves the previous file untouched and no half-written one behind.

Outputs get the modes any other program's files get: 0666 and 0777 less the umask. (``mkstemp`` and
``mkdtemp`` make 0600 files and 0700 folders, which would hide exports from the other users and
services a umask of 0022 lets read them.)
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import OutputError

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the folder is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux's /proc).

    Elsewhere it is set and restored at once; a thread creating a file in between would get mode
    0666/0777, so the read-only way comes first."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            m = re.search(r"^Umask:\s*([0-7]+)$", f.read(), re.M)
        if m:
            return int(m.group(1), 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` would give a new file: 0666 less the umask."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode ``mkdir`` would give a new folder: 0777 less the umask."""
    return 0o777 & ~umask()


def set_file_mode(path: str | Path) -> None:
    """Give a file just written by a library the mode of an ordinary file (safetensors 0.8's
    ``save_file`` makes 0600 files, like ``mkstemp``). Raises OSError."""
    os.chmod(path, file_mode())


def temp_dir(final: str | Path, prefix: str | None = None) -> Path:
    """A hidden temporary folder beside ``final`` (to be filled, then renamed to it), with the mode
    ``mkdir`` would give ``final``; the parent folders are made. Raises OSError."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{final.name}-", dir=final.parent))
    os.chmod(tmp, dir_mode())
    return tmp


def output_error(path: Path, err: OSError) -> OutputError:
    reason = _REASONS.get(err.errno, err.strerror or type(err).__name__)
    fix = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "pick a folder you can write to"
    return OutputError(f"Cannot write {path}: {reason}; {fix} and run again (files already written are kept).")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix + ".tmp")
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; outputs are ordinary files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise output_error(path, e) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))

"""Content hashes of model files (A1111's "Model hash" is the sha256 of the checkpoint file).

Hashing a 4 GB file takes seconds, so each result is remembered by (real path, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .tiny import cache_root


def _hash_cache_path() -> Path:
    return cache_root() / "hashes.json"


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (real path, size, mtime) so big checkpoints are read once."""
    real = path.resolve()
    st = real.stat()
    key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = _hash_cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    cache[key] = h.hexdigest()
    try:  # best effort: a read-only cache only costs a re-hash next time
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return cache[key]

"""Content hashes of model files and folders: what identifies the weights Dreamy loaded.

A file's is its sha256 (for a single checkpoint file, A1111's "Model hash" is its first 10 digits; see
a1111_hash.py for folders and Train checkpoints). Hashing a 4 GB file takes seconds, so each result
is remembered by (real path, size, mtime).
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


# SDXL adds the last two; an SD1.5 folder has neither, so its hash is as it always was.
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2")


def folder_sha256(folder: Path) -> str:
    """sha256 over the (path, content hash) list of a diffusers folder's model files.

    Only the component folders count, so files beside them (model_index.json, a README, Dreamy's
    model_hash.json) never change it."""
    lines = []
    for comp in COMPONENTS:
        sub = folder / comp
        if sub.is_dir():
            for f in sorted(sub.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    lines.append(f"{comp}/{f.name}:{file_sha256(f)}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()

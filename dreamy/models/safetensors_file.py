"""Byte-deterministic ``.safetensors`` files: the same tensors and metadata always give the same bytes.

Why not the safetensors library's writer: it emits ``__metadata__`` from a Rust HashMap, whose order
changes from one process to the next, so two exports of one checkpoint differed in their header and
so in the sha256 that A1111 and Civitai show as the model hash. This writer lays a file out as the
library does (the format of github.com/huggingface/safetensors, "Format": an 8-byte little-endian
header length; a compact JSON header, ``__metadata__`` first, padded with spaces to a multiple of 8
bytes; then the tensors' little-endian bytes back to back, ordered by dtype, wider ones first, then
by name, so every tensor stays aligned), with the metadata keys sorted. The library reads the result; a file
with at most one metadata key is byte for byte the library's own (tests/test_model_hash.py).

It streams one tensor at a time, so a model's hash never needs its file or all its bytes in memory.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ..atomic import atomic_write

# In the order of the library's Dtype enum; it writes tensors by that order, highest first, then by name.
_DTYPES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.float16: "F16",
    torch.bfloat16: "BF16", torch.int32: "I32", torch.float32: "F32", torch.float64: "F64", torch.int64: "I64",
}
_RANK = {dtype: i for i, dtype in enumerate(_DTYPES)}


def _prepared(tensors: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """(name, CPU contiguous tensor) in the library's order: dtype (wider ones first), then name."""
    if sys.byteorder != "little":  # the format is little-endian; a raw copy would be wrong here
        raise RuntimeError("Writing .safetensors files needs a little-endian machine.")
    out = []
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise TypeError(f"Tensor '{name}' has dtype {t.dtype}, which .safetensors files cannot hold here.")
        out.append((name, t.detach().cpu().contiguous()))
    return sorted(out, key=lambda kv: (-_RANK[kv[1].dtype], kv[0]))


def _header(items: list[tuple[str, torch.Tensor]], metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    start = 0
    for name, t in items:
        end = start + t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [start, end]}
        start = end
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def chunks(tensors: Mapping[str, torch.Tensor],
           metadata: Mapping[str, str] | None = None) -> Iterator[bytes | memoryview]:
    """The file's bytes, piece by piece: the header, then each tensor's data."""
    items = _prepared(tensors)
    yield _header(items, metadata)
    for _, t in items:
        if t.numel():
            yield memoryview(t.reshape(-1).view(torch.uint8).numpy())  # no copy


def sha256(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """The sha256 (hex) of the file :func:`write` would write, computed without writing it."""
    h = hashlib.sha256()
    for piece in chunks(tensors, metadata):
        h.update(piece)
    return h.hexdigest()


def write(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """Write ``tensors`` (+ string ``metadata``) to ``path`` atomically; returns the file's sha256 (hex).

    Raises OutputError (one sentence) when the folder cannot be written, TypeError for a dtype the
    format has no name for here (complex, float8)."""
    h = hashlib.sha256()

    def emit(f) -> None:
        for piece in chunks(tensors, metadata):
            h.update(piece)
            f.write(piece)

    atomic_write(path, emit)
    return h.hexdigest()

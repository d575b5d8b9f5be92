"""The real CLIP ViT-L/14 tokenizer, found or built without touching the network.

Single-file checkpoints carry no tokenizer, and Dreamy never downloads one while loading. In order:

1. a tokenizer folder that huggingface_hub already cached (SD1.5's or SDXL's ``tokenizer`` folder,
   ``openai/clip-vit-large-patch14``, ...), looked up offline;
2. a folder built once into Dreamy's cache from OpenAI's BPE merge list
   ``bpe_simple_vocab_16e6.txt.gz``, which the ``open_clip`` and ``clip`` packages ship;
3. otherwise a :class:`SourceError` that says how to get either.

All CLIP-L / OpenCLIP-bigG text encoders share this 49408-token vocabulary; only the padding token
differs: ``<|endoftext|>`` for SD1.5 and SDXL's first encoder, ``!`` (id 0) for SDXL's second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

from ..atomic import temp_dir
from ..errors import TokenizerMissing
from .clip_vocab import EOS, _write, write_bpe_tokenizer
from .tiny import cache_root

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
# Bump when the folder recipe changes: a new folder is built beside the old one.
_VERSION = 1

# (repo id, subfolder) of hub repos whose cached tokenizer files we reuse, grouped by their pad token.
_HUB_TOKENIZERS: dict[str, tuple[tuple[str, str], ...]] = {
    EOS: (
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
        ("runwayml/stable-diffusion-v1-5", "tokenizer"),
        ("openai/clip-vit-large-patch14", ""),
        ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
        ("CompVis/stable-diffusion-v1-4", "tokenizer"),
    ),
    "!": (
        ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2"),
        ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", ""),
    ),
}
HOW_TO_GET = (
    "connect to the internet once and load 'stable-diffusion-v1-5/stable-diffusion-v1-5' (which caches "
    "it), or run `pip install --no-deps open-clip-torch` so Dreamy can build it offline"
)
# Packages that ship OpenAI's merge list next to their own simple tokenizer.
_BPE_PACKAGES = ("open_clip", "clip")


def clip_tokenizer_dir(pad_token: str = EOS) -> Path:
    """A folder that ``CLIPTokenizer.from_pretrained`` loads as the real CLIP tokenizer.

    Never touches the network; raises :class:`TokenizerMissing` (a SourceError) when no source is installed.
    """
    cached = _hub_cached_dirs()
    for folder, pad in cached:
        if pad == pad_token:
            return folder
    final = cache_root() / "tokenizers" / f"clip-vit-large-patch14-{_pad_tag(pad_token)}-v{_VERSION}"
    if (final / "tokenizer_config.json").is_file():
        return final
    if cached:  # the right vocabulary with another pad token: copy it, set ours
        source = cached[0][0]
        return _build_atomically(final, lambda tmp: _copy_vocab(source, tmp, pad_token))
    bpe = find_bpe_file()
    if bpe is None:
        raise TokenizerMissing(f"The CLIP tokenizer is not on this computer: {HOW_TO_GET}.")
    return _build_atomically(final, lambda tmp: write_bpe_tokenizer(bpe, tmp, pad_token=pad_token))


def find_bpe_file() -> Path | None:
    """OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` from an installed package, without importing it.

    (Importing ``open_clip`` would pull torchvision; ``find_spec`` only locates the folder.)
    """
    for package in _BPE_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / BPE_NAME
            if candidate.is_file():
                return candidate
    return None


def _hub_cached_dirs() -> list[tuple[Path, str | None]]:
    """Cached hub tokenizer folders holding vocab.json + merges.txt, each with its pad token."""
    from huggingface_hub import try_to_load_from_cache

    found: list[tuple[Path, str | None]] = []
    for repos in _HUB_TOKENIZERS.values():
        for repo_id, sub in repos:
            paths = []
            for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
                try:
                    hit = try_to_load_from_cache(repo_id, f"{sub}/{name}" if sub else name)
                except Exception:  # a damaged cache must not stop the offline fallback
                    hit = None
                paths.append(Path(hit) if isinstance(hit, str) else None)
            vocab, merges, config = paths
            if vocab and merges and vocab.parent == merges.parent:
                found.append((vocab.parent, _pad_of(vocab.parent) if config else None))
    return found


def _pad_of(folder: Path) -> str | None:
    """The pad token a tokenizer folder declares (special_tokens_map.json wins, as in transformers)."""
    pad = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8")).get("pad_token")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            pad = value
    return pad


def _copy_vocab(source: Path, folder: Path, pad_token: str) -> Path:
    vocab = json.loads((source / "vocab.json").read_text(encoding="utf-8"))
    lines = (source / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [line for line in lines if line and not line.startswith("#version")]
    return _write(folder, vocab, merges, pad_token=pad_token)


def _pad_tag(pad_token: str) -> str:
    names = {EOS: "pad-eos", "!": "pad-0"}
    return names.get(pad_token) or "pad-" + hashlib.sha1(pad_token.encode()).hexdigest()[:10]


def _build_atomically(final: Path, build) -> Path:
    """Run ``build(tmp_folder)`` and move the result into place: ``final`` is complete or absent."""
    tmp = temp_dir(final, prefix=".tok-")
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first
            if not (final / "tokenizer_config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final

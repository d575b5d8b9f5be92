"""Downloads from the Hugging Face Hub through huggingface_hub's cache, with one-sentence failures."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import SourceError

# the bar huggingface_hub's snapshot_download counts every file's bytes on (other bars: files, network)
_BYTES_BAR = "huggingface_hub.snapshot_download"


def is_cached(repo_id: str, files: Sequence[str]) -> bool:
    """Whether every one of ``files`` of ``repo_id`` is in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return all(isinstance(try_to_load_from_cache(repo_id, f), str) for f in files)
    except (ImportError, OSError, ValueError):
        return False


def offline() -> bool:
    """Whether huggingface_hub is told not to reach the hub ($HF_HUB_OFFLINE)."""
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return True


def _progress_bar(report: Callable[[int, int], None]) -> type:
    """A tqdm class for snapshot_download that hands (bytes done, bytes in all) to ``report``; it
    writes nothing itself (a server has no terminal to draw on)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Reporting(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._counts_bytes = kwargs.get("name") == _BYTES_BAR
            kwargs.update(disable=False, file=io.StringIO())  # tqdm counts nothing when disabled
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if self._counts_bytes and self.total:
                report(int(self.n), int(self.total))
            return shown

    return Reporting


def snapshot(repo_id: str, allow: Sequence[str] | None, ignore: Sequence[str] | None, instead: str,
             report: Callable[[int, int], None] | None = None) -> Path:
    """The local folder of ``repo_id`` (downloaded once into the HF cache, then used offline).

    ``instead`` completes "..., or give <instead>" in the messages; ``report(bytes done, bytes in
    all)`` follows a download. Raises SourceError when the repo is gated, does not exist, or is not
    cached and the hub cannot be reached.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    bar = {"tqdm_class": _progress_bar(report)} if report is not None else {}
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow, ignore_patterns=ignore, **bar))
    except GatedRepoError:
        raise SourceError(f"'{repo_id}' is gated on the Hugging Face Hub: accept its licence on its page and log "
                          f"in (`hf auth login`), or give {instead}.") from None
    except RepositoryNotFoundError:
        raise SourceError(f"'{repo_id}' is not a folder here and no such model exists on the Hugging Face Hub.") from None
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise SourceError(f"'{repo_id}' is not in the local Hugging Face cache and the hub could not be reached "
                          f"({type(e).__name__}); connect once to download it, or give {instead}.") from None

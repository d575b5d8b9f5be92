"""Downloads from the Hugging Face Hub through huggingface_hub's cache, with one-sentence failures.

The weights Dreamy starts on (Stable Diffusion 1.5 for Dream and Train, SUPIR-v0Q/v0F and Juggernaut
XL v9 for Enlarge) are :class:`Weights`: a repo, the exact files Dreamy reads, their approximate size
and their licence. :func:`fetch` downloads them once into the Hugging Face cache (``$HF_HOME``, by
default ``~/.cache/huggingface``) with ``snapshot_download``, then serves them from the cache without
asking the hub again. A Hugging Face Space lists the same files in its README's ``preload_from_hub``,
so its build fills that cache (:meth:`Weights.preload`).
"""

from __future__ import annotations

import errno
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HubUnreachable, SourceError

# the bar huggingface_hub's snapshot_download counts every file's bytes on (other bars: files, network)
_BYTES_BAR = "huggingface_hub.snapshot_download"


@dataclass(frozen=True)
class Weights:
    """Weights Dreamy downloads by name: ``files`` of hub repo ``repo_id``, about ``size_gb`` GB
    (10^9 bytes, as the hub lists them) under ``licence`` (shown before a download; the model page
    ``page`` has the full text)."""

    name: str
    repo_id: str
    files: tuple[str, ...]
    size_gb: float
    licence: str

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"

    @property
    def summary(self) -> str:
        """'~4.3 GB, CreativeML OpenRAIL-M': what a download button or a console line states."""
        return f"~{self.size_gb:.1f} GB, {self.licence}"

    def preload(self) -> str:
        """This download as one ``preload_from_hub`` entry of a Space's README: 'repo file1,file2'."""
        return f"{self.repo_id} {','.join(self.files)}"


# Downloads can be turned off for the whole process (a shared studio: visitors must not fill its disk).
_turned_off: list[str] = []


def turn_off_downloads(reason: str) -> None:
    """From now on nothing is downloaded in this process; messages say "downloads are off (``reason``)"."""
    _turned_off[:] = [reason]


def downloads_off() -> str | None:
    """Why nothing may be downloaded now ('HF_HUB_OFFLINE', or the reason given to
    :func:`turn_off_downloads`), or None when downloads are allowed. No network is used."""
    if offline():
        return "HF_HUB_OFFLINE"
    return _turned_off[0] if _turned_off else None


def is_cached(repo_id: str, files: Sequence[str]) -> bool:
    """Whether every one of ``files`` of ``repo_id`` is in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return all(isinstance(try_to_load_from_cache(repo_id, f), str) for f in files)
    except (ImportError, OSError, ValueError):
        return False


def cached_folder(weights: Weights) -> Path | None:
    """The cached snapshot folder holding every file of ``weights``, or None (no network).

    All files resolve through the repo's cached ``refs/main``, so they share one snapshot folder."""
    if not is_cached(weights.repo_id, weights.files):
        return None
    from huggingface_hub import try_to_load_from_cache

    first = weights.files[0]
    path = Path(try_to_load_from_cache(weights.repo_id, first))
    return path.parents[len(Path(first).parts) - 1]


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


def fetch(weights: Weights, report: Callable[[int, int], None] | None = None, instead: str = "a local file") -> Path:
    """The local snapshot folder holding ``weights.files`` (``folder / file`` for each).

    From the cache when every file is there (no network at all); otherwise downloaded once with
    ``snapshot_download(allow_patterns=weights.files)``: huggingface_hub's own progress bars on the
    console, or ``report(bytes done, bytes in all)`` instead when given. ``instead`` completes
    "..., or give <instead>" in the messages.

    Raises HubUnreachable (a SourceError) when downloads are off or the hub cannot be reached and
    the files are not cached, SourceError for a gated, missing or forbidden repo and a full disk.
    """
    folder = cached_folder(weights)
    if folder is not None:
        return folder
    off = downloads_off()
    if off:
        raise HubUnreachable(f"{weights.name} is not in the local Hugging Face cache and downloads are off ({off}); "
                             f"download it once with a connection, or give {instead}.")
    return snapshot(weights.repo_id, list(weights.files), None, instead, report, name=weights.name,
                    size=f" (~{weights.size_gb:.1f} GB)")


def snapshot(repo_id: str, allow: Sequence[str] | None, ignore: Sequence[str] | None, instead: str,
             report: Callable[[int, int], None] | None = None, *, name: str | None = None, size: str = "") -> Path:
    """The local folder of ``repo_id`` (downloaded once into the HF cache, then used offline).

    ``instead`` completes "..., or give <instead>" in the messages; ``report(bytes done, bytes in
    all)`` follows a download (else huggingface_hub draws its bars). ``name`` names the model in
    messages (default: the repo id). Raises HubUnreachable when the files are not cached and the hub
    cannot be reached (or $HF_HUB_OFFLINE is set), SourceError when the repo is gated, forbidden or
    does not exist, or the disk is full.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    what = name or f"'{repo_id}'"
    bar = {"tqdm_class": _progress_bar(report)} if report is not None else {}
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow, ignore_patterns=ignore, **bar))
    except GatedRepoError:
        raise SourceError(f"{what} is gated on the Hugging Face Hub: accept its licence on {_page(repo_id)} and log "
                          f"in (`hf auth login`), or give {instead}.") from None
    except RepositoryNotFoundError:
        raise SourceError(f"'{repo_id}' is not a folder here and no such model exists on the Hugging Face Hub.") from None
    except HfHubHTTPError as e:  # 401/403 on a repo that is not flagged gated: a licence or a token
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise SourceError(f"The Hugging Face Hub refused {what} (HTTP {status}): check its licence on "
                          f"{_page(repo_id)} and your login (`hf auth login`), or give {instead}.") from None
    except LocalEntryNotFoundError as e:
        raise HubUnreachable(f"{what} is not in the local Hugging Face cache and the hub could not be reached "
                             f"({_cause(e)}); connect once to download it, or give {instead}.") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise SourceError(f"The disk is full: {what}{size} does not fit in the Hugging Face cache "
                              f"({_cache_dir()}); free some space (or set HF_HOME to a bigger disk) and try "
                              "again.") from None
        raise HubUnreachable(f"{what} could not be downloaded ({type(e).__name__}: {e!s:.80}); try again, or "
                             f"give {instead}.") from None
    except ValueError as e:
        raise SourceError(f"{what} could not be downloaded ({type(e).__name__}: {e!s:.80}); give {instead}.") from None


def _page(repo_id: str) -> str:
    return f"https://huggingface.co/{repo_id}"


def _cause(e: BaseException) -> str:
    """The connection problem behind a LocalEntryNotFoundError, named in a word or two."""
    cause = e.__cause__ or e.__context__
    if "outgoing traffic has been disabled" in str(e) or type(cause).__name__ == "OfflineModeIsEnabled":
        return "HF_HUB_OFFLINE is set"
    return type(cause).__name__ if cause is not None else type(e).__name__


def _cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return "~/.cache/huggingface/hub"

"""Downloads from the Hugging Face Hub through huggingface_hub's cache, with one-sentence failures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import SourceError


def snapshot(repo_id: str, allow: Sequence[str] | None, ignore: Sequence[str] | None, instead: str) -> Path:
    """The local folder of ``repo_id`` (downloaded once into the HF cache, then used offline).

    ``instead`` completes "..., or give <instead>" in the messages. Raises SourceError when the repo is
    gated, does not exist, or is not cached and the hub cannot be reached.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow, ignore_patterns=ignore))
    except GatedRepoError:
        raise SourceError(f"'{repo_id}' is gated on the Hugging Face Hub: accept its licence on its page and log "
                          f"in (`hf auth login`), or give {instead}.") from None
    except RepositoryNotFoundError:
        raise SourceError(f"'{repo_id}' is not a folder here and no such model exists on the Hugging Face Hub.") from None
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise SourceError(f"'{repo_id}' is not in the local Hugging Face cache and the hub could not be reached "
                          f"({type(e).__name__}); connect once to download it, or give {instead}.") from None

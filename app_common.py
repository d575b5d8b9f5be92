"""What every studio tab shares: the studio's configuration, per-session Stop, error messages, locked fields.

Nothing here decides anything about images or models; it turns widget values into core calls and
core outcomes into widget updates.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import gradio as gr

from dreamy.errors import DreamyError, LockedFieldError, user_error
from dreamy.events import CancelToken
from dreamy.layout import claim_run_dir
from dreamy.models.sources import DEFAULT_MODEL
from dreamy.paths import check_model_source
from dreamy.recipes.presets import load_preset, preset_fields

log = logging.getLogger("dreamy.studio")

GPU = "gpu"  # the one queue every GPU job (dream, sweeps, train, enlarge) waits in


@dataclass
class Studio:
    """One running studio: where it reads and writes, what it may load, and who asked to stop."""

    default_model: str
    outputs: Path
    models: Path
    shared: bool = False  # reachable by others (share link or network): no hub downloads, no run history
    extra_models: tuple[str, ...] = ()  # sources named on the command line, allowed as they are
    prompt_model: str | None = None  # a local transformers text model for the prompt helper
    max_queue: int = 64
    max_file_size: str = "64mb"
    _tokens: dict[tuple[str, str], CancelToken] = field(default_factory=dict, repr=False)
    _outcomes: dict[str, tuple] = field(default_factory=dict, repr=False)  # session -> last stopped job's result
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def training_sets(self) -> Path:
        return self.outputs / "training-sets"

    def model_source(self, spec: str) -> str:
        """A model source from a widget or an API call, refused unless the studio may load it."""
        allowed = (self.default_model, DEFAULT_MODEL, *self.extra_models)
        return check_model_source(spec, [self.models], allowed=allowed, allow_hub=not self.shared)

    def run_dir(self, job: str) -> Path:
        return claim_run_dir(self.outputs, job)

    # Stop: a fresh token per job, kept under (session, job) so Stop reaches only this visitor's jobs.
    def start(self, request: gr.Request | None, job: str) -> CancelToken:
        token = CancelToken()
        with self._lock:
            self._tokens[(session(request), job)] = token
        return token

    def finish(self, request: gr.Request | None, job: str, token: CancelToken) -> None:
        with self._lock:
            if self._tokens.get((session(request), job)) is token:
                del self._tokens[(session(request), job)]

    def stop(self, request: gr.Request | None, jobs: Sequence[str] | None = None) -> int:
        """Cancel this session's running jobs (all, or those named); returns how many were running."""
        with self._lock:
            hits = self._running(session(request), jobs)
        for t in hits:
            t.cancel()
        return len(hits)

    def _running(self, me: str, jobs: Sequence[str] | None) -> list[CancelToken]:
        return [t for (s, j), t in self._tokens.items() if s == me and (jobs is None or j in jobs)]

    def record(self, request: gr.Request | None, outcome: tuple) -> None:
        """Keep what a stopped job ended with: the browser cancels its stream, so Stop shows it instead."""
        with self._lock:
            self._outcomes[session(request)] = outcome

    def stopped_outcome(self, request: gr.Request | None, jobs: Sequence[str], timeout: float = 30.0) -> tuple | None:
        """Wait (bounded) until this session's named jobs have wound down; their recorded outcome, if any."""
        me = session(request)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running(me, jobs):
                    return self._outcomes.pop(me, None)
            time.sleep(0.05)
        return None


def session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


@contextmanager
def user_errors(job: str) -> Iterator[None]:
    """Core errors (and out-of-memory) become a gr.Error with their one sentence; bugs are logged,
    and the visitor gets a short message instead of a traceback."""
    try:
        yield
    except gr.Error as e:
        e.print_exception = False  # a message for the visitor, not a bug: keep the log clean
        raise
    except Exception as e:  # noqa: BLE001 - this is the boundary where every failure gets a message
        err = user_error(e, job)
        if err is None:
            log.exception("Unexpected error during %s", job)
            raise gr.Error(f"Unexpected {type(e).__name__} during {job}; the details are in the studio's log.",
                           title="Something broke") from None
        hint = " In the studio: tick Unlock." if isinstance(err, LockedFieldError) else ""
        raise gr.Error(str(err) + hint, print_exception=False) from None


def on_gpu(fn, duration: int = 120):
    """``@spaces.GPU`` on Hugging Face ZeroGPU Spaces (a no-op elsewhere, and when spaces is absent)."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)


def train_blocked() -> str | None:
    """Why Train is off here, or None. ZeroGPU gives visitors minutes a day; a run takes longer."""
    if os.environ.get("SPACE_ID") and (os.environ.get("SPACES_ZERO_GPU") or not _has_cuda()):
        return ("Training is off on this shared Space: a run takes longer than a visitor's GPU quota. "
                "Duplicate the Space onto a dedicated GPU, or run the studio on your own machine.")
    return None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise gr.Error(f"{what} must be a whole number, got {value!r:.40}.")
    return int(value)


# ---- locked fields: one widget per setting, read-only with a 🔒 while the preset locks it ----

def _field_meta(cls: type, name: str) -> tuple[Any, dict]:
    f = {f.name: f for f in fields(cls)}[name]
    return typing.get_type_hints(cls)[name], dict(f.metadata)


def field_widget(cls: type, name: str, docs: bool = False, **kwargs: Any) -> gr.components.Component:
    """A widget for one setting of ``cls`` (DreamSettings, TrainSettings, EnlargeSettings); ``docs`` adds
    the setting's one-line description under its label (costs height: only where it helps)."""
    tp, meta = _field_meta(cls, name)
    label = name.replace("_", " ")
    info = (meta.get("doc") or None) if docs else None
    if meta.get("choices"):
        return gr.Dropdown(list(meta["choices"]), label=label, info=info, **kwargs)
    if tp is bool:
        return gr.Checkbox(label=label, info=info, **kwargs)
    if tp is int:
        return gr.Number(label=label, precision=0, info=info, **kwargs)
    if tp is float:
        return gr.Number(label=label, info=info, **kwargs)
    return gr.Textbox(label=label, info=info, **kwargs)


def locked_updates(preset_name: str, job: str, names: Sequence[str], unlocked: bool,
                   values: dict[str, Any] | None = None) -> list[dict]:
    """Updates for ``names``: preset values (or ``values``), read-only with a 🔒 where locked."""
    preset = load_preset(preset_name)
    base = preset_fields(preset, job)
    locked = set(preset.locked.get(job, ()))
    out = []
    for name in names:
        is_locked = name in locked and not unlocked
        label = name.replace("_", " ") + (" 🔒" if is_locked else "")
        value = (values or base).get(name, base[name])
        out.append(gr.update(value=value, interactive=not is_locked, label=label))
    return out


def lock_toggled(preset_name: str, job: str, names: Sequence[str], unlocked: bool) -> list[dict]:
    """Unlocking keeps what is typed; locking again puts the preset's values back in the locked fields."""
    preset = load_preset(preset_name)
    locked = set(preset.locked.get(job, ()))
    updates = locked_updates(preset_name, job, names, unlocked)
    if unlocked:
        for u in updates:
            u.pop("value")
    else:
        for name, u in zip(names, updates, strict=True):
            if name not in locked:
                u.pop("value")
    return updates


def overrides_from(names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    """Widget values -> overrides; the core checks types and ranges and refuses locked changes."""
    return dict(zip(names, values, strict=True))


def preset_description(preset_name: str) -> str:
    try:
        p = load_preset(preset_name)
    except DreamyError as e:
        return f"⚠ {e}"
    return p.description


def files_note(paths: Sequence[Path], root: Path) -> str:
    if not paths:
        return ""
    folder = paths[0].parent
    try:
        folder = folder.relative_to(root.parent)
    except ValueError:
        pass
    return f"in `{folder}`"

"""User-facing errors: each carries one sentence that names the thing and what to do.

Every entry point (CLI, studio, Python API) lets these through unchanged; the CLI prints the
sentence without a traceback, the studio shows it in a `gr.Error`.
"""

from __future__ import annotations


class DreamyError(Exception):
    """Base class: ``str(err)`` is the whole message a user needs."""


class SourceError(DreamyError):
    """A model source is missing, unreachable, corrupt or of the wrong kind."""


class PresetError(DreamyError):
    """A preset file or a setting is invalid (file, key, expected type or range)."""


class LockedFieldError(PresetError):
    """A call tried to change a field the preset locks, without unlocking it."""


class SeedSyntaxError(DreamyError):
    """A seeds string could not be parsed."""


class RecallError(DreamyError):
    """A PNG carries no usable Dreamy recipe."""


class Cancelled(DreamyError):
    """A job was stopped through its cancel token; whatever it had finished is kept."""


class OutputError(DreamyError):
    """An output could not be written (disk full, read-only folder); earlier outputs are intact."""

"""What every sub-command shares: ``--set`` values, ``--unlock``, a progress bar and Ctrl-C as Stop."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any


def note(line: str) -> None:
    """One line for the person at the console (stderr, so stdout keeps only the paths written)."""
    print(f"dreamy: {line}", file=sys.stderr, flush=True)


def parse_setting(text: str) -> tuple[str, Any]:
    """``--set name=value`` with a TOML value (``lora_rank=8``, ``s_cfg=4.0``); a bare word is a string."""
    from ..recipes.presets import tomllib

    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--set needs name=value, got {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return name.strip().replace("-", "_"), parsed


def unlock_arg(value: str | None) -> bool | tuple[str, ...]:
    """``--unlock`` absent: nothing; alone (or ``all``): every field; ``--unlock steps,width``: those fields."""
    if value is None:
        return ()
    if value in ("", "all"):
        return True
    return tuple(v.strip().replace("-", "_") for v in value.split(",") if v.strip())


def progress_bar(total_label: str):
    """A tqdm bar fed by a job's Progress events: returns (closer, on_progress)."""
    from tqdm.auto import tqdm

    bars = []

    def on_progress(p) -> None:
        if not bars:  # created on the first step, so loading messages and errors print cleanly
            bars.append(tqdm(total=1.0, unit="", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
                             desc=total_label, mininterval=0.5))
        bar = bars[0]
        bar.n = round(p.fraction, 4)
        bar.set_postfix_str(p.message, refresh=False)
        bar.refresh()

    class _Closer:
        def close(self) -> None:
            for b in bars:
                b.close()

    return _Closer(), on_progress


def with_cancel(run):
    """Ctrl-C stops at the next step boundary instead of killing mid-write."""
    from ..events import CancelToken

    token = CancelToken()
    previous = signal.signal(signal.SIGINT, lambda *_: token.cancel())
    try:
        return run(token)
    finally:
        signal.signal(signal.SIGINT, previous)

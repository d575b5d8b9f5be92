"""Seed lists: ``7``, ``0-15``, ``1,5,9``, ``100-200:10`` and any comma-separated mix of them."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import SeedSyntaxError

MAX_SEED = 2**32 - 1  # A1111's and Fooocus's seed range
MAX_SEEDS = 100_000  # one call; a bigger sweep is split into several (or spread with accelerate)

_PART = re.compile(r"^(\d{1,20})(?:-(\d{1,20})(?::(\d{1,20}))?)?$")


def parse_seeds(text: str | int | Iterable[int]) -> list[int]:
    """Seeds in the order given, duplicates dropped; a clear SeedSyntaxError for anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        return _checked([text], str(text))
    if not isinstance(text, str):
        seeds = list(text)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise SeedSyntaxError("Seeds must be whole numbers.")
        return _checked(seeds, "the seed list")
    spec = text.replace(" ", "")
    if not spec:
        raise SeedSyntaxError("No seeds given: write e.g. '7', '0-15', '1,5,9' or '100-200:10'.")
    seeds: list[int] = []
    for part in spec.split(","):
        m = _PART.match(part)
        if not m:
            raise SeedSyntaxError(
                f"'{part[:40]}' is not a seed: write a number (7), a range (0-15), "
                "a list (1,5,9) or a stepped range (100-200:10)."
            )
        start, end, step = m.group(1), m.group(2), m.group(3)
        a = int(start)
        if end is None:
            seeds.append(a)
            if len(seeds) > MAX_SEEDS:
                raise SeedSyntaxError(f"More than {MAX_SEEDS} seeds in one call; split the sweep.")
            continue
        b, s = int(end), int(step or 1)
        if b < a:
            raise SeedSyntaxError(f"In '{part}' the range ends before it starts; write {b}-{a}.")
        if s == 0:
            raise SeedSyntaxError(f"In '{part}' the step is 0; use a step of 1 or more.")
        if (b - a) // s + 1 + len(seeds) > MAX_SEEDS:
            raise SeedSyntaxError(f"'{part}' makes more than {MAX_SEEDS} seeds in one call; split the sweep.")
        seeds.extend(range(a, b + 1, s))
    return _checked(seeds, text)


def _checked(seeds: list[int], origin: str) -> list[int]:
    if len(seeds) > MAX_SEEDS:
        raise SeedSyntaxError(f"More than {MAX_SEEDS} seeds in one call; split the sweep.")
    for s in seeds:
        if not 0 <= s <= MAX_SEED:
            raise SeedSyntaxError(f"Seed {s} in '{str(origin)[:40]}' is out of range: seeds go from 0 to {MAX_SEED}.")
    return list(dict.fromkeys(seeds))

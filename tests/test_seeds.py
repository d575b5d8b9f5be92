import pytest

from dreamy.errors import SeedSyntaxError
from dreamy.recipes.seeds import MAX_SEED, parse_seeds


@pytest.mark.parametrize(
    "text, seeds",
    [
        ("7", [7]),
        ("0-3", [0, 1, 2, 3]),
        ("1,5,9", [1, 5, 9]),
        ("100-200:50", [100, 150, 200]),
        ("3, 1-2, 3", [3, 1, 2]),  # order kept, duplicates dropped
        (f"{MAX_SEED}", [MAX_SEED]),
        (5, [5]),
        ([4, 2], [4, 2]),
    ],
)
def test_seed_syntax(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "No seeds given"),
        ("-", "is not a seed"),
        ("1-", "is not a seed"),
        ("a", "is not a seed"),
        ("-1", "is not a seed"),
        ("10-1", "ends before it starts"),
        ("0-10:0", "step is 0"),
        ("0-1000000000000", "more than 100000 seeds"),
        (f"{MAX_SEED + 1}", "out of range"),
        ("9" * 5000, "is not a seed"),
        ([1.5], "whole numbers"),
    ],
)
def test_bad_seeds_are_refused_clearly(text, message):
    with pytest.raises(SeedSyntaxError, match=message):
        parse_seeds(text)

"""``python -m bench``: the whole suite (see bench/run.py)."""

from bench.run import main

main()

"""The command line, ``python -m dreamy``: one sub-command per engine, all sharing ``helpers``.

It only parses arguments, calls one core function and prints; the engines never import it.
"""

from .main import main

__all__ = ["main"]

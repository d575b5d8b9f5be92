"""Dream: text to pictures with a locked preset, one seed per image, and the sweeps built on it.

The sampling building blocks live in ``blocks``; ``dreams`` runs them per seed (and recalls PNGs),
``fast`` replays them as CUDA graphs, ``sweeps``/``prompt_sweeps`` lay many dreams out in grids.
"""

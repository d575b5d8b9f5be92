"""Recipes: preset files, their settings and locks, seeds, and samplers, resolved into one record.

Nothing here loads a model: a Recipe says exactly what a job will do before any engine runs it.
"""

"""Miniature reproductions of the papers' tables: `python -m experiments.NAME [--smoke]`."""

"""Demonstrations a person runs with make (not shipped in the package)."""

"""The live set of model versions (see :mod:`phiserve.registry.registry`)."""

from phiserve.registry.registry import ModelRegistry

__all__ = ["ModelRegistry"]

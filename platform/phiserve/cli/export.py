"""The export toolchain for the commands that publish models (``models build``, ``dev init``).

Publishing parses ONNX graphs and runs export scripts, which need the ``export`` extra (onnx, and
whatever the scripts train with); the server and its image do not carry it. It is imported only
when such a command runs, so every other command works without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from phiserve.errors import ConfigurationError


def export_toolchain() -> Callable[..., Any]:
    """:func:`phiserve.repository.build.build_models`, or a clear error naming the extra."""
    try:
        from phiserve.repository.build import build_models
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"publishing models needs the export toolchain ({exc.name} is missing): "
            "pip install 'phiserve[export]'"
        ) from None
    return build_models

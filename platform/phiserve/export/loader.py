"""Loading ``models/<name>/export.py`` scripts by file path (their folders are not packages)."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from phiserve.errors import ConfigurationError

if TYPE_CHECKING:
    from phiserve.export import ExportedModel


def load_export(script: Path) -> Callable[..., ExportedModel]:
    """Import an export script by path and return its ``export`` function.

    The module is registered as ``phiserve_models.<folder>`` so two scripts never collide and a
    model folder name with dashes still gives a valid module name. Raises ConfigurationError
    when the file is missing or defines no callable ``export``.
    """
    script = Path(script)
    if not script.is_file():
        raise ConfigurationError(f"export script {script} not found")
    module_name = "phiserve_models." + re.sub(r"\W", "_", script.parent.name)
    spec = importlib.util.spec_from_file_location(module_name, script)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"export script {script} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    export = getattr(module, "export", None)
    if not callable(export):
        raise ConfigurationError(f"export script {script} defines no export(seed) function")
    return export

"""Version policy: which version answers when a request names none (Triton's version_policy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from phiserve.errors import ConfigurationError


def default_version(model: str, versions: Sequence[int], pinned: Mapping[str, int]) -> int:
    """The pinned version of ``model`` if configured, else its latest; all stay addressable."""
    if not versions:
        raise ConfigurationError(f"model {model!r} has no versions")
    if model in pinned:
        if pinned[model] not in versions:
            raise ConfigurationError(
                f"model {model!r} is pinned to version {pinned[model]}, "
                f"which is not in the repository (have {list(versions)})"
            )
        return pinned[model]
    return max(versions)

"""The transport-neutral data plane (see :mod:`phiserve.dataplane.dataplane`)."""

from phiserve.dataplane.dataplane import EXTENSIONS, DataPlane

__all__ = ["EXTENSIONS", "DataPlane"]

"""The server's route table, for tests that need matched routes without a server."""

from __future__ import annotations

from phiserve.app import METRICS_ROUTE
from phiserve.http.routing import Route, RouteTable
from phiserve.protocol.http import ROUTES as V2_ROUTES

TABLE = RouteTable([*V2_ROUTES, METRICS_ROUTE])


def match_route(method: str, path: str) -> Route | None:
    """The route the server would match for ``method`` and ``path``."""
    return TABLE.match(method, path)

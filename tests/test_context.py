"""Route matching: the one place paths become route templates, models and versions."""

from __future__ import annotations

import pytest

from phiserve.context import RouteKind, match_route


@pytest.mark.parametrize(
    ("path", "name", "template"),
    [
        ("/v2", "server_metadata", "/v2"),
        ("/v2/health/ready", "health_ready", "/v2/health/ready"),
        ("/metrics", "metrics", "/metrics"),
        ("/v2/models/m", "model_metadata", "/v2/models/{model}"),
        (
            "/v2/models/m/versions/3/ready",
            "model_ready",
            "/v2/models/{model}/versions/{version}/ready",
        ),
        ("/v2/models/m/infer", "infer", "/v2/models/{model}/infer"),
    ],
)
def test_routes(path: str, name: str, template: str) -> None:
    route = match_route("GET", path)
    assert (route.name, route.template) == (name, template)


def test_unknown_paths_do_not_match() -> None:
    for path in [
        "/",
        "/v3",
        "/v2/models",
        "/v2/models/m/versions",
        "/v2/models/m/explain",
        "/livez",
    ]:
        assert match_route("GET", path) is None, path


def test_open_routes() -> None:
    assert match_route("GET", "/v2/health/live").kind is RouteKind.HEALTH
    assert match_route("GET", "/v2/openapi.json").is_open
    assert not match_route("POST", "/v2/models/m/infer").is_open


def test_route_versions_must_be_ascii_digits() -> None:
    assert match_route("GET", "/v2/models/m/versions/12").version == 12
    for raw in ["\u00b9", "\u0661", "0", "-1", "1e3", str(2**31)]:
        route = match_route("GET", f"/v2/models/m/versions/{raw}")
        assert route.bad_version, raw
        assert route.version is None

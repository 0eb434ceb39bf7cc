"""Route matching: the one place paths become route templates, models and versions."""

from __future__ import annotations

import pytest

from phiserve.errors import MethodNotAllowed
from phiserve.http.routing import RouteKind, RouteSpec, RouteTable
from tests.routes import match_route


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


def test_method_picks_among_routes_of_one_template() -> None:
    table = RouteTable(
        [
            RouteSpec("read", "GET", "/things/{id}", RouteKind.METADATA),
            RouteSpec("write", "POST", "/things/{id}", RouteKind.INFER),
        ]
    )
    assert table.match("POST", "/things/a").name == "write"
    get = table.match("GET", "/things/a")
    assert (get.name, get.param("id"), get.param("other")) == ("read", "a", None)
    # Another method still matches the path, so the router can answer 405, not 404.
    assert table.match("DELETE", "/things/a").name == "read"
    assert table.match("GET", "/things") is None
    assert table.match("GET", "/things//") is None


def test_a_template_is_declared_once() -> None:
    spec = RouteSpec("a", "GET", "/a", RouteKind.METADATA)
    with pytest.raises(ValueError, match="declared twice"):
        RouteTable([spec, spec])
    with pytest.raises(ValueError, match="first segment"):
        RouteTable([RouteSpec("b", "GET", "/{model}", RouteKind.METADATA)])


def test_wrong_method_answers_405_through_the_router() -> None:
    assert MethodNotAllowed.status == 405
    assert match_route("GET", "/v2/models/m/infer").method == "POST"

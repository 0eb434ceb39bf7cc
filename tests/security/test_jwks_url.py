"""JWKS from a URL: a real HTTP server on 127.0.0.1 stands in for the IdP's jwks_uri."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from phiserve.config import Settings
from phiserve.errors import ConfigurationError
from phiserve.security import errors as sec
from phiserve.security.devkeys import public_jwk
from phiserve.security.jwks import UrlKeySet, check_jwks_url
from phiserve.security.tokens import TokenVerifier
from tests.security.helpers import AUDIENCE, ISSUER, FakeClock


class FakeIdP:
    """Serves ``/jwks`` (a mutable key list), counts fetches, can stall or redirect."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.delay_s = 0.0
        self.redirect_to: str | None = None
        self.status = 200
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.fetches += 1
                time.sleep(idp.delay_s)
                if idp.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", idp.redirect_to)
                    self.end_headers()
                    return
                body = json.dumps({"keys": idp.keys}).encode()
                try:
                    self.send_response(idp.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def idp(ec_key) -> Iterator[FakeIdP]:
    server = FakeIdP()
    server.keys = [public_jwk(ec_key)]
    yield server
    server.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def url_verifier(idp: FakeIdP, clock: FakeClock) -> TokenVerifier:
    keys = UrlKeySet(idp.url, timeout_s=1.0, clock=clock)
    keys.refresh(force=True)
    return TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE)


def test_token_verifies_against_fetched_keys(url_verifier: TokenVerifier, idp, make_token):
    assert url_verifier.verify(make_token()).subject == "alice"
    assert idp.fetches == 1


def test_rotation_at_the_idp_is_picked_up_on_unknown_kid(
    url_verifier: TokenVerifier, idp: FakeIdP, clock: FakeClock, make_token, ec_key
) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    idp.keys = [public_jwk(ec_key), public_jwk(new_key)]
    clock.advance(11)
    assert url_verifier.verify(make_token(key=new_key)).subject == "alice"
    assert idp.fetches == 2


def test_kid_flood_is_rate_limited(
    url_verifier: TokenVerifier, idp: FakeIdP, clock: FakeClock, make_token
) -> None:
    clock.advance(11)
    for i in range(200):
        with pytest.raises(sec.UnknownKeyId):
            url_verifier.verify(make_token(kid=f"flood-{i}"))
    assert idp.fetches == 2  # the initial load and one refresh


def test_concurrent_requests_share_one_fetch(
    url_verifier: TokenVerifier, idp: FakeIdP, clock: FakeClock, make_token, ec_key
) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    idp.keys = [public_jwk(ec_key), public_jwk(new_key)]
    idp.delay_s = 0.2
    clock.advance(11)
    tokens = [make_token(key=new_key, jti=f"t-{i}") for i in range(20)]

    async def many() -> list[Any]:
        return await asyncio.gather(*(url_verifier.averify(t) for t in tokens))

    principals = asyncio.run(many())
    assert {p.subject for p in principals} == {"alice"}
    assert idp.fetches == 2


def test_averify_does_not_block_known_keys_during_a_fetch(
    url_verifier: TokenVerifier, idp: FakeIdP, clock: FakeClock, make_token
) -> None:
    idp.delay_s = 0.5
    clock.advance(11)
    good = make_token()

    async def race() -> float:
        refresh = asyncio.ensure_future(url_verifier.averify(make_token(kid="unknown")))
        await asyncio.sleep(0.05)  # the fetch is now in flight
        start = time.perf_counter()
        await url_verifier.averify(good)
        elapsed = time.perf_counter() - start
        with pytest.raises(sec.UnknownKeyId):
            await refresh
        return elapsed

    assert asyncio.run(race()) < 0.2


def test_idp_down_keeps_the_loaded_keys(
    url_verifier: TokenVerifier, idp: FakeIdP, clock: FakeClock, make_token
) -> None:
    idp.status = 500
    clock.advance(11)
    assert url_verifier.keys.refresh() is False
    idp.close()
    clock.advance(11)
    assert url_verifier.keys.refresh() is False
    assert url_verifier.verify(make_token()).subject == "alice"


def test_fetch_has_a_short_timeout(idp: FakeIdP, clock: FakeClock) -> None:
    idp.delay_s = 2.0
    keys = UrlKeySet(idp.url, timeout_s=0.3, clock=clock)
    start = time.perf_counter()
    assert keys.refresh() is False
    assert time.perf_counter() - start < 1.5
    assert len(keys) == 0


def test_redirect_to_plain_http_elsewhere_is_not_followed(idp: FakeIdP, clock: FakeClock) -> None:
    idp.redirect_to = "http://idp.example.invalid/jwks"
    keys = UrlKeySet(idp.url, timeout_s=1.0, clock=clock)
    with pytest.raises(ConfigurationError):
        keys.refresh(force=True)


@pytest.mark.parametrize(
    "url",
    ["http://idp.example.invalid/jwks", "ftp://x/jwks", "file:///etc/passwd", "https:///jwks"],
)
def test_insecure_jwks_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="https"):
        check_jwks_url(url)


@pytest.mark.parametrize(
    "url", ["https://idp.example.invalid/jwks", "http://127.0.0.1:8080/j", "http://[::1]/j"]
)
def test_https_and_loopback_urls_are_accepted(url: str) -> None:
    check_jwks_url(url)


def test_source_hides_query_strings() -> None:
    keys = UrlKeySet("https://u:s3cret@idp.example.invalid:8443/jwks?token=s3cret#s3cret")
    assert keys.source == "https://idp.example.invalid:8443/jwks"


def test_from_settings_with_url(idp: FakeIdP, make_token, tmp_path) -> None:
    settings = Settings(home=tmp_path, jwks_url=idp.url, oidc_issuer=ISSUER)
    verifier = TokenVerifier.from_settings(settings)
    assert verifier.verify(make_token()).subject == "alice"


def test_from_settings_with_unreachable_url_starts_and_retries(
    idp: FakeIdP, make_token, tmp_path
) -> None:
    url = idp.url
    idp.close()
    settings = Settings(home=tmp_path, jwks_url=url, oidc_issuer=ISSUER)
    verifier = TokenVerifier.from_settings(settings)
    assert len(verifier.keys) == 0
    with pytest.raises(sec.UnknownKeyId):
        verifier.verify(make_token())

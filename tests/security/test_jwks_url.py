"""JWKS from a URL: a real HTTP server on 127.0.0.1 stands in for the IdP's jwks_uri."""

from __future__ import annotations

import asyncio
import json
import threading
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
    """Serves ``/jwks`` (a mutable key list), counts fetches, can hold answers or redirect.

    ``requested`` is set when a request arrives; while ``release`` is clear, answers wait for it
    (at most ``HOLD_S``), so a test knows a fetch is in flight and decides when it ends.
    """

    HOLD_S = 30.0

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.answered = 0
        self.requested = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.redirect_to: str | None = None
        self.status = 200
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.fetches += 1
                idp.requested.set()
                idp.release.wait(idp.HOLD_S)
                idp.answered += 1  # before the answer: a client that has it sees the count
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

    def hold(self) -> None:
        """From now on, requests wait for :attr:`release` before they are answered."""
        self.requested.clear()
        self.release.clear()

    def close(self) -> None:
        self.release.set()
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
    # A generous timeout: the tests that hold a fetch at the IdP release it themselves.
    keys = UrlKeySet(idp.url, timeout_s=10.0, clock=clock)
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
    idp.hold()
    clock.advance(11)
    tokens = [make_token(key=new_key, jti=f"t-{i}") for i in range(20)]

    async def many() -> list[Any]:
        pending = [asyncio.ensure_future(url_verifier.averify(t)) for t in tokens]
        # Every request has started (and found the fetch it needs in flight) by the time the
        # IdP sees the fetch: only then does the IdP answer.
        assert await asyncio.to_thread(idp.requested.wait, FakeIdP.HOLD_S)
        idp.release.set()
        return await asyncio.gather(*pending)

    principals = asyncio.run(many())
    assert {p.subject for p in principals} == {"alice"}
    assert idp.fetches == 2


def test_averify_does_not_block_known_keys_during_a_fetch(
    url_verifier: TokenVerifier, idp: FakeIdP, clock: FakeClock, make_token
) -> None:
    idp.hold()
    clock.advance(11)
    good = make_token()

    async def race() -> None:
        answered = idp.answered
        refresh = asyncio.ensure_future(url_verifier.averify(make_token(kid="unknown")))
        assert await asyncio.to_thread(idp.requested.wait, FakeIdP.HOLD_S)
        # The fetch is held at the IdP: a token with a known key is verified all the same.
        assert (await url_verifier.averify(good)).subject == "alice"
        assert not refresh.done() and idp.answered == answered
        idp.release.set()
        with pytest.raises(sec.UnknownKeyId):
            await refresh

    asyncio.run(race())


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
    idp.hold()  # the IdP never answers (until the test ends)
    keys = UrlKeySet(idp.url, timeout_s=0.3, clock=clock)
    assert keys.refresh() is False
    assert idp.fetches == 1 and idp.answered == 0  # the client gave up before any answer
    assert len(keys) == 0


def test_redirect_to_plain_http_elsewhere_is_not_followed(idp: FakeIdP, clock: FakeClock) -> None:
    idp.redirect_to = "http://idp.example.invalid/jwks"
    keys = UrlKeySet(idp.url, timeout_s=1.0, clock=clock)
    with pytest.raises(ConfigurationError):
        keys.refresh(force=True)


def test_redirect_to_an_accepted_url_is_followed(idp: FakeIdP, clock: FakeClock, ec_key) -> None:
    target = FakeIdP()
    try:
        target.keys = [public_jwk(ec_key)]
        idp.redirect_to = target.url
        keys = UrlKeySet(idp.url, timeout_s=10.0, clock=clock)
        assert keys.refresh(force=True) is True
        assert keys.get(public_jwk(ec_key)["kid"]) is not None
        assert (idp.fetches, target.fetches) == (1, 1)
    finally:
        target.close()


def test_oversized_key_set_is_refused_and_the_old_keys_stay(
    url_verifier: TokenVerifier, idp: FakeIdP, clock: FakeClock, make_token
) -> None:
    idp.keys = [*idp.keys, {"kty": "RSA", "kid": "padding", "n": "A" * 2**20, "e": "AQAB"}]
    clock.advance(11)
    assert url_verifier.keys.refresh() is False
    assert url_verifier.verify(make_token()).subject == "alice"


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

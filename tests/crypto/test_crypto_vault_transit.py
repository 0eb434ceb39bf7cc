"""The ``vault-transit`` key provider against the real hvac client and a transit stub over HTTP."""

from __future__ import annotations

import base64
import sys
import time

import pytest
from pydantic import SecretStr

from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.crypto.base import KeyProvider, WrappedKey
from phiserve.crypto.envelope import new_data_key, open_with_key, seal
from phiserve.crypto.vault_transit import (
    VaultTransitKeyProvider,
    ciphertext_version,
    format_key_id,
    parse_key_id,
)
from phiserve.errors import ConfigurationError, IntegrityError, KeyProviderError
from tests.crypto.vault_transit_stub import VaultTransitStub

pytestmark = pytest.mark.slow


@pytest.fixture(params=[False, True], ids=["plain-key", "derived-key"])
def derived(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def provider(vault: VaultTransitStub, derived: bool) -> VaultTransitKeyProvider:
    vault.create_key("phiserve", derived=derived)
    return VaultTransitKeyProvider(vault.url, SecretStr(vault.token))


def _assert_clean(message: str, vault: VaultTransitStub, data_key: bytes) -> None:
    """Error messages name keys and causes, never the token or key material."""
    assert vault.token not in message
    assert base64.b64encode(data_key).decode() not in message
    assert data_key.hex() not in message


def _tamper(wrapped: WrappedKey, index: int) -> WrappedKey:
    """Flip one bit of the raw bytes inside ``vault:vN:<base64>``."""
    prefix, _, body = wrapped.blob.decode().rpartition(":")
    raw = bytearray(base64.b64decode(body))
    raw[index] ^= 0x01
    return WrappedKey(wrapped.key_id, f"{prefix}:{base64.b64encode(raw).decode()}".encode())


def test_satisfies_the_protocol(provider: VaultTransitKeyProvider, vault: VaultTransitStub) -> None:
    typed: KeyProvider = provider
    assert typed.name == "vault-transit"
    assert vault.token not in repr(provider)


def test_round_trip(
    provider: VaultTransitKeyProvider, vault: VaultTransitStub, context: dict[str, str]
) -> None:
    data_key = new_data_key()
    wrapped = provider.wrap(data_key, context)
    assert wrapped.key_id == "vault-transit:transit/phiserve:v1"
    assert wrapped.blob.startswith(b"vault:v1:")
    assert provider.unwrap(wrapped, context) == data_key
    # Stored as JSON in a manifest and read by a restarted server.
    again = VaultTransitKeyProvider(vault.url, vault.token)
    assert again.unwrap(WrappedKey.from_json(wrapped.to_json()), context) == data_key
    assert ("POST", "/v1/transit/encrypt/phiserve") in vault.requests
    assert ("POST", "/v1/transit/decrypt/phiserve") in vault.requests


def test_envelope_through_vault(provider: VaultTransitKeyProvider, context: dict[str, str]) -> None:
    header, ciphertext, _ = seal(provider, b"model bytes", b"aad", context)
    data_key = provider.unwrap(header.wrapped, context)
    assert open_with_key(data_key, header, ciphertext, b"aad") == b"model bytes"


def test_context_binds_a_derived_key(vault: VaultTransitStub, context: dict[str, str]) -> None:
    vault.create_key("phiserve", derived=True)
    provider = VaultTransitKeyProvider(vault.url, vault.token)
    data_key = new_data_key()
    wrapped = provider.wrap(data_key, context)
    for other in ({**context, "version": "2"}, {**context, "model": "chest-xray"}):
        with pytest.raises(IntegrityError, match="message authentication failed") as err:
            provider.unwrap(wrapped, other)
        assert wrapped.key_id in str(err.value)
        _assert_clean(str(err.value), vault, data_key)
    with pytest.raises(KeyProviderError, match="missing 'context'"):
        provider.unwrap(wrapped, {})


def test_a_plain_key_ignores_the_context(vault: VaultTransitStub, context: dict[str, str]) -> None:
    """Documented: with a non-derived key the binding rests on the payload's AAD."""
    vault.create_key("phiserve", derived=False)
    provider = VaultTransitKeyProvider(vault.url, vault.token)
    wrapped = provider.wrap(b"k" * 32, context)
    assert provider.unwrap(wrapped, {**context, "version": "2"}) == b"k" * 32


def test_missing_key_is_created_derived_on_first_wrap(
    vault: VaultTransitStub, context: dict[str, str]
) -> None:
    """Vault upserts on encrypt; because we always send a context, the new key is derived."""
    provider = VaultTransitKeyProvider(vault.url, vault.token)
    wrapped = provider.wrap(b"k" * 32, context)
    assert vault.mounts["transit"]["phiserve"].derived
    assert provider.check() == "vault-transit:transit/phiserve:v1"
    with pytest.raises(IntegrityError):
        provider.unwrap(wrapped, {**context, "version": "2"})


@pytest.mark.parametrize("index", [0, 11, 12, 20, -1])
def test_tampered_ciphertext(
    provider: VaultTransitKeyProvider,
    vault: VaultTransitStub,
    context: dict[str, str],
    index: int,
) -> None:
    data_key = new_data_key()
    wrapped = provider.wrap(data_key, context)
    with pytest.raises(IntegrityError, match="message authentication failed") as err:
        provider.unwrap(_tamper(wrapped, index), context)
    assert wrapped.key_id in str(err.value)
    _assert_clean(str(err.value), vault, data_key)


@pytest.mark.parametrize(
    "blob",
    [b"vault:v1:!!!not-base64", b"vault:v1:", b"\xff\xfe", b"v1:abc", b"vault:v2:AAAA"],
)
def test_malformed_ciphertext(
    provider: VaultTransitKeyProvider, context: dict[str, str], blob: bytes
) -> None:
    """Garbage, a missing prefix, or a prefix that disagrees with the key id (v2 vs v1)."""
    with pytest.raises(IntegrityError):
        provider.unwrap(WrappedKey("vault-transit:transit/phiserve:v1", blob), context)


def test_key_id_version_swapped(provider: VaultTransitKeyProvider, context: dict[str, str]) -> None:
    wrapped = provider.wrap(b"k" * 32, context)
    provider.rotate()
    with pytest.raises(IntegrityError, match="does not match its key id"):
        provider.unwrap(WrappedKey("vault-transit:transit/phiserve:v2", wrapped.blob), context)


def test_foreign_key_id(provider: VaultTransitKeyProvider, context: dict[str, str]) -> None:
    with pytest.raises(KeyProviderError, match="not a Vault transit key id"):
        provider.unwrap(WrappedKey("local-20240101T000000Z-abcd", b"x"), context)


def test_rotate_rewrap_retire(
    provider: VaultTransitKeyProvider, vault: VaultTransitStub, context: dict[str, str]
) -> None:
    """What ``phiserve keys rotate`` does: new version, re-wrap (unwrap + wrap), retire old."""
    data_key = new_data_key()
    old = provider.wrap(data_key, context)
    assert provider.rotate() == "vault-transit:transit/phiserve:v2"
    # Old versions still unwrap until retired; new wraps use the new version.
    assert provider.unwrap(old, context) == data_key
    rewrapped = provider.wrap(provider.unwrap(old, context), context)
    assert rewrapped.key_id == "vault-transit:transit/phiserve:v2"
    assert rewrapped.blob.startswith(b"vault:v2:")

    provider.retire_others()
    assert vault.mounts["transit"]["phiserve"].min_decryption_version == 2
    assert provider.unwrap(rewrapped, context) == data_key
    with pytest.raises(KeyProviderError, match="retired") as err:
        provider.unwrap(old, context)
    assert old.key_id in str(err.value)
    _assert_clean(str(err.value), vault, data_key)
    assert provider.check() == "vault-transit:transit/phiserve:v2"


def test_rotate_on_vault_before_1_14(context: dict[str, str]) -> None:
    """Older Vault answers rotate with 204 and no body: the new version is read back."""
    with VaultTransitStub(legacy_rotate=True) as vault:
        vault.create_key("phiserve", derived=True)
        provider = VaultTransitKeyProvider(vault.url, vault.token)
        assert provider.rotate() == "vault-transit:transit/phiserve:v2"
        assert provider.wrap(b"k" * 32, context).key_id == "vault-transit:transit/phiserve:v2"


def test_namespace_header(vault: VaultTransitStub, context: dict[str, str]) -> None:
    provider = VaultTransitKeyProvider(vault.url, vault.token, namespace="team-a")
    provider.wrap(b"k" * 32, context)
    assert vault.namespaces == ["team-a"]


def test_rewrap_server_side(
    provider: VaultTransitKeyProvider, vault: VaultTransitStub, context: dict[str, str]
) -> None:
    data_key = new_data_key()
    old = provider.wrap(data_key, context)
    provider.rotate()
    provider.rotate()
    vault.requests.clear()
    moved = provider.rewrap(old, context)
    assert moved.key_id == "vault-transit:transit/phiserve:v3"
    assert vault.requests == [("POST", "/v1/transit/rewrap/phiserve")]  # no decrypt round trip
    provider.retire_others()
    assert provider.unwrap(moved, context) == data_key


def test_rewrap_to_another_transit_key(vault: VaultTransitStub, context: dict[str, str]) -> None:
    vault.create_key("old-kek", derived=True)
    vault.create_key("new-kek", derived=True)
    old_provider = VaultTransitKeyProvider(vault.url, vault.token, key="old-kek")
    wrapped = old_provider.wrap(b"k" * 32, context)
    new_provider = VaultTransitKeyProvider(vault.url, vault.token, key="new-kek")
    # The key id names its key, so the new provider still unwraps the old wrap.
    assert new_provider.unwrap(wrapped, context) == b"k" * 32
    moved = new_provider.rewrap(wrapped, context)
    assert moved.key_id == "vault-transit:transit/new-kek:v1"
    assert new_provider.unwrap(moved, context) == b"k" * 32


def test_other_mount(vault: VaultTransitStub, context: dict[str, str]) -> None:
    vault.mounts["team/kms"] = {}
    provider = VaultTransitKeyProvider(vault.url, vault.token, mount="/team/kms/", key="k1")
    wrapped = provider.wrap(b"k" * 32, context)
    assert wrapped.key_id == "vault-transit:team/kms/k1:v1"
    assert parse_key_id(wrapped.key_id) == ("team/kms", "k1", 1)
    assert provider.unwrap(wrapped, context) == b"k" * 32


def test_engine_not_mounted(vault: VaultTransitStub, context: dict[str, str]) -> None:
    provider = VaultTransitKeyProvider(vault.url, vault.token, mount="nope")
    with pytest.raises(KeyProviderError, match="is a transit engine mounted at 'nope'"):
        provider.wrap(b"k" * 32, context)


def test_unknown_key_on_unwrap(vault: VaultTransitStub, context: dict[str, str]) -> None:
    provider = VaultTransitKeyProvider(vault.url, vault.token)
    wrapped = WrappedKey("vault-transit:transit/gone:v1", b"vault:v1:AAAA")
    with pytest.raises(KeyProviderError, match="encryption key not found"):
        provider.unwrap(wrapped, context)


def test_bad_token(provider: VaultTransitKeyProvider, vault: VaultTransitStub) -> None:
    context = {"model": "m"}
    wrapped = provider.wrap(b"k" * 32, context)
    wrong = "hvs.not-the-token"
    intruder = VaultTransitKeyProvider(vault.url, SecretStr(wrong))
    for call in (
        lambda: intruder.wrap(b"k" * 32, context),
        lambda: intruder.unwrap(wrapped, context),
        intruder.rotate,
        intruder.retire_others,
    ):
        with pytest.raises(KeyProviderError, match="permission denied") as err:
            call()
        assert wrong not in str(err.value)
        assert vault.token not in str(err.value)


def test_no_token_at_all(vault: VaultTransitStub) -> None:
    provider = VaultTransitKeyProvider(vault.url, None)
    with pytest.raises(KeyProviderError, match="permission denied"):
        provider.wrap(b"k" * 32, {"model": "m"})


def test_token_from_vault_token_variable(
    vault: VaultTransitStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", vault.token)
    provider = VaultTransitKeyProvider(vault.url, None)
    assert provider.wrap(b"k" * 32, {"model": "m"}).key_id.endswith(":v1")


def test_server_down(provider: VaultTransitKeyProvider, vault: VaultTransitStub) -> None:
    context = {"model": "m"}
    wrapped = provider.wrap(b"k" * 32, context)
    vault.stop()
    for call in (
        lambda: provider.wrap(b"k" * 32, context),
        lambda: provider.unwrap(wrapped, context),
        provider.rotate,
    ):
        started = time.monotonic()
        with pytest.raises(KeyProviderError, match="unreachable") as err:
            call()
        assert time.monotonic() - started < 5
        assert vault.url in str(err.value)


def test_nothing_listening(dead_url: str) -> None:
    provider = VaultTransitKeyProvider(dead_url, "t")
    started = time.monotonic()
    with pytest.raises(KeyProviderError, match="unreachable"):
        provider.wrap(b"k" * 32, {"model": "m"})
    assert time.monotonic() - started < 5


def test_server_hangs_hits_the_read_timeout(hung_url: str) -> None:
    provider = VaultTransitKeyProvider(hung_url, "t", read_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(KeyProviderError, match="timed out"):
        provider.wrap(b"k" * 32, {"model": "m"})
    assert time.monotonic() - started < 3


def test_retire_before_any_rotation_keeps_working(
    provider: VaultTransitKeyProvider, context: dict[str, str]
) -> None:
    wrapped = provider.wrap(b"k" * 32, context)
    provider.retire_others()  # min_decryption_version = 1: nothing older to retire
    assert provider.unwrap(wrapped, context) == b"k" * 32


def test_from_settings(vault: VaultTransitStub, context: dict[str, str]) -> None:
    settings = Settings(
        key_provider="vault-transit",
        vault_addr=vault.url,
        vault_token=SecretStr(vault.token),
        vault_transit_key="models",
    )
    provider = key_provider_from_settings(settings)
    assert isinstance(provider, VaultTransitKeyProvider)
    wrapped = provider.wrap(b"k" * 32, context)
    assert wrapped.key_id == "vault-transit:transit/models:v1"
    assert provider.unwrap(wrapped, context) == b"k" * 32


def test_key_id_helpers() -> None:
    assert format_key_id("transit", "phiserve", 3) == "vault-transit:transit/phiserve:v3"
    assert parse_key_id("vault-transit:a/b/c:v12") == ("a/b", "c", 12)
    assert ciphertext_version("vault:v7:abcd") == 7
    assert ciphertext_version("vault:7:abcd") is None
    for bad in ("vault-transit:transit:v1", "vault-transit:transit/k:1", "transit/k:v1"):
        with pytest.raises(KeyProviderError):
            parse_key_id(bad)


@pytest.mark.parametrize(("mount", "key"), [("", "k"), ("transit", ""), ("transit", "a/b")])
def test_bad_mount_or_key_is_a_configuration_error(mount: str, key: str) -> None:
    with pytest.raises(ConfigurationError):
        VaultTransitKeyProvider("http://127.0.0.1:1", "t", mount=mount, key=key)


def test_missing_hvac_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hvac", None)  # makes "import hvac" raise ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'phiserve\[vault\]'"):
        VaultTransitKeyProvider("http://127.0.0.1:1", "t")


def test_plain_http_to_a_remote_vault_warns(caplog: pytest.LogCaptureFixture) -> None:
    VaultTransitKeyProvider("http://vault.internal:8200", "t")
    assert "plain HTTP" in caplog.text
    caplog.clear()
    VaultTransitKeyProvider("https://vault.internal:8200", "t")
    VaultTransitKeyProvider("http://127.0.0.1:8200", "t")
    assert "plain HTTP" not in caplog.text

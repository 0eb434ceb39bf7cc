"""The ``local`` key provider: KEKs in a 0600 JSON key file."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.crypto.base import KeyProvider, WrappedKey
from phiserve.crypto.envelope import new_data_key
from phiserve.crypto.local import LocalKeyProvider, context_aad
from phiserve.errors import IntegrityError, KeyProviderError

needs_non_root = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files regardless of mode"
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_satisfies_the_protocol(kek_file: Path) -> None:
    provider: KeyProvider = LocalKeyProvider(kek_file, create=True)
    assert provider.name == "local"


def test_round_trip(kek_file: Path, context: dict[str, str]) -> None:
    provider = LocalKeyProvider(kek_file, create=True)
    data_key = new_data_key()
    wrapped = provider.wrap(data_key, context)
    assert wrapped.key_id == provider.current_key_id
    assert data_key not in wrapped.blob
    assert provider.unwrap(wrapped, context) == data_key
    # A second process reading the same file unwraps it too.
    assert LocalKeyProvider(kek_file).unwrap(wrapped, context) == data_key


def test_key_file_created_0600_in_a_0700_folder(kek_file: Path) -> None:
    LocalKeyProvider(kek_file, create=True)
    assert _mode(kek_file) == 0o600
    assert _mode(kek_file.parent) == 0o700
    data = json.loads(kek_file.read_text())
    assert data["current"] in data["keys"]
    assert len(base64.b64decode(data["keys"][data["current"]])) == 32
    assert not list(kek_file.parent.glob("*.tmp"))  # the atomic write left nothing behind


def test_key_file_0600_even_with_a_permissive_umask(kek_file: Path) -> None:
    old = os.umask(0)
    try:
        LocalKeyProvider(kek_file, create=True)
    finally:
        os.umask(old)
    assert _mode(kek_file) == 0o600
    assert _mode(kek_file.parent) == 0o700


def test_create_keeps_an_existing_key_file(kek_file: Path, context: dict[str, str]) -> None:
    first = LocalKeyProvider(kek_file, create=True)
    wrapped = first.wrap(b"k" * 32, context)
    again = LocalKeyProvider(kek_file, create=True)
    assert again.current_key_id == first.current_key_id
    assert again.unwrap(wrapped, context) == b"k" * 32


def test_missing_key_file(kek_file: Path) -> None:
    with pytest.raises(KeyProviderError, match="not found; run 'phiserve keys init'") as err:
        LocalKeyProvider(kek_file)
    assert str(kek_file) in str(err.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_key_file_readable_by_others_refused(kek_file: Path, mode: int) -> None:
    LocalKeyProvider(kek_file, create=True)
    kek_file.chmod(mode)
    with pytest.raises(KeyProviderError, match=f"mode {mode:o}.*chmod 600") as err:
        LocalKeyProvider(kek_file)
    assert "readable by group or others" in str(err.value)


@needs_non_root
def test_unreadable_key_file(kek_file: Path) -> None:
    LocalKeyProvider(kek_file, create=True)
    kek_file.chmod(0o200)
    try:
        with pytest.raises(KeyProviderError, match="not readable"):
            LocalKeyProvider(kek_file)
    finally:
        kek_file.chmod(0o600)


def test_unreadable_key_file_simulated(kek_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EACCES on read, for runs as root where chmod does not stop reading."""
    LocalKeyProvider(kek_file, create=True)

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(KeyProviderError, match="not readable"):
        LocalKeyProvider(kek_file)


def test_key_path_is_a_folder(kek_file: Path) -> None:
    kek_file.mkdir(parents=True, mode=0o700)
    with pytest.raises(KeyProviderError):
        LocalKeyProvider(kek_file)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "[]",
        '"a string"',
        "{}",
        '{"current": "k1"}',
        '{"keys": {}}',
        '{"current": "k1", "keys": {}}',
        '{"current": "k1", "keys": {"k1": "c2hvcnQ="}}',  # 5 bytes, not 32
        '{"current": "k1", "keys": {"k1": "!!!"}}',
        '{"current": "k1", "keys": {"k1": 42}}',
        '{"current": ["k1"], "keys": {}}',
    ],
)
def test_malformed_key_file(kek_file: Path, content: str) -> None:
    kek_file.parent.mkdir(mode=0o700)
    kek_file.write_text(content)
    kek_file.chmod(0o600)
    with pytest.raises(KeyProviderError, match="is malformed") as err:
        LocalKeyProvider(kek_file)
    assert str(kek_file) in str(err.value)


def test_malformed_key_file_keys_not_an_object(kek_file: Path) -> None:
    kek_file.parent.mkdir(mode=0o700)
    kek_file.write_text('{"current": "k1", "keys": []}')
    kek_file.chmod(0o600)
    with pytest.raises(KeyProviderError, match="is malformed"):
        LocalKeyProvider(kek_file)


def test_wrong_kek_with_the_same_key_id(kek_file: Path, context: dict[str, str]) -> None:
    """A key file whose KEK has the right id but other bytes: the tag does not verify."""
    provider = LocalKeyProvider(kek_file, create=True)
    wrapped = provider.wrap(new_data_key(), context)
    data = json.loads(kek_file.read_text())
    data["keys"][data["current"]] = base64.b64encode(os.urandom(32)).decode()
    kek_file.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match=wrapped.key_id):
        LocalKeyProvider(kek_file).unwrap(wrapped, context)


def test_key_from_another_key_file(tmp_path: Path, context: dict[str, str]) -> None:
    mine = LocalKeyProvider(tmp_path / "a" / "kek.json", create=True)
    theirs = LocalKeyProvider(tmp_path / "b" / "kek.json", create=True)
    wrapped = theirs.wrap(new_data_key(), context)
    with pytest.raises(KeyProviderError, match=wrapped.key_id):
        mine.unwrap(wrapped, context)


@pytest.mark.parametrize("index", [0, 11, 12, 30, -1])
def test_tampered_wrapped_key(kek_file: Path, context: dict[str, str], index: int) -> None:
    """Flipping a nonce, ciphertext or tag byte of the wrapped key."""
    provider = LocalKeyProvider(kek_file, create=True)
    wrapped = provider.wrap(new_data_key(), context)
    blob = bytearray(wrapped.blob)
    blob[index] ^= 0x80
    with pytest.raises(IntegrityError, match="wrong key or tampering"):
        provider.unwrap(WrappedKey(wrapped.key_id, bytes(blob)), context)


def test_unwrap_with_another_context(kek_file: Path, context: dict[str, str]) -> None:
    provider = LocalKeyProvider(kek_file, create=True)
    wrapped = provider.wrap(new_data_key(), context)
    for other in (
        {**context, "version": "2"},
        {**context, "model": "chest-xray"},
        {k: v for k, v in context.items() if k != "digest"},
        {**context, "extra": "x"},
        {},
    ):
        with pytest.raises(IntegrityError):
            provider.unwrap(wrapped, other)


def test_context_order_does_not_matter(kek_file: Path, context: dict[str, str]) -> None:
    provider = LocalKeyProvider(kek_file, create=True)
    data_key = new_data_key()
    wrapped = provider.wrap(data_key, context)
    assert provider.unwrap(wrapped, dict(reversed(list(context.items())))) == data_key
    assert context_aad({"b": "1", "a": "2"}) == context_aad({"a": "2", "b": "1"})


def test_rotate_rewrap_retire(kek_file: Path, context: dict[str, str]) -> None:
    """What ``phiserve keys rotate`` does: new KEK, re-wrap, forget the old KEK."""
    provider = LocalKeyProvider(kek_file, create=True)
    old_id = provider.current_key_id
    data_key = new_data_key()
    old = provider.wrap(data_key, context)

    new_id = provider.rotate()
    assert new_id != old_id
    assert provider.current_key_id == new_id
    # Old KEK still unwraps until retired; re-wrap moves the data key to the new KEK.
    rewrapped = provider.wrap(provider.unwrap(old, context), context)
    assert rewrapped.key_id == new_id
    assert _mode(kek_file) == 0o600

    provider.retire_others()
    assert provider.unwrap(rewrapped, context) == data_key
    with pytest.raises(KeyProviderError, match=old_id):
        provider.unwrap(old, context)
    # The retirement is in the file, not only in memory.
    reloaded = LocalKeyProvider(kek_file)
    assert reloaded.current_key_id == new_id
    assert list(json.loads(kek_file.read_text())["keys"]) == [new_id]
    with pytest.raises(KeyProviderError, match=old_id):
        reloaded.unwrap(old, context)
    assert reloaded.unwrap(rewrapped, context) == data_key


def test_settings_default_to_local(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    provider = key_provider_from_settings(settings, create=True)
    assert isinstance(provider, LocalKeyProvider)
    assert provider.path == tmp_path / "home" / "keys" / "kek.json"
    assert _mode(provider.path) == 0o600

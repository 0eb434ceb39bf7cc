"""Envelope encryption: AES-256-GCM payloads under a fresh data key wrapped by a KEK."""

from __future__ import annotations

import mmap
from dataclasses import replace
from pathlib import Path

import pytest

from phiserve.crypto.base import WrappedKey
from phiserve.crypto.envelope import (
    ALGORITHM,
    EnvelopeHeader,
    derive_key,
    new_data_key,
    open_with_key,
    seal,
    seal_with_key,
)
from phiserve.crypto.local import LocalKeyProvider
from phiserve.errors import IntegrityError

PAYLOAD = b"\x08\x07onnx-bytes" * 1000
AAD = b"breast-cancer|1|sha256:abab"


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.fixture
def provider(kek_file: Path) -> LocalKeyProvider:
    return LocalKeyProvider(kek_file, create=True)


def _open(
    provider: LocalKeyProvider,
    header: EnvelopeHeader,
    ciphertext: bytes,
    aad: bytes,
    context: dict[str, str],
) -> bytes:
    """What a loader does: unwrap the data key, then open the payload."""
    return open_with_key(provider.unwrap(header.wrapped, context), header, ciphertext, aad)


def test_round_trip(provider: LocalKeyProvider, context: dict[str, str]) -> None:
    header, ciphertext, data_key = seal(provider, PAYLOAD, AAD, context)
    assert len(data_key) == 32
    assert PAYLOAD not in ciphertext
    assert len(ciphertext) == len(PAYLOAD) + 16  # GCM tag, no padding
    assert _open(provider, header, ciphertext, AAD, context) == PAYLOAD


def test_each_seal_uses_a_fresh_data_key_and_nonce(
    provider: LocalKeyProvider, context: dict[str, str]
) -> None:
    first = seal(provider, PAYLOAD, AAD, context)
    second = seal(provider, PAYLOAD, AAD, context)
    assert first[2] != second[2]
    assert first[0].nonce != second[0].nonce
    assert first[1] != second[1]


def test_header_json_round_trip(provider: LocalKeyProvider, context: dict[str, str]) -> None:
    header, ciphertext, _ = seal(provider, PAYLOAD, AAD, context)
    data = header.to_json()
    assert data["algorithm"] == ALGORITHM
    assert set(data) == {"algorithm", "key_id", "wrapped_key", "nonce"}
    again = EnvelopeHeader.from_json(data)
    assert again == header
    assert _open(provider, again, ciphertext, AAD, context) == PAYLOAD


def test_unknown_algorithm_refused(provider: LocalKeyProvider, context: dict[str, str]) -> None:
    header, _, _ = seal(provider, PAYLOAD, AAD, context)
    data = {**header.to_json(), "algorithm": "AES-128-CBC"}
    with pytest.raises(IntegrityError, match="unsupported encryption algorithm"):
        EnvelopeHeader.from_json(data)


def test_wrong_data_key(provider: LocalKeyProvider, context: dict[str, str]) -> None:
    header, ciphertext, _ = seal(provider, PAYLOAD, AAD, context)
    with pytest.raises(IntegrityError, match="failed authentication"):
        open_with_key(new_data_key(), header, ciphertext, AAD)


@pytest.mark.parametrize("index", [0, 1000, -17, -1])
def test_flipped_ciphertext_byte(
    provider: LocalKeyProvider, context: dict[str, str], index: int
) -> None:
    header, ciphertext, data_key = seal(provider, PAYLOAD, AAD, context)
    with pytest.raises(IntegrityError):
        open_with_key(data_key, header, _flip(ciphertext, index % len(ciphertext)), AAD)


def test_truncated_or_extended_ciphertext(
    provider: LocalKeyProvider, context: dict[str, str]
) -> None:
    header, ciphertext, data_key = seal(provider, PAYLOAD, AAD, context)
    for bad in (ciphertext[:-1], ciphertext + b"\0"):
        with pytest.raises(IntegrityError, match="failed authentication"):
            open_with_key(data_key, header, bad, AAD)
    for bad in (b"", ciphertext[:8]):
        with pytest.raises(IntegrityError, match="shorter than its authentication tag"):
            open_with_key(data_key, header, bad, AAD)


def test_flipped_nonce(provider: LocalKeyProvider, context: dict[str, str]) -> None:
    header, ciphertext, data_key = seal(provider, PAYLOAD, AAD, context)
    bad = replace(header, nonce=_flip(header.nonce, 5))
    with pytest.raises(IntegrityError):
        open_with_key(data_key, bad, ciphertext, AAD)


@pytest.mark.parametrize(
    "aad", [b"breast-cancer|2|sha256:abab", b"chest-xray|1|sha256:abab", b"", AAD + b"x"]
)
def test_other_associated_data(
    provider: LocalKeyProvider, context: dict[str, str], aad: bytes
) -> None:
    """The AAD binds the payload to its model, version and digest: a swapped file fails."""
    header, ciphertext, data_key = seal(provider, PAYLOAD, AAD, context)
    with pytest.raises(IntegrityError):
        open_with_key(data_key, header, ciphertext, aad)


def test_swapped_payloads_between_versions(
    provider: LocalKeyProvider, context: dict[str, str]
) -> None:
    aad1, aad2 = b"m|1|d1", b"m|2|d2"
    h1, _, _ = seal(provider, b"version one", aad1, context)
    h2, c2, _ = seal(provider, b"version two", aad2, context)
    # Artifact of version 2 under the header of version 1, and the whole pair swapped.
    with pytest.raises(IntegrityError):
        _open(provider, h1, c2, aad1, context)
    with pytest.raises(IntegrityError):
        _open(provider, h2, c2, aad1, context)


def test_swapped_wrapped_key(provider: LocalKeyProvider, context: dict[str, str]) -> None:
    h1, c1, _ = seal(provider, PAYLOAD, AAD, context)
    h2, _, _ = seal(provider, PAYLOAD, AAD, context)
    with pytest.raises(IntegrityError):
        _open(provider, replace(h1, wrapped=h2.wrapped), c1, AAD, context)


def test_seal_with_key_reuses_a_wrapped_key(
    provider: LocalKeyProvider, context: dict[str, str]
) -> None:
    """Audit segments: one data key, many payloads, each with its own nonce."""
    data_key = new_data_key()
    wrapped = provider.wrap(data_key, context)
    h1, c1 = seal_with_key(data_key, wrapped, b"a", AAD)
    h2, c2 = seal_with_key(data_key, wrapped, b"a", AAD)
    assert h1.nonce != h2.nonce
    assert c1 != c2
    assert open_with_key(data_key, h2, c2, AAD) == b"a"


def test_wrapped_key_json_round_trip() -> None:
    wrapped = WrappedKey(key_id="k1", blob=bytes(range(60)))
    assert WrappedKey.from_json(wrapped.to_json()) == wrapped


def test_derive_key_separates_purposes() -> None:
    data_key = new_data_key()
    mac, other = derive_key(data_key, "manifest-mac"), derive_key(data_key, "audit")
    assert len(mac) == 32
    assert mac != other
    assert mac != data_key
    assert derive_key(data_key, "manifest-mac") == mac
    assert derive_key(new_data_key(), "manifest-mac") != mac


def test_new_data_key_is_256_bits_and_random() -> None:
    keys = {new_data_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(len(k) == 32 for k in keys)


def test_truncated_nonce_is_an_integrity_error(
    provider: LocalKeyProvider, context: dict[str, str]
) -> None:
    header, ciphertext, data_key = seal(provider, PAYLOAD, AAD, context)
    with pytest.raises(IntegrityError):
        open_with_key(data_key, replace(header, nonce=header.nonce[:4]), ciphertext, AAD)


@pytest.mark.parametrize("field", ["nonce", "wrapped_key", "key_id"])
def test_header_missing_field_is_an_integrity_error(
    provider: LocalKeyProvider, context: dict[str, str], field: str
) -> None:
    header, _, _ = seal(provider, PAYLOAD, AAD, context)
    missing = {k: v for k, v in header.to_json().items() if k != field}
    with pytest.raises(IntegrityError):
        EnvelopeHeader.from_json(missing)


@pytest.mark.parametrize("field", ["nonce", "wrapped_key"])
def test_header_bad_base64_is_an_integrity_error(
    provider: LocalKeyProvider, context: dict[str, str], field: str
) -> None:
    header, _, _ = seal(provider, PAYLOAD, AAD, context)
    with pytest.raises(IntegrityError):
        EnvelopeHeader.from_json({**header.to_json(), field: "not base64!"})


def test_large_payload_round_trip_and_tamper(
    provider: LocalKeyProvider, context: dict[str, str], tmp_path: Path
) -> None:
    """A model-sized payload, read from an mmap as the loader does, takes the same checks."""
    payload = bytes(range(256)) * (6 * 2**20 // 256) + b"tail"
    header, ciphertext, data_key = seal(provider, payload, AAD, context)
    assert open_with_key(data_key, header, memoryview(ciphertext), AAD) == payload
    artifact = tmp_path / "model.onnx.enc"
    artifact.write_bytes(ciphertext)
    with open(artifact, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
        assert open_with_key(data_key, header, view, AAD) == payload
    for index in (0, len(payload) // 2, len(ciphertext) - 1):
        with pytest.raises(IntegrityError, match="failed authentication"):
            open_with_key(data_key, header, _flip(ciphertext, index), AAD)


def test_empty_payload_round_trip(provider: LocalKeyProvider, context: dict[str, str]) -> None:
    header, ciphertext, data_key = seal(provider, b"", AAD, context)
    assert len(ciphertext) == 16
    assert open_with_key(data_key, header, ciphertext, AAD) == b""
    with pytest.raises(IntegrityError):
        open_with_key(data_key, header, _flip(ciphertext, 3), AAD)

"""The ``aws-kms`` key provider against the real boto3 client and moto's server over HTTP."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest

from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.crypto.aws_kms import AwsKmsKeyProvider
from phiserve.crypto.base import KeyProvider, WrappedKey
from phiserve.crypto.envelope import new_data_key, open_with_key, seal
from phiserve.errors import ConfigurationError, IntegrityError, KeyProviderError

pytestmark = pytest.mark.slow


def _new_key(admin: Any, description: str = "phiserve test KEK") -> str:
    return str(admin.create_key(Description=description)["KeyMetadata"]["Arn"])


@pytest.fixture
def key_arn(kms_admin: Any) -> str:
    return _new_key(kms_admin)


@pytest.fixture
def provider(key_arn: str, kms_url: str) -> AwsKmsKeyProvider:
    return AwsKmsKeyProvider(key_arn, region="us-east-1", endpoint_url=kms_url)


def _assert_clean(message: str, data_key: bytes) -> None:
    """Error messages name keys and causes, never key material or credentials."""
    assert data_key.hex() not in message
    assert "testing" not in message  # the fake access key and secret


def test_satisfies_the_protocol(provider: AwsKmsKeyProvider) -> None:
    typed: KeyProvider = provider
    assert typed.name == "aws-kms"
    assert "testing" not in repr(provider)


def test_round_trip(provider: AwsKmsKeyProvider, key_arn: str, context: dict[str, str]) -> None:
    data_key = new_data_key()
    wrapped = provider.wrap(data_key, context)
    assert wrapped.key_id == key_arn
    assert data_key not in wrapped.blob
    assert provider.unwrap(wrapped, context) == data_key
    # Through the JSON form a manifest stores, and a second provider (a restarted server).
    stored = WrappedKey.from_json(wrapped.to_json())
    again = AwsKmsKeyProvider(key_arn, region="us-east-1", endpoint_url=provider._endpoint())
    assert again.unwrap(stored, context) == data_key


def test_envelope_through_kms(provider: AwsKmsKeyProvider, context: dict[str, str]) -> None:
    header, ciphertext, _ = seal(provider, b"model bytes", b"aad", context)
    data_key = provider.unwrap(header.wrapped, context)
    assert open_with_key(data_key, header, ciphertext, b"aad") == b"model bytes"


def test_alias_and_key_id_resolve_to_the_arn(
    kms_admin: Any, key_arn: str, kms_url: str, context: dict[str, str]
) -> None:
    key_id = key_arn.rsplit("/", 1)[1]
    kms_admin.create_alias(AliasName=f"alias/phiserve-{key_id[:8]}", TargetKeyId=key_id)
    for name in (key_id, f"alias/phiserve-{key_id[:8]}"):
        provider = AwsKmsKeyProvider(name, endpoint_url=kms_url)
        wrapped = provider.wrap(b"k" * 32, context)
        assert wrapped.key_id == key_arn
        assert provider.unwrap(wrapped, context) == b"k" * 32
        assert provider.check() == key_arn


def test_region_taken_from_the_key_arn(
    kms_admin: Any, kms_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    arn = _new_key(kms_admin)
    provider = AwsKmsKeyProvider(arn, endpoint_url=kms_url)
    assert provider._client.meta.region_name == "us-east-1"


def test_no_region_is_a_configuration_error(kms_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(ConfigurationError, match="PHISERVE_AWS_REGION"):
        AwsKmsKeyProvider("alias/phiserve")


@pytest.mark.parametrize(
    "change",
    [
        {"version": "2"},
        {"model": "chest-xray"},
        {"digest": "sha256:" + "cd" * 32},
    ],
)
def test_encryption_context_mismatch(
    provider: AwsKmsKeyProvider, context: dict[str, str], change: dict[str, str]
) -> None:
    data_key = new_data_key()
    wrapped = provider.wrap(data_key, context)
    with pytest.raises(IntegrityError, match="InvalidCiphertextException") as err:
        provider.unwrap(wrapped, {**context, **change})
    assert wrapped.key_id in str(err.value)
    _assert_clean(str(err.value), data_key)
    with pytest.raises(IntegrityError):
        provider.unwrap(wrapped, {})


@pytest.mark.parametrize("index", [-1, -10, 40, 60])
def test_tampered_blob(provider: AwsKmsKeyProvider, context: dict[str, str], index: int) -> None:
    wrapped = provider.wrap(new_data_key(), context)
    blob = bytearray(wrapped.blob)
    blob[index] ^= 0x01
    with pytest.raises(IntegrityError, match=wrapped.key_id):
        provider.unwrap(WrappedKey(wrapped.key_id, bytes(blob)), context)


def test_garbage_blob(provider: AwsKmsKeyProvider, key_arn: str, context: dict[str, str]) -> None:
    with pytest.raises(IntegrityError):
        provider.unwrap(WrappedKey(key_arn, b"\x00" * 8), context)


def test_key_id_swapped_for_another_cmk(
    provider: AwsKmsKeyProvider, kms_admin: Any, context: dict[str, str]
) -> None:
    """A blob that claims another CMK is refused: KMS checks the KeyId we pass.

    Real KMS answers IncorrectKeyException (IntegrityError); moto answers AccessDenied.
    """
    other = _new_key(kms_admin)
    wrapped = provider.wrap(new_data_key(), context)
    with pytest.raises((IntegrityError, KeyProviderError), match=other):
        provider.unwrap(WrappedKey(other, wrapped.blob), context)


def test_disabled_key(
    provider: AwsKmsKeyProvider, kms_admin: Any, key_arn: str, context: dict[str, str]
) -> None:
    data_key = new_data_key()
    wrapped = provider.wrap(data_key, context)
    kms_admin.disable_key(KeyId=key_arn)
    with pytest.raises(KeyProviderError, match="DisabledException: the key is disabled") as err:
        provider.unwrap(wrapped, context)
    assert key_arn in str(err.value)
    _assert_clean(str(err.value), data_key)
    with pytest.raises(KeyProviderError, match="disabled"):
        provider.wrap(data_key, context)
    with pytest.raises(KeyProviderError, match="Disabled"):
        provider.check()
    kms_admin.enable_key(KeyId=key_arn)
    assert provider.unwrap(wrapped, context) == data_key


def test_key_pending_deletion(
    provider: AwsKmsKeyProvider, kms_admin: Any, key_arn: str, context: dict[str, str]
) -> None:
    wrapped = provider.wrap(new_data_key(), context)
    kms_admin.schedule_key_deletion(KeyId=key_arn, PendingWindowInDays=7)
    with pytest.raises(KeyProviderError, match="KMSInvalidStateException"):
        provider.unwrap(wrapped, context)


def test_unknown_key(kms_url: str, context: dict[str, str]) -> None:
    arn = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    provider = AwsKmsKeyProvider(arn, endpoint_url=kms_url)
    with pytest.raises(KeyProviderError, match=f"{arn} failed: NotFoundException"):
        provider.wrap(new_data_key(), context)
    with pytest.raises(KeyProviderError, match="NotFoundException"):
        provider.check()


def test_server_down_fails_fast(key_arn: str, dead_url: str, context: dict[str, str]) -> None:
    provider = AwsKmsKeyProvider(key_arn, endpoint_url=dead_url)
    wrapped = WrappedKey(key_arn, b"\x01" * 150)
    for call in (
        lambda: provider.wrap(b"k" * 32, context),
        lambda: provider.unwrap(wrapped, context),
    ):
        started = time.monotonic()
        with pytest.raises(KeyProviderError, match="unreachable") as err:
            call()
        assert time.monotonic() - started < 5
        assert key_arn in str(err.value)
        assert dead_url in str(err.value)


def test_server_stopped_after_start(kms_admin: Any, kms_url: str, context: dict[str, str]) -> None:
    """A second moto server that goes away while the provider holds a connection to it."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    arn = _new_key(kms_admin)  # moto's backends are shared by every server in this process
    provider = AwsKmsKeyProvider(arn, endpoint_url=url)
    wrapped = provider.wrap(b"k" * 32, context)
    server.stop()
    server._server.server_close()  # stop() leaves the socket open; close it as a crash would
    started = time.monotonic()
    with pytest.raises(KeyProviderError, match="unreachable"):
        provider.unwrap(wrapped, context)
    assert time.monotonic() - started < 5


def test_server_hangs_hits_the_read_timeout(
    key_arn: str, hung_url: str, context: dict[str, str]
) -> None:
    provider = AwsKmsKeyProvider(
        key_arn, endpoint_url=hung_url, read_timeout_s=0.5, connect_timeout_s=0.5
    )
    started = time.monotonic()
    with pytest.raises(KeyProviderError, match="ReadTimeoutError"):
        provider.wrap(b"k" * 32, context)
    # Two attempts of 0.5 s plus standard-mode back-off (at most 1 s).
    assert time.monotonic() - started < 4


def test_default_timeouts_and_retries_are_short(provider: AwsKmsKeyProvider) -> None:
    config = provider._client.meta.config
    assert config.connect_timeout <= 3
    assert config.read_timeout <= 10
    assert config.retries["total_max_attempts"] <= 3


def test_no_credentials(
    key_arn: str, kms_url: str, monkeypatch: pytest.MonkeyPatch, context: dict[str, str]
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    provider = AwsKmsKeyProvider(key_arn, endpoint_url=kms_url)
    with pytest.raises(KeyProviderError, match="no usable AWS credentials"):
        provider.wrap(b"k" * 32, context)


def test_rotate_without_target_keeps_the_cmk(
    provider: AwsKmsKeyProvider, key_arn: str, context: dict[str, str]
) -> None:
    """KMS rotates material itself: same ARN, old wraps still unwrap, nothing to retire."""
    wrapped = provider.wrap(b"k" * 32, context)
    assert provider.rotate() == key_arn
    provider.retire_others()
    assert provider.unwrap(wrapped, context) == b"k" * 32
    assert provider.wrap(b"k" * 32, context).key_id == key_arn


def test_rotate_to_another_cmk_rewrap_and_retire(
    kms_admin: Any, key_arn: str, kms_url: str, context: dict[str, str]
) -> None:
    """``phiserve keys rotate`` with a new CMK: re-wrap (unwrap + wrap), then retire the old."""
    new_arn = _new_key(kms_admin, "phiserve KEK 2")
    new_key_id = new_arn.rsplit("/", 1)[1]
    provider = AwsKmsKeyProvider(
        key_arn, endpoint_url=kms_url, rotate_to=new_key_id, disable_retired=True
    )
    data_key = new_data_key()
    old = provider.wrap(data_key, context)

    assert provider.rotate() == new_arn
    assert provider.current_key_id == new_arn
    assert provider.rotate() == new_arn  # idempotent
    rewrapped = provider.wrap(provider.unwrap(old, context), context)
    assert rewrapped.key_id == new_arn
    assert provider.unwrap(rewrapped, context) == data_key

    provider.retire_others()
    assert kms_admin.describe_key(KeyId=key_arn)["KeyMetadata"]["KeyState"] == "Disabled"
    with pytest.raises(KeyProviderError, match=f"{key_arn} was retired"):
        provider.unwrap(old, context)
    # A fresh process configured with the new CMK unwraps the re-wrapped key; the old one fails
    # because KMS now refuses the disabled CMK.
    fresh = AwsKmsKeyProvider(new_arn, endpoint_url=kms_url)
    assert fresh.unwrap(rewrapped, context) == data_key
    with pytest.raises(KeyProviderError, match="DisabledException"):
        fresh.unwrap(old, context)


def test_retire_does_not_disable_by_default(
    kms_admin: Any, key_arn: str, kms_url: str, context: dict[str, str]
) -> None:
    new_arn = _new_key(kms_admin)
    provider = AwsKmsKeyProvider(key_arn, endpoint_url=kms_url, rotate_to=new_arn)
    provider.rotate()
    provider.retire_others()
    assert kms_admin.describe_key(KeyId=key_arn)["KeyMetadata"]["KeyState"] == "Enabled"


def test_rewrap_with_re_encrypt(
    kms_admin: Any, key_arn: str, kms_url: str, context: dict[str, str]
) -> None:
    new_arn = _new_key(kms_admin)
    provider = AwsKmsKeyProvider(key_arn, endpoint_url=kms_url, rotate_to=new_arn)
    data_key = new_data_key()
    old = provider.wrap(data_key, context)
    provider.rotate()
    moved = provider.rewrap(old, context)
    assert moved.key_id == new_arn
    assert moved.blob != old.blob
    assert provider.unwrap(moved, context) == data_key
    with pytest.raises(IntegrityError):
        provider.rewrap(old, {**context, "version": "9"})


def test_rotate_to_a_disabled_cmk_is_refused(kms_admin: Any, key_arn: str, kms_url: str) -> None:
    new_arn = _new_key(kms_admin)
    kms_admin.disable_key(KeyId=new_arn)
    provider = AwsKmsKeyProvider(key_arn, endpoint_url=kms_url, rotate_to=new_arn)
    with pytest.raises(KeyProviderError, match="state is Disabled"):
        provider.rotate()
    assert provider.current_key_id == key_arn


def test_rotate_away_from_a_disabled_cmk(
    kms_admin: Any, key_arn: str, kms_url: str, context: dict[str, str]
) -> None:
    """The old CMK being unusable does not block switching; its data keys then fail loudly."""
    new_arn = _new_key(kms_admin)
    provider = AwsKmsKeyProvider(key_arn, endpoint_url=kms_url, rotate_to=new_arn)
    old = provider.wrap(b"k" * 32, context)
    kms_admin.disable_key(KeyId=key_arn)
    assert provider.rotate() == new_arn
    with pytest.raises(KeyProviderError, match=f"{key_arn} failed: DisabledException"):
        provider.unwrap(old, context)


def test_rotate_to_an_asymmetric_key_is_refused(kms_admin: Any, key_arn: str, kms_url: str) -> None:
    rsa = kms_admin.create_key(KeyUsage="SIGN_VERIFY", KeySpec="RSA_2048")["KeyMetadata"]["Arn"]
    provider = AwsKmsKeyProvider(key_arn, endpoint_url=kms_url, rotate_to=rsa)
    with pytest.raises(KeyProviderError, match="not a symmetric"):
        provider.rotate()


def test_from_settings(key_arn: str, kms_url: str, context: dict[str, str]) -> None:
    settings = Settings(
        key_provider="aws-kms",
        aws_kms_key_id=key_arn,
        aws_region="us-east-1",
        aws_endpoint_url=kms_url,
    )
    provider = key_provider_from_settings(settings)
    assert isinstance(provider, AwsKmsKeyProvider)
    assert provider.unwrap(provider.wrap(b"k" * 32, context), context) == b"k" * 32


def test_missing_boto3_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes "import boto3" raise ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'phiserve\[aws\]'"):
        AwsKmsKeyProvider("alias/phiserve", region="us-east-1")


def test_empty_key_id_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="aws_kms_key_id"):
        AwsKmsKeyProvider("")

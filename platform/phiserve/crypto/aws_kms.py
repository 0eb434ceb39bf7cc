"""The ``aws-kms`` key provider: data keys wrapped by an AWS KMS symmetric key (CMK).

KEK material never leaves KMS: ``wrap`` is ``kms:Encrypt`` of the 32-byte data key and ``unwrap``
is ``kms:Decrypt``. The caller's ``context`` is passed as the KMS *encryption context*, which KMS
binds to the ciphertext as AES-GCM associated data, so a wrapped key only unwraps with the same
context (and KMS logs it in CloudTrail, which is why contexts hold names, versions and digests,
never PHI).

Rotation. KMS rotates a key's backing material itself (automatic or on-demand rotation); old
material stays available for decryption under the same key ARN, so there is nothing to retire
and no re-wrap is required. Re-wrapping under the same ARN is harmless and moves a data key to
the newest material. Moving to a *different* CMK (a new account, region or key policy) is what
:meth:`AwsKmsKeyProvider.rotate` does when ``rotate_to`` is configured; the repository then
re-wraps every data key (``unwrap`` + ``wrap``, or :meth:`AwsKmsKeyProvider.rewrap`, which uses
``kms:ReEncrypt`` so the plaintext data key never leaves KMS).

boto3 is an optional dependency (``pip install 'phiserve[aws]'``); it is imported only when this
provider is built, so the server runs without it when another provider is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from phiserve.crypto.base import WrappedKey
from phiserve.errors import ConfigurationError, IntegrityError, KeyProviderError, PhiserveError

if TYPE_CHECKING:
    from phiserve.config import Settings

log = logging.getLogger(__name__)

# KMS error codes that mean "this ciphertext does not authenticate under this key and context":
# tampering, a swapped blob or key id, or a different encryption context.
_INTEGRITY_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})

# Short, fixed explanations: KMS messages are not echoed (some echo request values).
_HINTS = {
    "NotFoundException": "the key does not exist in this account and region",
    "DisabledException": "the key is disabled",
    "KMSInvalidStateException": "the key's state does not allow this (pending deletion?)",
    "KeyUnavailableException": "the key is temporarily unavailable",
    "AccessDeniedException": "access denied (check the key policy and IAM permissions)",
    "UnrecognizedClientException": "the AWS credentials are not valid",
    "InvalidSignatureException": "the AWS credentials are not valid",
    "ExpiredTokenException": "the AWS session credentials have expired",
    "InvalidKeyUsageException": "the key is not a symmetric ENCRYPT_DECRYPT key",
    "DependencyTimeoutException": "KMS timed out",
    "KMSInternalException": "KMS had an internal error",
    "ThrottlingException": "KMS throttled the request",
    "LimitExceededException": "KMS request limit exceeded",
}


def _import_boto3() -> tuple[Any, Any]:
    """boto3 and botocore.config, or a ConfigurationError that says how to install them."""
    try:
        import boto3
        from botocore import config as botocore_config
    except ImportError:
        raise ConfigurationError(
            "key provider 'aws-kms' needs boto3, which is not installed; "
            "install it with: pip install 'phiserve[aws]'"
        ) from None
    return boto3, botocore_config


def _region_from_arn(key_id: str) -> str | None:
    """The region of a key or alias ARN (``arn:aws:kms:<region>:<account>:key/<id>``)."""
    parts = key_id.split(":")
    if len(parts) >= 6 and parts[0] == "arn" and parts[2] == "kms" and parts[3]:
        return parts[3]
    return None


class AwsKmsKeyProvider:
    """Wraps data keys with ``kms:Encrypt`` / ``kms:Decrypt`` under one current CMK.

    ``key_id`` may be a key id, key ARN, alias name or alias ARN; wrapped keys always record the
    key ARN that KMS reports, and ``unwrap`` passes it back as ``KeyId`` so KMS refuses a blob
    that claims one key but was made under another.
    """

    name = "aws-kms"

    def __init__(
        self,
        key_id: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        rotate_to: str | None = None,
        disable_retired: bool = False,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 5.0,
        max_attempts: int = 2,
        client: Any | None = None,
    ) -> None:
        """Build a provider for ``key_id``.

        ``rotate_to`` is the CMK that :meth:`rotate` switches to (None: KMS rotates material
        itself). ``disable_retired`` makes :meth:`retire_others` call ``kms:DisableKey`` on the
        CMKs rotated away from; off by default because a CMK may be shared and the serving role
        should not hold that permission. Timeouts and ``max_attempts`` (total, first try
        included) are short so an unreachable KMS fails start-up in seconds, not minutes.
        ``client`` injects a ready boto3 KMS client (tests, custom sessions).
        """
        if not key_id:
            raise ConfigurationError("key provider 'aws-kms' needs a KMS key id (aws_kms_key_id)")
        self._current = key_id
        self._rotate_to = rotate_to or None
        self._disable_retired = disable_retired
        self._previous: list[str] = []
        self._retired: set[str] = set()
        if client is None:
            boto3, botocore_config = _import_boto3()
            from botocore.exceptions import BotoCoreError

            config = botocore_config.Config(
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                retries={"total_max_attempts": max_attempts, "mode": "standard"},
            )
            try:
                # A private session: boto3's default session is not safe to share across threads.
                client = boto3.session.Session().client(
                    "kms",
                    region_name=region or _region_from_arn(key_id),
                    endpoint_url=endpoint_url,
                    config=config,
                )
            except BotoCoreError as exc:
                # NoRegionError, a malformed endpoint URL, a broken AWS config file, ...
                raise ConfigurationError(
                    f"cannot build the AWS KMS client for key {key_id}: {type(exc).__name__}; "
                    "set PHISERVE_AWS_REGION (or AWS_REGION) and check PHISERVE_AWS_ENDPOINT_URL"
                ) from None
        self._client = client

    @classmethod
    def from_settings(cls, settings: Settings, purpose: str = "models") -> AwsKmsKeyProvider:
        """Build from ``aws_kms_key_id`` (or ``aws_audit_kms_key_id`` for the audit trail),
        ``aws_region`` and ``aws_endpoint_url``.

        Credentials come from boto3's usual chain (environment, web identity / IRSA, instance
        profile). A rotation target is read from ``aws_kms_rotate_to_key_id``.
        """
        key_id = settings.aws_kms_key_id
        if purpose == "audit" and settings.aws_audit_kms_key_id:
            key_id = settings.aws_audit_kms_key_id
        return cls(
            key_id or "",
            region=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
            rotate_to=settings.aws_kms_rotate_to_key_id if purpose == "models" else None,
        )

    def __repr__(self) -> str:
        return f"AwsKmsKeyProvider(key_id={self._current!r})"

    @property
    def current_key_id(self) -> str:
        """The configured id of the CMK that new data keys are wrapped under."""
        return self._current

    # --- the KeyProvider protocol ----------------------------------------------------------------
    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Encrypt ``data_key`` under the current CMK with ``context`` as encryption context."""
        kwargs: dict[str, Any] = {"KeyId": self._current, "Plaintext": data_key}
        if context:
            kwargs["EncryptionContext"] = dict(context)
        response = self._call("encrypt", self._current, kwargs)
        return WrappedKey(key_id=response["KeyId"], blob=response["CiphertextBlob"])

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Decrypt a data key; KMS checks the key id and the encryption context."""
        self._refuse_retired(wrapped.key_id)
        kwargs: dict[str, Any] = {"CiphertextBlob": wrapped.blob, "KeyId": wrapped.key_id}
        if context:
            kwargs["EncryptionContext"] = dict(context)
        response = self._call("decrypt", wrapped.key_id, kwargs)
        return bytes(response["Plaintext"])

    def rotate(self) -> str:
        """Make the ``rotate_to`` CMK current and return its ARN.

        Without ``rotate_to`` this only checks that the current CMK is usable and returns its
        ARN: KMS rotates the backing material itself and keeps old material for decryption.
        """
        if self._rotate_to is None:
            log.info("aws-kms: no rotation target configured; KMS rotates key material itself")
            return self._describe_usable(self._current)
        new_arn = self._describe_usable(self._rotate_to)
        # The old CMK may already be unusable (that can be why we rotate): only its ARN is needed.
        old_arn = self._describe(self._current)["Arn"]
        if new_arn != old_arn:
            self._previous.append(old_arn)
        self._current = new_arn
        return new_arn

    def retire_others(self) -> None:
        """Stop unwrapping under CMKs rotated away from (and disable them if configured).

        KMS keeps every version of a CMK's backing material, so without a CMK switch there is
        nothing to retire.
        """
        for arn in self._previous:
            if self._disable_retired:
                self._call("disable_key", arn, {"KeyId": arn})
            self._retired.add(arn)
        self._previous.clear()

    # --- beyond the protocol ---------------------------------------------------------------------
    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        """Re-wrap under the current CMK with ``kms:ReEncrypt``: the data key stays inside KMS."""
        self._refuse_retired(wrapped.key_id)
        kwargs: dict[str, Any] = {
            "CiphertextBlob": wrapped.blob,
            "SourceKeyId": wrapped.key_id,
            "DestinationKeyId": self._current,
        }
        if context:
            kwargs["SourceEncryptionContext"] = dict(context)
            kwargs["DestinationEncryptionContext"] = dict(context)
        response = self._call("re_encrypt", wrapped.key_id, kwargs)
        return WrappedKey(key_id=response["KeyId"], blob=response["CiphertextBlob"])

    def check(self) -> str:
        """Check that the current CMK exists, is enabled and can encrypt; return its ARN."""
        return self._describe_usable(self._current)

    # --- helpers ---------------------------------------------------------------------------------
    def _refuse_retired(self, key_id: str) -> None:
        if key_id in self._retired:
            raise KeyProviderError(f"KMS key {key_id} was retired by a key rotation")

    def _describe(self, key_id: str) -> dict[str, Any]:
        return dict(self._call("describe_key", key_id, {"KeyId": key_id})["KeyMetadata"])

    def _describe_usable(self, key_id: str) -> str:
        meta = self._describe(key_id)
        arn = str(meta["Arn"])
        if meta.get("KeyState", "Enabled") != "Enabled":
            raise KeyProviderError(f"KMS key {arn} is not usable: its state is {meta['KeyState']}")
        if meta.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT" or meta.get(
            "KeySpec", "SYMMETRIC_DEFAULT"
        ) not in ("SYMMETRIC_DEFAULT",):
            raise KeyProviderError(f"KMS key {arn} is not a symmetric ENCRYPT_DECRYPT key")
        return arn

    def _call(self, operation: str, key_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Call one KMS operation, turning every botocore failure into a typed phiserve error."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, operation)(**kwargs)
        except ClientError as exc:
            raise _from_client_error(exc, operation, key_id) from None
        except BotoCoreError as exc:
            raise _from_botocore_error(exc, operation, key_id, self._endpoint()) from None

    def _endpoint(self) -> str:
        try:
            return str(self._client.meta.endpoint_url)
        except AttributeError:
            return "AWS KMS"


def _from_client_error(exc: Any, operation: str, key_id: str) -> PhiserveError:
    """Map a KMS error response to IntegrityError (does not authenticate) or KeyProviderError."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    if code in _INTEGRITY_CODES:
        return IntegrityError(
            f"data key does not unwrap under KMS key {key_id} "
            f"(wrong key, different encryption context or tampering; {code})"
        )
    hint = _HINTS.get(code, "request refused")
    if code == "AccessDeniedException":
        # The principal and action in AWS's message are what an operator needs to fix the policy;
        # the message never carries key material.
        detail = str(error.get("Message", ""))[:300]
        hint = f"{hint}: {detail}" if detail else hint
    return KeyProviderError(f"AWS KMS {operation} with key {key_id} failed: {code}: {hint}")


def _from_botocore_error(
    exc: Exception, operation: str, key_id: str, endpoint: str
) -> PhiserveError:
    """Map a client-side botocore failure (network, credentials) to KeyProviderError.

    Only the exception type is reported: some botocore messages echo request parameters.
    """
    from botocore import exceptions as bce

    kind = type(exc).__name__
    if isinstance(exc, bce.HTTPClientError | bce.ConnectionError):
        cause = f"KMS unreachable at {endpoint} ({kind})"
    elif isinstance(
        exc, bce.NoCredentialsError | bce.PartialCredentialsError | bce.CredentialRetrievalError
    ):
        cause = f"no usable AWS credentials ({kind})"
    else:
        cause = kind
    return KeyProviderError(f"AWS KMS {operation} with key {key_id} failed: {cause}")

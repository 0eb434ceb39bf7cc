"""All runtime settings of phiserve, in one place.

Every field is read from the environment with the prefix ``PHISERVE_`` (for example
``PHISERVE_PORT=8080``), so ``make serve``, the container image and the Helm chart run the same
command with different environments. Tracing is configured by the standard ``OTEL_*`` variables,
not here.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from phiserve.errors import ConfigurationError

KeyProviderName = Literal["local", "aws-kms", "vault-transit"]
ExecutionProvider = Literal["auto", "cuda", "cpu"]


class BatchingSettings(BaseModel):
    """Dynamic batching of one model (Triton's dynamic_batching, in milliseconds)."""

    enabled: bool = True
    max_batch_size: PositiveInt = 32
    max_queue_delay_ms: float = Field(default=1.0, ge=0, le=1000)
    # Requests waiting beyond this many are refused with 503 + Retry-After, never queued.
    max_queue_size: PositiveInt = 512


class CdsClient(BaseModel):
    """One EHR trusted to call the CDS Hooks services (an entry of ``PHISERVE_CDS_CLIENTS``).

    Its JWTs are verified against the keys in ``jwks_file`` or at ``jwks_url`` (one of the two);
    a token whose ``jku`` header names a URL in ``jku`` is verified against that set instead.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    iss: str = Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")
    jwks_file: Path | None = None
    jwks_url: str | None = None
    # JWK Set URLs this client may name in a token's ``jku`` header (the spec's jku allow-list).
    jku: list[str] = Field(default_factory=list, max_length=16)
    # Services (model names) the client may discover and call; None: every CDS service.
    services: list[str] | None = None
    # FHIR server base URLs the client may send as ``fhirServer`` for us to fetch from (by
    # prefix); None: any https server (plain http only on loopback).
    fhir_servers: list[str] | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> CdsClient:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError(f"CDS client {self.iss!r}: set one of jwks_file and jwks_url")
        return self


class Settings(BaseSettings):
    """phiserve settings; environment prefix ``PHISERVE_``; nested values are JSON."""

    model_config = SettingsConfigDict(
        env_prefix="PHISERVE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    # --- process -----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=1, le=65535)
    home: Path = Field(
        default=Path(".phiserve"), description="State folder for keys, models and audit."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # After SIGTERM: seconds of not-ready-but-serving (lame duck), so load balancers catch up.
    drain_delay_s: float = Field(default=2.0, ge=0, le=300)
    # Then seconds to wait for in-flight requests; the chart's grace period covers both.
    drain_timeout_s: float = Field(default=20.0, ge=0)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    # --- model repository and keys -------------------------------------------------------------
    model_repository: Path | None = None
    key_provider: KeyProviderName = "local"
    local_kek_file: Path | None = None
    aws_kms_key_id: str | None = None
    aws_region: str | None = None
    aws_endpoint_url: str | None = None
    # The audit trail's own CMK; the serving role may only decrypt with the models key.
    aws_audit_kms_key_id: str | None = None
    # `phiserve keys rotate` re-wraps every data key under this CMK (KMS rotates material itself).
    aws_kms_rotate_to_key_id: str | None = None
    vault_addr: str | None = None
    vault_token: SecretStr | None = None
    vault_transit_mount: str = "transit"
    vault_transit_key: str = "phiserve"
    vault_audit_transit_key: str | None = None
    vault_namespace: str | None = None
    vault_ca_cert: Path | None = None
    # Model name -> version served when a request names none; absent models serve their latest.
    pinned_versions: dict[str, PositiveInt] = Field(default_factory=dict)

    # --- runtime -------------------------------------------------------------------------------
    execution_provider: ExecutionProvider = "auto"
    intra_op_threads: int = Field(default=0, ge=0, description="0 lets onnxruntime decide.")
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    # Per-model overrides of ``batching``, e.g. {"chest-xray": {"max_batch_size": 8}}.
    model_batching: dict[str, BatchingSettings] = Field(default_factory=dict)
    max_request_bytes: PositiveInt = 64 * 1024 * 1024
    request_timeout_s: float = Field(default=30.0, gt=0)
    # Cyclic GC thresholds (generations 0, 1, 2), set once models are loaded; Python's own are
    # (700, 10, 10). See phiserve.runtime.gc_tuning for why and what it measured.
    gc_thresholds: tuple[PositiveInt, PositiveInt, PositiveInt] = (50_000, 20, 100)

    # --- identity ------------------------------------------------------------------------------
    auth_enabled: bool = True
    oidc_issuer: str = "https://phiserve.local/dev"
    oidc_audience: str = "phiserve"
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    dev_signing_key: Path | None = None

    # --- audit ---------------------------------------------------------------------------------
    audit_enabled: bool = True
    audit_dir: Path | None = None
    audit_segment_max_bytes: PositiveInt = 64 * 1024 * 1024
    audit_segment_max_age_s: PositiveInt = 3600
    audit_stdout: bool = False
    # One writer per stream: pods sharing an audit volume each need their own (the chart uses
    # the pod name).
    audit_stream: str = Field(default="server", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

    # --- clinical interfaces -------------------------------------------------------------------
    # FHIR resources one request may carry (Bundle entries and Parameters resources, nested ones
    # included); more is refused with 413. Validation costs ~0.2 ms a resource.
    fhir_max_entries: PositiveInt = 5000
    # An Observation dated further than this past the server's clock is refused (422).
    fhir_future_skew_s: float = Field(default=300.0, ge=0, le=86400)

    # --- telemetry -----------------------------------------------------------------------------
    metrics_enabled: bool = True

    # --- CDS Hooks (phiserve.cds) ----------------------------------------------------------------
    # The EHRs allowed to call, as a JSON list of CdsClient objects (see above).
    cds_clients: list[CdsClient] = Field(default_factory=list)
    # The public base URL EHRs call (e.g. https://cds.example.org behind an ingress): a client
    # JWT's ``aud`` must be this plus the path called, and cards link the model card under it.
    # Unset: this server's own address (http(s)://host:port).
    cds_base_url: str | None = Field(default=None, pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")
    # ES384 and RS384 are the spec's recommendation; ES256 and RS256 are what many EHRs and the
    # public sandbox sign with. Only asymmetric algorithms can be listed.
    cds_jwt_algorithms: list[str] = Field(
        default_factory=lambda: ["ES384", "RS384", "ES256", "RS256"]
    )
    # A client JWT may live at most this long (exp - now): it bounds the replay store.
    cds_jwt_max_lifetime_s: float = Field(default=300.0, gt=0, le=3600)
    # jtis remembered until their exp; when full of live ones, calls get 503 (fail closed).
    cds_replay_cache_size: PositiveInt = 100_000
    # Fetching missing prefetch from the EHR's FHIR server: the whole budget of one call, the
    # largest response read, and how many pages of one search are followed.
    cds_fhir_timeout_s: float = Field(default=2.0, gt=0, le=30)
    cds_fhir_max_response_bytes: PositiveInt = 16 * 1024 * 1024
    cds_fhir_max_pages: PositiveInt = 10
    # Cards issued are remembered (in memory) this long for feedback to join them, at most
    # this many; feedback on a forgotten card gets 404.
    cds_card_ttl_s: PositiveInt = 24 * 3600
    cds_card_store_size: PositiveInt = 100_000
    # --- model monitoring (versions whose manifest has a "monitoring" block) ---------------------
    monitoring_enabled: bool = True
    # Drift window: the last this many predicted rows per model version.
    monitoring_window: PositiveInt = 2000
    # PSI is exposed once the window holds this many rows (fewer give noisy values).
    monitoring_min_rows: PositiveInt = 100
    # Drift alert above this PSI, unless the manifest's block sets its own (0.25: significant).
    monitoring_psi_threshold: float = Field(default=0.25, gt=0)
    # Issued prediction ids await their outcome this long, at most this many per version.
    monitoring_outcome_ttl_s: float = Field(default=7 * 86400, gt=0)
    monitoring_max_predictions: PositiveInt = 100_000
    # Accuracy, Brier score and calibration cover the last this many labelled predictions.
    monitoring_outcome_window: PositiveInt = 1000
    # Observations waiting for the worker beyond this many are dropped (and counted).
    monitoring_queue_max: PositiveInt = 10_000

    # --- DICOM in (phiserve.dicom) ------------------------------------------------------------
    # Largest DICOM instance accepted, in bytes: the whole body of an application/dicom request,
    # each part of a multipart/related one (whose whole body max_request_bytes bounds).
    dicom_max_instance_bytes: PositiveInt = 32 * 1024 * 1024
    # Largest image accepted (Rows x Columns; a 43 cm DX detector at 0.1 mm is 18.5 M), checked
    # against the header and the compressed stream before anything is decoded. Preparing one
    # takes about 21 bytes per pixel at peak (pydicom's VOI works in float64): 525 MB here.
    dicom_max_pixels: PositiveInt = 25_000_000
    # Instances in one multipart/related request; at most 32, the audit record's list bound.
    dicom_max_instances: int = Field(default=16, ge=1, le=32)
    # Worker processes that decode DICOM off the event loop (per server worker; about 100 MB
    # each at rest): times the peak above, this bounds the memory decoding can take at once.
    dicom_decode_processes: int = Field(default=2, ge=1, le=64)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.key_provider == "aws-kms" and not self.aws_kms_key_id:
            raise ValueError("key_provider 'aws-kms' needs PHISERVE_AWS_KMS_KEY_ID")
        if self.key_provider == "vault-transit" and not self.vault_addr:
            raise ValueError("key_provider 'vault-transit' needs PHISERVE_VAULT_ADDR")
        if self.auth_enabled and self.jwks_url and self.jwks_file:
            raise ValueError("set one of jwks_file and jwks_url, not both")
        asymmetric = {"RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"}
        if bad := set(self.jwt_algorithms) - asymmetric:
            raise ValueError(f"unsupported JWT algorithms: {sorted(bad)}")
        if bad := set(self.cds_jwt_algorithms) - asymmetric:
            raise ValueError(f"unsupported CDS client JWT algorithms: {sorted(bad)}")
        if len({client.iss for client in self.cds_clients}) != len(self.cds_clients):
            raise ValueError("cds_clients: each iss may appear once")
        return self

    # Derived paths: dev defaults live under ``home`` so one folder holds all local state.
    @cached_property
    def repository_dir(self) -> Path:
        """Root of the encrypted model repository."""
        return self.model_repository or self.home / "models"

    @cached_property
    def kek_file(self) -> Path:
        """Key file of the ``local`` key provider."""
        return self.local_kek_file or self.home / "keys" / "kek.json"

    @cached_property
    def audit_path(self) -> Path:
        """Folder of encrypted audit segments."""
        return self.audit_dir or self.home / "audit"

    @cached_property
    def signing_key_file(self) -> Path:
        """Private key that ``phiserve token issue`` signs dev tokens with."""
        return self.dev_signing_key or self.home / "keys" / "dev-signing-key.pem"

    @cached_property
    def jwks_path(self) -> Path:
        """JWKS file used when no JWKS URL is configured."""
        return self.jwks_file or self.home / "keys" / "jwks.json"

    @cached_property
    def cds_url(self) -> str:
        """The public base URL of the CDS services, without a trailing slash."""
        if self.cds_base_url:
            return self.cds_base_url.rstrip("/")
        scheme = "https" if self.tls_cert_file else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def batching_for(self, model: str) -> BatchingSettings:
        """Batching settings of one model: its override, or the default."""
        return self.model_batching.get(model, self.batching)


# Variables with our prefix that clients (locust, scripts) read; the server ignores them.
CLIENT_VARIABLES = frozenset({"PHISERVE_TOKEN", "PHISERVE_TOKEN_FILE", "PHISERVE_URL"})


def load_settings(**overrides: Any) -> Settings:  # raw values: pydantic validates them
    """Read settings from the environment; a bad value is one :class:`ConfigurationError`.

    The message names each offending variable and what is wrong, never the value given (it may
    be a token or a path that is nobody's business in a log). Unknown ``PHISERVE_`` variables
    are refused too: a typo must not silently fall back to a default.
    """
    known = {f"PHISERVE_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(
        key
        for key in os.environ
        if key.startswith("PHISERVE_")
        and key not in CLIENT_VARIABLES
        and key.split("__")[0] not in known
    )
    if unknown:
        raise ConfigurationError(f"unknown settings {unknown}; see platform/phiserve/config.py")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = "__".join(str(p) for p in err["loc"]).upper()
            name = f"PHISERVE_{field}" if field else "settings"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigurationError("invalid settings: " + "; ".join(problems)) from None

"""The CDS Hooks 2.0 request bodies phiserve accepts: a service call and a feedback report.

Validation errors are reported by field path and error type only: pydantic's own messages can
quote the input (a character of a malformed UUID, say), and a path segment that is a client's
own key (a prefetch key) is shown as ``*``. Nothing a client sent is ever echoed.
"""

from __future__ import annotations

import uuid
from typing import Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from phiserve.errors import BadRequest

PATIENT_VIEW: Final = "patient-view"
# FHIR R4 id: [A-Za-z0-9\-\.]{1,64}.
FHIR_ID: Final = r"^[A-Za-z0-9.\-]{1,64}$"
_USER_TYPES: Final = "Practitioner|PractitionerRole|Patient|RelatedPerson"
MAX_FEEDBACK: Final = 32
# Error types whose pydantic message is made of our own words only (never the input).
_OWN_MESSAGES: Final = frozenset(
    {"value_error", "literal_error", "too_long", "too_short", "string_too_long", "missing"}
)


class FhirAuthorization(BaseModel):
    """The OAuth 2.0 access token the EHR lends for reads from its FHIR server."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    access_token: SecretStr = Field(min_length=1, max_length=8192)
    token_type: Literal["Bearer", "bearer"]
    expires_in: int = Field(ge=0)
    scope: str = Field(max_length=4096)
    subject: str = Field(max_length=255)
    patient: str | None = Field(default=None, pattern=FHIR_ID)


class PatientViewContext(BaseModel):
    """``context`` of the patient-view hook: who looks at which patient (and encounter)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    userId: str = Field(pattern=rf"^({_USER_TYPES})/[A-Za-z0-9.\-]{{1,64}}$")  # noqa: N815
    patientId: str = Field(pattern=FHIR_ID)  # noqa: N815
    encounterId: str | None = Field(default=None, pattern=FHIR_ID)  # noqa: N815

    def tokens(self) -> dict[str, str]:
        """Prefetch token name -> value (the spec's context tokens and user tokens)."""
        values = {"context.userId": self.userId, "context.patientId": self.patientId}
        if self.encounterId is not None:
            values["context.encounterId"] = self.encounterId
        kind, _, user = self.userId.partition("/")
        values[f"user{kind}Id"] = user
        return values


class CdsRequest(BaseModel):
    """A CDS service call (``POST /cds-services/{id}``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    hook: str = Field(max_length=64)
    hookInstance: uuid.UUID  # noqa: N815
    fhirServer: str | None = Field(default=None, max_length=2048)  # noqa: N815
    fhirAuthorization: FhirAuthorization | None = None  # noqa: N815
    context: PatientViewContext
    # key -> a resource, a searchset Bundle, or null (the EHR has no data for the key).
    prefetch: dict[str, dict[str, Any] | None] = Field(default_factory=dict)

    @field_validator("hook")
    @classmethod
    def _patient_view(cls, hook: str) -> str:
        if hook != PATIENT_VIEW:
            raise ValueError("only the patient-view hook is served")
        return hook


class Coding(BaseModel):
    """A FHIR Coding as CDS Hooks uses it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    system: str | None = Field(default=None, max_length=1024)
    code: str | None = Field(default=None, max_length=256)
    display: str | None = Field(default=None, max_length=1024)


class OverrideReason(BaseModel):
    """Why the user dismissed a card; the comment is free text and is never kept."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=4096)  # noqa: N815


class AcceptedSuggestion(BaseModel):
    """A suggestion the user accepted (cards from phiserve carry none)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(max_length=128)


class FeedbackItem(BaseModel):
    """What the user did with one card."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    card: uuid.UUID
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] = Field(default_factory=list, max_length=0)  # noqa: N815
    overrideReason: OverrideReason | None = None  # noqa: N815
    outcomeTimestamp: AwareDatetime  # noqa: N815


class FeedbackRequest(BaseModel):
    """``POST /cds-services/{id}/feedback``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=MAX_FEEDBACK)


def parse(model: type[BaseModel], doc: dict[str, Any], what: str) -> Any:
    """``doc`` validated as ``model``; one 400 naming each bad field and error type."""
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        problems = [
            f"{_path(err['loc'], model)}: "
            + (err["msg"] if err["type"] in _OWN_MESSAGES else err["type"])
            for err in exc.errors(include_url=False, include_input=False)[:8]
        ]
        raise BadRequest(f"invalid {what}: " + "; ".join(problems)) from None


def _path(loc: tuple[int | str, ...], model: type[BaseModel]) -> str:
    """A field path made of our own field names and list indexes; client keys become ``*``."""
    parts: list[str] = []
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
            continue
        fields = getattr(current, "model_fields", {})
        if part in fields:
            parts.append(f".{part}" if parts else part)
            current = _inner(fields[part].annotation)
        else:
            parts.append(".*" if parts else "*")
            current = None
    return "".join(parts) or "body"


def _inner(annotation: Any) -> Any:
    """The model inside ``X | None`` or ``list[X]``, if any."""
    for arg in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        for inner in getattr(arg, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None

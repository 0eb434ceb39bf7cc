"""Why a DICOM instance was refused: typed errors (statuses from phiserve.errors) with a reason.

``reason`` is a short fixed code for the audit record, the per-instance results and the metrics
label; messages name DICOM attributes, codes and limits, never a header value from the instance.
"""

from __future__ import annotations

from typing import ClassVar

from phiserve.context import outcome_for_status
from phiserve.errors import (
    BadRequest,
    PayloadTooLarge,
    PhiserveError,
    Unprocessable,
    UnsupportedMediaType,
)


class MalformedInstance(BadRequest):
    """Not a readable DICOM Part 10 instance (truncated, wrong lengths, broken pixel data)."""

    reason: ClassVar[str] = "malformed"


class UnsupportedTransferSyntax(UnsupportedMediaType):
    """A transfer syntax that pydicom and the installed plugins cannot decode here."""

    reason: ClassVar[str] = "transfer_syntax"


class NotDicom(UnsupportedMediaType):
    """A part of a multipart/related body that is not application/dicom."""

    reason: ClassVar[str] = "media_type"


class UnsupportedModality(Unprocessable):
    """A modality the model's DICOM block does not list (only CR and DX are possible)."""

    reason: ClassVar[str] = "modality"


class UnsupportedImage(Unprocessable):
    """An image this pipeline does not take: colour, several frames, no pixel data, ..."""

    reason: ClassVar[str] = "image"


class InstanceTooLarge(PayloadTooLarge):
    """More bytes or pixels than the PHISERVE_DICOM_* limits allow."""

    reason: ClassVar[str] = "too_large"


def reason_of(exc: PhiserveError) -> str:
    """A bounded code for any error: the DICOM reasons, else the outcome its status implies."""
    return getattr(exc, "reason", None) or outcome_for_status(exc.status)

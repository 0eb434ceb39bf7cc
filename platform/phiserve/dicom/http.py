"""DICOM in over HTTP: ``POST /v2/models/{model}[/versions/{version}]/dicom``.

A sibling of the V2 infer route (kind INFER, bearer tokens, the model's ``infer:`` scope) for
models whose manifest declares a DICOM block. The body is one instance (``application/dicom``)
or several, as a DICOMweb STOW-RS client sends them (``multipart/related;
type="application/dicom"``). Each instance is read, checked and preprocessed in a small pool of
worker processes (:mod:`phiserve.dicom.worker`: never on the event loop), then goes through the
data plane like any V2 request, with its image statistics as the ``image_stats`` annotation for
monitoring hooks.

The answer is JSON ``{"results": [...]}`` in request order, each result either a V2 inference
response whose ``parameters`` name the instance by keyed pseudonym, or ``{"error", "status",
"reason"}``; with ``Accept: application/fhir+json`` it is a FHIR Bundle instead
(:mod:`phiserve.dicom.observation`). A single instance that fails is answered with its own 4xx;
several are answered like STOW-RS: 200 when all succeed, 202 when some do, and when none does
the status they share (409 if they differ). Header values never leave the handler: the audit
record, the response and the metrics see pseudonyms, codes and counts only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from starlette.types import Receive, Scope, Send

from phiserve import telemetry
from phiserve.config import Settings
from phiserve.context import get_context, outcome_for_status
from phiserve.dataplane import DataPlane
from phiserve.dicom.errors import reason_of
from phiserve.dicom.metrics import DICOM_METRICS
from phiserve.dicom.observation import FHIR_JSON, bundle, observation, operation_outcome
from phiserve.dicom.spec import DicomPreprocessing, dicom_spec
from phiserve.dicom.stow import DICOM, RELATED, Part, media_type, split_related
from phiserve.dicom.worker import DecodePool, prepare
from phiserve.errors import PhiserveError, UnsupportedMediaType
from phiserve.http.io import JSON, header, read_body, send_response
from phiserve.http.routing import Handler, RouteKind, RouteSpec
from phiserve.model import InferenceRequest, InferenceResponse, Model, RequestInput
from phiserve.protocol.codecs import encode_response

ROUTES: Final = tuple(
    RouteSpec("dicom", "POST", f"{base}/dicom", RouteKind.INFER)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
)
SPAN_DICOM: Final = "dicom.preprocess"
# Keyed pseudonym kinds (``phiserve audit pseudonym KIND`` finds them again).
PSEUDONYM_KINDS: Final = ("sop_instance", "series_instance", "study_instance")

Pseudonymize = Callable[[str, str], str]


@dataclass(frozen=True, slots=True)
class DicomLimits:
    """The PHISERVE_DICOM_* bounds, and the whole-body bound of a multipart request."""

    max_instance_bytes: int
    max_request_bytes: int
    max_pixels: int
    max_instances: int
    decode_processes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> DicomLimits:
        """The limits ``settings`` configure."""
        return cls(
            settings.dicom_max_instance_bytes,
            settings.max_request_bytes,
            settings.dicom_max_pixels,
            settings.dicom_max_instances,
            settings.dicom_decode_processes,
        )


@dataclass(slots=True)
class _Result:
    pseudonyms: tuple[str, str, str]
    response: InferenceResponse | None = None
    error: PhiserveError | None = None


class DicomHandlers:
    """The DICOM route's handler (see :data:`ROUTES`)."""

    def __init__(
        self,
        dataplane: DataPlane,
        limits: DicomLimits,
        pseudonymize: Pseudonymize,
    ) -> None:
        self.dataplane = dataplane
        self.limits = limits
        self.pseudonymize = pseudonymize
        # Its size bounds how many images are decoded at once, hence their memory.
        self.decoders = DecodePool(limits.decode_processes)

    def handlers(self) -> dict[str, Handler]:
        """Route name -> handler."""
        return {"dicom": self.infer}

    async def infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read one or several instances, infer on each, answer per instance."""
        ctx = get_context(scope)
        model = self.dataplane.resolve_for(ctx)
        spec = dicom_spec(model.hooks)
        if spec is None:
            raise UnsupportedMediaType(f"model {model.name!r} takes no DICOM input")
        ctype, params = media_type(header(scope, b"content-type"))
        limits = self.limits
        if ctype == DICOM:
            parts = [Part([await read_body(scope, receive, limits.max_instance_bytes)])]
        elif ctype == RELATED:
            body = await read_body(scope, receive, limits.max_request_bytes)
            parts = split_related(body, params, limits.max_instances, limits.max_instance_bytes)
        else:
            raise UnsupportedMediaType(
                f'send {DICOM}, or {RELATED}; type="{DICOM}" for several instances'
            )
        # Every instance finishes before a bug in one propagates (an exception left unawaited
        # would be logged by asyncio, message and all).
        outcomes = await asyncio.gather(
            *(self._one(model, spec, part) for part in parts), return_exceptions=True
        )
        results: list[_Result] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        ctx.audit_details = _audit_details(results)
        status, headers = _status(results, single=ctype == DICOM)
        ctx.outcome = outcome_for_status(status)
        if FHIR_JSON in (header(scope, b"accept") or b""):
            body = json.dumps(_fhir(results), separators=(",", ":")).encode()
            headers.append((b"content-type", FHIR_JSON))
        else:
            body = _json(results)
            headers.append(JSON)
        await send_response(send, status, body, headers)

    async def _one(self, model: Model, spec: DicomPreprocessing, part: Part) -> _Result:
        if part.error is not None:
            self._count(model, part.error, None)
            return _Result(("", "", ""), error=part.error)
        started = time.perf_counter()
        try:
            with telemetry.child_span(SPAN_DICOM):
                prepared = await self.decoders.call(
                    prepare, part.data, spec, self.limits.max_pixels
                )
            # The UIDs leave the worker's answer here, as keyed pseudonyms only.
            sop, series, study = (
                self.pseudonymize(kind, uid) if uid else ""
                for kind, uid in zip(PSEUDONYM_KINDS, prepared.uids, strict=True)
            )
        except PhiserveError as exc:
            self._count(model, exc, time.perf_counter() - started)
            return _Result(("", "", ""), error=exc)
        seconds = time.perf_counter() - started
        pseudonyms = (sop, series, study)
        if prepared.error is not None:
            self._count(model, prepared.error, seconds)
            return _Result(pseudonyms, error=prepared.error)
        assert prepared.tensor is not None
        assert prepared.stats is not None
        request = InferenceRequest(
            id=None,
            inputs=[RequestInput(spec.input, "FP32", list(prepared.tensor.shape), prepared.tensor)],
            annotations={"image_stats": prepared.stats},
        )
        try:
            response = await self.dataplane.infer(model, request)
        except PhiserveError as exc:
            self._count(model, exc, seconds)
            return _Result(pseudonyms, error=exc)
        DICOM_METRICS.observe(model.name, model.version, "ok", seconds)
        response.parameters.update(_named(pseudonyms))
        return _Result(pseudonyms, response=response)

    @staticmethod
    def _count(model: Model, exc: PhiserveError, seconds: float | None) -> None:
        DICOM_METRICS.observe(model.name, model.version, reason_of(exc), seconds)


# V2 response parameters naming the instance, its series and its study by pseudonym.
_PARAMETERS: Final = ("dicom_instance", "dicom_series", "dicom_study")


def _named(pseudonyms: tuple[str, str, str]) -> dict[str, str]:
    return {k: v for k, v in zip(_PARAMETERS, pseudonyms, strict=True) if v}


def _audit_details(results: list[_Result]) -> dict[str, Any]:
    return {
        "dicom_instances": [r.pseudonyms[0] for r in results],
        "dicom_series": [r.pseudonyms[1] for r in results],
        "dicom_studies": [r.pseudonyms[2] for r in results],
        "dicom_results": ["ok" if r.error is None else reason_of(r.error) for r in results],
    }


def _status(results: list[_Result], *, single: bool) -> tuple[int, list[tuple[bytes, bytes]]]:
    """200 when every instance succeeded; otherwise as the module docstring says."""
    errors = [r.error for r in results if r.error is not None]
    if not errors:
        return 200, []
    if single:
        raise errors[0]
    if len(errors) < len(results):
        return 202, []
    statuses = {e.status for e in errors}
    if len(statuses) > 1:
        return 409, []
    headers = [(k.lower().encode(), v.encode()) for k, v in errors[0].headers.items()]
    return errors[0].status, headers


def _json(results: list[_Result]) -> bytes:
    items = []
    for r in results:
        if r.response is not None:
            items.append(encode_response(r.response)[0])  # every output is JSON here
        else:
            assert r.error is not None
            doc: dict[str, Any] = {
                "error": r.error.message,
                "status": r.error.status,
                "reason": reason_of(r.error),
            }
            if named := _named(r.pseudonyms):
                doc["parameters"] = named
            items.append(json.dumps(doc, separators=(",", ":")).encode())
    return b'{"results":[' + b",".join(items) + b"]}"


def _fhir(results: list[_Result]) -> dict[str, Any]:
    resources = []
    for r in results:
        if r.response is not None:
            resources.append(observation(r.response, r.pseudonyms[0], r.pseudonyms[2]))
        else:
            assert r.error is not None
            resources.append(operation_outcome(r.error))
    return bundle(resources)

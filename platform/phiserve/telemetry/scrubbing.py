"""ScrubbingSpanProcessor: no span leaves the process carrying free text.

phiserve's own spans are PHI-free by construction (see :mod:`phiserve.telemetry.middleware`).
This processor enforces the same rules for every span of the provider, including those of a
deployment's own code and of instrumented libraries, which may set ``url.full``, request
headers, ``str(exc)`` or a patient name as a span name.

Attributes pass on an **allow-list**, not a deny-list. A deny-list of URL, header and body keys
fails open: semantic conventions rename keys between releases (``http.url`` became
``url.full``, ``http.target`` became ``url.path`` plus ``url.query``, ``net.peer.ip`` became
``client.address``), every instrumentation adds keys of its own (``http.request.header.*``,
``db.query.text``, ``messaging.message.body.size``...), and a client address is itself one of
HIPAA's identifiers. An unknown key is dropped; a deployment that vouches for a key of its own
adds it with :func:`allow_span_attributes`. The list holds the semantic-convention keys whose
values come from code or from a bounded set (method, route template, status code, scheme,
port, error type, RPC and database system identifiers) and everything under ``phiserve.``.

The rest of a span is reduced the same way:

* span and event names must look like code identifiers (``decode``, ``db.query``,
  ``redis.GET``), or be ``"METHOD route"`` with the span's own ``http.route``; other names
  become the span's HTTP method or ``withheld``, and such events are dropped;
* exception events keep their type and a fixed message, never ``str(exc)`` or a stack trace;
* a status description keeps only its leading identifier (the SDK writes ``"Type: message"``);
* ``tracestate`` is removed from the span, its parent and its links (caller-chosen free text).

:func:`~phiserve.telemetry.tracing.configure_tracing` makes this processor the provider's
active span processor, so ``provider.add_span_processor(p)`` puts ``p`` behind it: ``p`` gets
scrubbed spans in ``on_end``. ``on_start`` sees the live span (so a processor can enrich it;
what it adds is scrubbed too when the span ends).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from opentelemetry.sdk.trace import Event, ReadableSpan, SynchronousMultiSpanProcessor
from opentelemetry.trace import Link, SpanContext, Status, StatusCode

from phiserve.telemetry.tracing import HTTP_METHODS, OTHER_METHOD, REDACTED_MESSAGE

if TYPE_CHECKING:
    from opentelemetry.util.types import Attributes, AttributeValue

REDACTED_NAME: Final = "withheld"
EXCEPTION_EVENT: Final = "exception"

# Semantic-convention keys whose values are code-chosen or bounded, never caller free text.
ALLOWED_ATTRIBUTES: Final = frozenset(
    {
        "http.request.method",
        "http.route",
        "http.response.status_code",
        "url.scheme",
        "server.port",
        "network.protocol.name",
        "network.protocol.version",
        "network.transport",
        "error.type",
        "exception.type",
        "rpc.system",
        "rpc.service",
        "rpc.method",
        "rpc.grpc.status_code",
        "db.system",
        "db.system.name",
        "db.operation.name",
        "messaging.system",
        "messaging.operation.type",
    }
)
ALLOWED_PREFIX: Final = "phiserve."
_METHOD: Final = "http.request.method"
_ROUTE: Final = "http.route"
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,127}")

_extra_attributes: set[str] = set()


def allow_span_attributes(*keys: str) -> None:
    """Let attribute ``keys`` through the scrubber (the deployment vouches they carry no PHI)."""
    _extra_attributes.update(keys)


def allowed(key: str) -> bool:
    """Whether an attribute key passes the allow-list."""
    return key in ALLOWED_ATTRIBUTES or key.startswith(ALLOWED_PREFIX) or key in _extra_attributes


def _identifier(text: str | None) -> bool:
    return text is not None and _IDENTIFIER.fullmatch(text) is not None


def scrub_attributes(attributes: Attributes) -> dict[str, AttributeValue]:
    """The allowed attributes; an unknown HTTP method is reported as ``_OTHER``."""
    out = {k: v for k, v in (attributes or {}).items() if allowed(k)}
    method = out.get(_METHOD)
    if method is not None and method not in HTTP_METHODS:
        out[_METHOD] = OTHER_METHOD
    return out


def scrub_name(name: str, attributes: Mapping[str, AttributeValue]) -> str:
    """``name`` if it is an identifier or ``"METHOD route"`` of this span, else a fixed name.

    ``attributes`` are the span's scrubbed attributes.
    """
    if _identifier(name):
        return name
    method, route = attributes.get(_METHOD), attributes.get(_ROUTE)
    if route is not None and name == f"{method} {route}":
        return name
    return method if isinstance(method, str) else REDACTED_NAME


def scrub_events(events: Sequence[Event]) -> list[Event]:
    """Exception events as type plus a fixed message; others by name rule, attributes allowed."""
    out = []
    for event in events:
        attrs = event.attributes or {}
        if event.name == EXCEPTION_EVENT:
            etype = attrs.get("exception.type")
            clean: dict[str, AttributeValue] = {"exception.message": REDACTED_MESSAGE}
            if isinstance(etype, str) and _identifier(etype):
                clean["exception.type"] = etype
            out.append(Event(EXCEPTION_EVENT, clean, event.timestamp))
        elif _identifier(event.name):
            out.append(Event(event.name, scrub_attributes(attrs), event.timestamp))
    return out


def scrub_status(status: Status) -> Status:
    """The status with its description cut to a leading identifier (or none)."""
    description = status.description
    if description is None:
        return status
    head = description.split(":", 1)[0].strip()
    if head == description:
        return status if _identifier(head) else Status(status.status_code)
    return Status(status.status_code, head if _identifier(head) else None)


def _without_state(context: SpanContext) -> SpanContext:
    if not context.trace_state:
        return context
    return SpanContext(context.trace_id, context.span_id, context.is_remote, context.trace_flags)


def _clean(span: ReadableSpan, attributes: Mapping[str, AttributeValue]) -> bool:
    """Whether ``span`` may pass as it is: the cheap check phiserve's own spans pass."""
    if span.events or span.links or not all(allowed(key) for key in attributes):
        return False
    method = attributes.get(_METHOD)
    if method is not None and method != OTHER_METHOD and method not in HTTP_METHODS:
        return False
    description = span.status.description
    context, parent = span.context, span.parent
    return (
        scrub_name(span.name, attributes) == span.name
        and (description is None or _identifier(description))
        and not (context is not None and context.trace_state)
        and not (parent is not None and parent.trace_state)
    )


def scrub_span(span: ReadableSpan) -> ReadableSpan:
    """``span`` itself when it is already clean (phiserve's own spans), else a scrubbed copy."""
    raw_attributes = span.attributes or {}
    if _clean(span, raw_attributes):
        return span
    attributes = scrub_attributes(raw_attributes)
    status = span.status
    return ReadableSpan(
        name=scrub_name(span.name, attributes),
        context=_without_state(span.context) if span.context is not None else None,
        parent=_without_state(span.parent) if span.parent is not None else None,
        resource=span.resource,
        attributes=attributes,
        events=scrub_events(span.events),
        links=[
            Link(_without_state(link.context), scrub_attributes(link.attributes))
            for link in span.links
        ],
        kind=span.kind,
        status=scrub_status(status) if status.status_code is StatusCode.ERROR else status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ScrubbingSpanProcessor(SynchronousMultiSpanProcessor):
    """The provider's active span processor: scrubs each ended span, then hands it on.

    Processors added with ``add_span_processor`` (the provider's, which lands here) receive
    the scrubbed span in ``on_end``.
    """

    def on_end(self, span: ReadableSpan) -> None:
        """Scrub ``span`` and pass it to every processor added behind this one."""
        super().on_end(scrub_span(span))

"""Prefetch first, then the EHR's FHIR server, else 412: the data one CDS call runs on.

For each prefetch template the service declared (from the model's FHIR mapping), the request's
prefetch value is used when it is there and usable. A value is not usable when it is missing,
null, an OperationOutcome (the spec's way for an EHR to say its prefetch failed) or a search
Bundle with a ``next`` page (incomplete). Every key that is not usable is read from
``fhirServer`` with ``fhirAuthorization`` when the request carries both (the template with its
tokens filled in, see :func:`fill`), all keys at once, within one time budget. A required key
that stays unusable answers 412 (:meth:`Prefetched.require`); an optional one is left out.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

from phiserve.cds.fetch import FetchFailed, FhirReader, check_server
from phiserve.cds.schema import CdsRequest
from phiserve.errors import PreconditionFailed

_TOKEN: Final = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9.]*)\s*\}\}")


def fill(template: str, tokens: Mapping[str, str]) -> str | None:
    """``template`` with its prefetch tokens replaced; ``None`` if a token has no value here.

    Values are percent-encoded (``/`` kept, as in ``{{context.userId}}`` reads).
    """
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        found = tokens.get(match.group(1))
        if found is None:
            missing = True
            return ""
        return urllib.parse.quote(found, safe="/")

    filled = _TOKEN.sub(value, template)
    return None if missing else filled


def usable(value: Any) -> TypeGuard[dict[str, Any]]:
    """Whether a prefetch value can be used as it is."""
    if not isinstance(value, dict) or value.get("resourceType") == "OperationOutcome":
        return False
    links = value.get("link") if value.get("resourceType") == "Bundle" else None
    if isinstance(links, list):
        return not any(isinstance(x, dict) and x.get("relation") == "next" for x in links)
    return True


@dataclass(slots=True)
class Prefetched:
    """The data of one call, by prefetch key, and what it took to get it."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Key -> outcome of a read from the FHIR server: "ok" or a cause of phiserve.cds.fetch.
    reads: dict[str, str] = field(default_factory=dict)
    # Keys neither the prefetch nor the FHIR server filled, and why (a phrase of our own).
    missing: dict[str, str] = field(default_factory=dict)

    def require(self, required: Collection[str]) -> None:
        """412 when a required key is missing."""
        lacking = sorted(set(required) & self.missing.keys())
        if lacking:
            why = "; ".join(f"{key!r}: {self.missing[key]}" for key in lacking)
            raise PreconditionFailed(f"required prefetch missing: {why}")


async def gather(
    request: CdsRequest,
    templates: Mapping[str, str],
    reader: FhirReader,
    *,
    budget_s: float,
    allowed_servers: Sequence[str] | None,
) -> Prefetched:
    """The prefetch values of ``request``, completed from its FHIR server where possible."""
    out = Prefetched()
    out.values = {key: value for key in templates if usable(value := request.prefetch.get(key))}
    todo = [key for key in templates if key not in out.values]
    if not todo:
        return out
    auth = request.fhirAuthorization
    if auth is None or request.fhirServer is None:
        out.missing = dict.fromkeys(todo, "not in prefetch, and no fhirServer to read it from")
        return out
    base = check_server(request.fhirServer, allowed_servers)
    tokens = request.context.tokens()
    token = auth.access_token.get_secret_value()
    reads: dict[str, asyncio.Task[dict[str, Any]]] = {}
    for key in todo:
        url = fill(templates[key], tokens)
        if url is None:
            out.missing[key] = "the context has no value for its template"
        else:
            reads[key] = asyncio.create_task(reader.read(key, base, url, token, budget_s))
    if reads:
        await asyncio.wait(reads.values(), timeout=budget_s)
    for key, task in reads.items():
        if not task.done():
            task.cancel()
            outcome = "timeout"
        elif isinstance(error := task.exception(), FetchFailed):
            outcome = error.cause
        elif error is not None:
            raise error
        else:
            out.values[key] = task.result()
            outcome = "ok"
        out.reads[key] = outcome
        if outcome != "ok":
            out.missing[key] = f"reading it from fhirServer failed ({outcome})"
    return out

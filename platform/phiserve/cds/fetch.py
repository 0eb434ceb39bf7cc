"""Reading what a CDS call's prefetch lacks from the EHR's own FHIR server.

CDS Hooks lets the EHR send ``fhirServer`` and ``fhirAuthorization`` (an OAuth 2.0 bearer access
token scoped to this service and the current user) so a service can read data the prefetch did
not carry. Each read here:

- goes only to an https server (plain http only on loopback, for tests and local EHR sandboxes)
  that the client's ``fhir_servers`` allow-list admits, and follows no redirect: the URL comes
  from the caller, so nothing else may be reached with the token it lent;
- carries the access token in the ``Authorization`` header and nowhere else; no log line,
  span, metric or error message names the token, the server or the URL (which holds the
  patient's id): failures are reported as one of :data:`CAUSES`;
- runs within the call's remaining budget (``PHISERVE_CDS_FHIR_TIMEOUT_S`` for all reads of
  one call together) and reads at most ``PHISERVE_CDS_FHIR_MAX_RESPONSE_BYTES`` per response,
  decompressed, before giving up;
- follows a search's ``next`` links on the same server, at most ``PHISERVE_CDS_FHIR_MAX_PAGES``
  pages, merging the entries into one searchset Bundle.

httpx (the maintained async HTTP client BentoML itself depends on) does the HTTP; its own logger
writes every request URL at INFO level, so it is held at WARNING here.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final

import httpx

from phiserve.errors import BadRequest, PhiserveError
from phiserve.http.io import parse_json_object
from phiserve.security.jwks import is_loopback

# Request URLs carry patient ids: httpx's per-request INFO line must never reach a log.
logging.getLogger("httpx").setLevel(logging.WARNING)

# Why a read failed: bounded metric label values, and the only detail a 412 message gives.
CAUSES: Final = (
    "timeout",
    "unreachable",
    "unauthorized",
    "not_found",
    "server_error",
    "refused",
    "too_large",
    "bad_response",
)
_ACCEPT: Final = "application/fhir+json, application/json;q=0.9"


class FetchFailed(Exception):
    """A read from the EHR's FHIR server failed; ``cause`` is one of :data:`CAUSES`."""

    def __init__(self, key: str, cause: str) -> None:
        super().__init__(f"prefetch {key!r}: {cause}")
        self.key = key
        self.cause = cause


def check_server(base: str, allowed: Sequence[str] | None) -> str:
    """``base`` without a trailing slash, if it may be read from; 400 otherwise.

    https only (plain http on loopback), no user info, query or fragment; when ``allowed`` is
    given, ``base`` must start with one of its entries.
    """
    try:
        parts = urllib.parse.urlsplit(base)
        host = parts.hostname
    except ValueError:
        raise BadRequest("fhirServer is not a valid URL") from None
    secure = parts.scheme == "https" or (parts.scheme == "http" and is_loopback(host))
    if not host or not secure or "@" in parts.netloc or parts.query or parts.fragment:
        raise BadRequest("fhirServer must be an https URL without credentials, query or fragment")
    base = base.rstrip("/")
    if allowed is not None and not any(_under(base, prefix) for prefix in allowed):
        raise BadRequest("fhirServer is not one this CDS client is allowed to send")
    return base


def _under(url: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return url == prefix or url.startswith(prefix + "/")


class FhirReader:
    """Reads FHIR resources and searches from an EHR's server with the token it lent us."""

    def __init__(self, *, max_response_bytes: int, max_pages: int) -> None:
        self.max_response_bytes = max_response_bytes
        self.max_pages = max_pages
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        # Created on first use, inside the worker's event loop; pooled across calls.
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,  # no proxy or .netrc credentials picked up from the environment
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
        return self._client

    async def aclose(self) -> None:
        """Close pooled connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def read(
        self, key: str, base: str, relative: str, token: str, timeout_s: float
    ) -> dict[str, Any]:
        """GET ``base/relative``: a resource, or a search's pages merged into one Bundle.

        ``timeout_s`` bounds each HTTP exchange; the caller bounds the whole call.
        """
        doc = await self._get(key, f"{base}/{relative}", token, timeout_s)
        if doc.get("resourceType") != "Bundle":
            return doc
        entries = list(_entries(key, doc))
        pages = 1
        while (url := _next_link(doc)) is not None:
            if not _under(url, base):
                raise FetchFailed(key, "refused")  # a next link to another server
            if pages >= self.max_pages:
                raise FetchFailed(key, "too_large")
            doc = await self._get(key, url, token, timeout_s)
            if doc.get("resourceType") != "Bundle":
                raise FetchFailed(key, "bad_response")
            entries.extend(_entries(key, doc))
            pages += 1
        return {"resourceType": "Bundle", "type": "searchset", "entry": entries}

    async def _get(self, key: str, url: str, token: str, timeout_s: float) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}", "Accept": _ACCEPT}
        try:
            async with self._http().stream(
                "GET", url, headers=headers, timeout=timeout_s
            ) as response:
                _check_status(key, response.status_code)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_response_bytes:
                    raise FetchFailed(key, "too_large")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_response_bytes:
                        raise FetchFailed(key, "too_large")
        except httpx.TimeoutException:
            raise FetchFailed(key, "timeout") from None
        except (httpx.HTTPError, httpx.InvalidURL):
            # Connection refused or reset, DNS, TLS, a malformed response: the class is enough.
            raise FetchFailed(key, "unreachable") from None
        try:
            return parse_json_object(bytes(body), "FHIR response")
        except PhiserveError:
            raise FetchFailed(key, "bad_response") from None


def _check_status(key: str, status: int) -> None:
    if status == 200:
        return
    if status in (401, 403):
        raise FetchFailed(key, "unauthorized")
    if status in (404, 410):
        raise FetchFailed(key, "not_found")
    if status >= 500:
        raise FetchFailed(key, "server_error")
    raise FetchFailed(key, "bad_response")  # redirects (never followed) and other answers


def _entries(key: str, bundle: dict[str, Any]) -> list[Any]:
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise FetchFailed(key, "bad_response")
    return entries


def _next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) else None
    return None

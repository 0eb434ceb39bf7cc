"""A small FHIR R4 server for tests: an EHR's FHIR API that a CDS service reads missing prefetch
from.

It serves reads (``GET /fhir/Patient/{id}``) and searches (``GET /fhir/Observation?patient=..
&code=system|code,..&status=..``, ``GET /fhir/Encounter?patient=..&status=..``) over the resources
it was given (a Synthea-like record), as searchset Bundles, paged when ``page_size`` is set. It
also serves public documents (``static``, e.g. the EHR's JWK Set for ``jku``). It
checks the bearer token on every FHIR request and records what it was asked (path, query, whether
the token matched). Faults for tests: ``delay_s`` (slow: each answer waits, released at
shutdown), ``status`` (every answer is that HTTP status), ``huge_bytes`` (a 200 body of that many
bytes; with ``declare_length`` False, without a Content-Length), ``next_url`` (a next link to another place); stopping it leaves the port refusing.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    path: str
    query: dict[str, list[str]]
    authorized: bool


class FhirServer:
    """A threaded FHIR server on 127.0.0.1 (see the module docstring); a context manager."""

    def __init__(self, resources: list[dict[str, Any]], token: str) -> None:
        self.resources = resources
        self.token = token
        self.seen: list[Seen] = []
        self.delay_s = 0.0
        self.status: int | None = None
        self.huge_bytes = 0
        # False: answers carry no Content-Length (the body ends when the connection closes).
        self.declare_length = True
        self.page_size: int | None = None
        self.next_url: str | None = None
        # Public documents the EHR also serves (its JWK Set for ``jku``), by path: no token.
        self.static: dict[str, Any] = {}
        self._released = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The FHIR base URL (``fhirServer``)."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/fhir"

    def __enter__(self) -> FhirServer:
        self._thread.start()  # the socket listens from construction: no readiness wait needed
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving; the port refuses connections afterwards."""
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- answers ----------------------------------------------------------------------------
    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        """Status and JSON document for an authorized GET."""
        parts = path.removeprefix("/fhir/").split("/")
        if len(parts) == 2:
            return self._read(*parts)
        if len(parts) == 1:
            return 200, self._search(parts[0], query)
        return 404, _outcome("not-found")

    def _read(self, kind: str, rid: str) -> tuple[int, Any]:
        for resource in self.resources:
            if resource["resourceType"] == kind and resource.get("id") == rid:
                return 200, resource
        return 404, _outcome("not-found")

    def _search(self, kind: str, query: dict[str, list[str]]) -> dict[str, Any]:
        patient = query.get("patient", [""])[0]
        codes = {c for v in query.get("code", []) for c in v.split(",")}
        statuses = {s for v in query.get("status", []) for s in v.split(",")}
        found = [
            r
            for r in self.resources
            if r["resourceType"] == kind
            and r.get("subject", {}).get("reference") == f"Patient/{patient}"
            and (not statuses or r.get("status") in statuses)
            and (not codes or codes & _codes(r))
        ]
        page = int(query.get("_page", ["1"])[0])
        size = self.page_size or max(len(found), 1)
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {
                    "fullUrl": f"{self.url}/{kind}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in found[(page - 1) * size : page * size]
            ],
        }
        if self.next_url is not None:
            bundle["link"] = [{"relation": "next", "url": self.next_url}]
        elif page * size < len(found):
            more = urllib.parse.urlencode({**query, "_page": [str(page + 1)]}, doseq=True)
            bundle["link"] = [{"relation": "next", "url": f"{self.url}/{kind}?{more}"}]
        return bundle


def _codes(resource: dict[str, Any]) -> set[str]:
    return {
        f"{c.get('system')}|{c.get('code')}" for c in resource.get("code", {}).get("coding", [])
    }


def _outcome(code: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code}]}


def _handler(server: FhirServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: tests read ``seen`` instead

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            authorized = self.headers.get("Authorization") == f"Bearer {server.token}"
            server.seen.append(Seen(url.path, query, authorized))
            if url.path in server.static:
                self._send(200, server.static[url.path])
                return
            if server.delay_s:
                server._released.wait(server.delay_s)
            if server.status is not None:
                self._send(server.status, _outcome("exception"))
            elif not authorized:
                self._send(401, _outcome("login"))
            elif server.huge_bytes:
                self._send_raw(
                    200, b'{"resourceType":"Bundle","entry":[' + b" " * server.huge_bytes
                )
            else:
                self._send(*server.answer(url.path, query))

        def _send(self, status: int, doc: Any) -> None:
            self._send_raw(status, json.dumps(doc).encode())

        def _send_raw(self, status: int, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                if server.declare_length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout or a size limit): expected in tests

    return Handler

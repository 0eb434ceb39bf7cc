"""PHI canary: values planted in bodies, headers and query strings never reach the trail.

Checked in every place the audit layer writes: decrypted records, the stdout mirror, log lines,
error bodies, and the raw segment bytes.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from phiserve.audit.middleware import AuditMiddleware
from phiserve.audit.writer import AuditWriter
from phiserve.context import ContextMiddleware
from tests.audit.conftest import FlakyProvider
from tests.audit.helpers import read_trail
from tests.audit.test_audit_middleware import tiny_app
from tests.routes import TABLE

CANARIES = {
    "body": "CANARY-BODY-JANE-DOE-1970",
    "body_number": "987654.3219",
    "header": "CANARY-HEADER-MRN-55501",
    "token": "CANARY-TOKEN-eyJhbGciOi",
    "cookie": "CANARY-COOKIE-SSN-078051120",
    "query": "CANARY-QUERY-DOB-19700101",
    "query_key": "canarykeypatientname",
}


def test_canaries_never_reach_the_trail(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    mirror = io.StringIO()
    writer = writer_factory(mirror=mirror, segment_max_bytes=16 * 1024)
    app = ContextMiddleware(AuditMiddleware(tiny_app, writer), TABLE)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    body = json.dumps({
        "inputs": [{"name": CANARIES["body"], "datatype": "FP64", "shape": [1],
                    "data": [float(CANARIES["body_number"])]}],
        "parameters": {"note": CANARIES["body"]},
    }).encode()  # fmt: skip
    headers = {
        "authorization": f"Bearer {CANARIES['token']}",
        "x-patient-mrn": CANARIES["header"],
        "cookie": f"session={CANARIES['cookie']}",
        "x-request-id": f"bad id {CANARIES['header']}",  # malformed: must not be echoed
        "traceparent": f"00-{CANARIES['header']}-00",
    }
    params = {"mrn": CANARIES["query"], CANARIES["query_key"]: "1"}

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            calls = []
            for model in ("m", "deny", "boom"):
                for method in ("POST", "GET"):
                    path = f"/v2/models/{model}/infer"
                    calls.append(c.request(method, path, content=body, headers=headers,
                                           params=params))  # fmt: skip
            calls.append(c.post("/v2/unknown", content=body, headers=headers, params=params))
            return await asyncio.gather(*calls)

    with caplog.at_level(logging.DEBUG):
        responses = asyncio.run(go())
        writer.close()

    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok and len(stored) == len(responses)
    places = {
        "decrypted records": json.dumps(stored),
        "stdout mirror": mirror.getvalue(),
        # The server's own log lines (the test client, httpx, logs its URLs itself).
        "log lines": "\n".join(
            r.getMessage() for r in caplog.records if r.name.startswith("phiserve")
        ),
        "error bodies": "".join(r.text for r in responses if r.status_code >= 400),
        "response headers": json.dumps([dict(r.headers) for r in responses]),
        "raw files": b"".join(p.read_bytes() for p in audit_dir.rglob("*") if p.is_file()).decode(
            "latin-1"
        ),
    }
    for where, text in places.items():
        for name, canary in CANARIES.items():
            assert canary.lower() not in text.lower(), f"{name} canary found in {where}"
    assert len(mirror.getvalue().splitlines()) == len(stored)
    assert any(r.name.startswith("phiserve") for r in caplog.records)  # logs were looked at

"""`helm test`: the release is ready and answers one authenticated inference.

Standard library only (it runs in the phiserve image, any profile). Reads:
  PHISERVE_TEST_URL         base URL of the Service (http[s]://name:port)
  PHISERVE_TEST_MODEL       model to infer with; inputs are zero-filled from its metadata
  PHISERVE_TEST_TOKEN_FILE  bearer token file; without it, checks that the API refuses (401)
  PHISERVE_TEST_CA_FILE     CA bundle for pod TLS (optional)
Exit 0 when every check passes; prints one line per check.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

URL = os.environ["PHISERVE_TEST_URL"].rstrip("/")
# The chart renders this URL from its own Service; refuse anything but HTTP(S) all the same.
if not URL.startswith(("http://", "https://")):
    raise SystemExit(f"PHISERVE_TEST_URL must be http(s), not {URL.split(':')[0]}")
MODEL = os.environ.get("PHISERVE_TEST_MODEL", "")
TOKEN_FILE = os.environ.get("PHISERVE_TEST_TOKEN_FILE", "")
CA_FILE = os.environ.get("PHISERVE_TEST_CA_FILE", "")
DEADLINE_S = float(os.environ.get("PHISERVE_TEST_READY_TIMEOUT_S", "120"))

CONTEXT = ssl.create_default_context(cafile=CA_FILE or None)
ZERO = {"BOOL": False, "BYTES": ""}


def call(method: str, path: str, body: dict | None = None, token: str = "") -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(URL + path, data=data, method=method)  # noqa: S310 - scheme checked above
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30, context=CONTEXT) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        sys.exit(1)


def wait_ready() -> None:
    deadline = time.monotonic() + DEADLINE_S
    status = 0
    while time.monotonic() < deadline:
        try:
            status, doc = call("GET", "/v2/health/ready")
            if status == 200 and doc.get("ready", True):
                break
        except OSError:
            status = 0
        time.sleep(2)
    check(status == 200, f"GET /v2/health/ready answered {status}")
    status, _ = call("GET", "/v2/health/live")
    check(status == 200, f"GET /v2/health/live answered {status}")


def zeros(spec: dict) -> dict:
    shape = [1 if int(d) < 0 else int(d) for d in spec["shape"]]
    count = 1
    for d in shape:
        count *= d
    return {
        "name": spec["name"],
        "datatype": spec["datatype"],
        "shape": shape,
        "data": [ZERO.get(spec["datatype"], 0)] * count,
    }


def main() -> int:
    wait_ready()
    path = f"/v2/models/{MODEL}"
    if not TOKEN_FILE:
        status, _ = call("POST", path + "/infer", {"inputs": []})
        check(status == 401, f"unauthenticated POST {path}/infer refused ({status})")
        print("note: no token Secret (tests.tokenSecret.name): inference not attempted")
        return 0
    with open(TOKEN_FILE, encoding="utf-8") as fh:
        token = fh.read().strip()
    status, meta = call("GET", path, token=token)
    check(status == 200, f"GET {path} answered {status}")
    request = {"inputs": [zeros(spec) for spec in meta["inputs"]]}
    status, result = call("POST", path + "/infer", request, token=token)
    check(status == 200, f"POST {path}/infer answered {status}")
    outputs = [o.get("name") for o in result.get("outputs", [])]
    check(bool(outputs), f"inference returned outputs {outputs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The audit trail of the real server: a record per request, crash safety, no PHI anywhere."""

from __future__ import annotations

import concurrent.futures
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from phiserve.audit import read_trail
from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from tests.server import ServerProcess, run_cli
from tests.tokens import bad_tokens, make_token

INFER = "/v2/models/breast-cancer/infer"
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0.3] * 30}]}
CANARY = "CANARY-PHI-555-12-3456"


def _records(home: Path) -> list[dict]:
    settings = Settings(home=home)
    report, records = read_trail(
        settings.audit_path, key_provider_from_settings(settings, purpose="audit")
    )
    assert report.ok, report.problem
    return records


def _by_request_id(home: Path) -> dict[str, dict]:
    return {r["request_id"]: r for r in _records(home)}


def test_every_token_case_gets_its_status_and_a_record(server: ServerProcess) -> None:
    cases: dict[str, tuple[dict[str, str], int]] = {
        "missing": ({}, 401),
        "wrong-scope": (
            {"Authorization": f"Bearer {make_token(server.home, scope='infer:chest-xray')}"},
            403,
        ),
        "valid": (server.auth, 200),
        "break-glass": (
            {
                "Authorization": f"Bearer {make_token(server.home, scope='emergency:access', sub='dr-on-call')}"
            },
            200,
        ),
    }
    cases.update(
        {k: ({"Authorization": f"Bearer {t}"}, 401) for k, t in bad_tokens(server.home).items()}
    )
    for name, (headers, status) in cases.items():
        response = httpx.post(
            f"{server.url}{INFER}", json=BODY, headers={**headers, "x-request-id": f"tok-{name}"}
        )
        assert response.status_code == status, name
    records = _by_request_id(server.home)
    for name, (_, status) in cases.items():
        record = records[f"tok-{name}"]
        assert record["status"] == status, name
        assert record["route"] == "/v2/models/{model}/infer"
        assert record["outcome"] == ("ok" if status == 200 else "denied"), name
        assert record["client"] == "127.0.0.1"
        # Refused requests are not read (an unauthenticated body could be huge): no body HMAC.
        assert bool(record["body_hmac"]) == (status == 200), name
    assert records["tok-valid"]["subject"] == "tester"
    assert records["tok-valid"]["model"] == "breast-cancer"
    assert records["tok-valid"]["version"] == 1
    assert records["tok-valid"]["trace_id"]
    assert records["tok-break-glass"]["break_glass"] is True
    assert records["tok-valid"]["break_glass"] is False
    assert records["tok-wrong-scope"]["subject"] == "tester"


def test_phi_canaries_reach_no_record_log_metric_or_error(server: ServerProcess) -> None:
    body = {
        "id": CANARY,
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0.1] * 29 + [CANARY]}
        ],
    }
    headers = {
        **server.auth,
        "x-patient-name": CANARY,
        "cookie": f"mrn={CANARY}",
        "x-request-id": "canary-1",
    }
    responses = [
        httpx.post(f"{server.url}{INFER}?mrn={CANARY}", json=body, headers=headers),
        httpx.post(f"{server.url}/v2/models/{CANARY}/infer", json=body, headers=headers),
        httpx.post(
            f"{server.url}{INFER}", json=body, headers={"Authorization": f"Bearer {CANARY}"}
        ),
        httpx.get(f"{server.url}/v2/models/breast-cancer/versions/{CANARY}", headers=headers),
    ]
    assert [r.status_code for r in responses] == [400, 404, 401, 404]
    for response in responses:
        assert CANARY not in response.text
        assert CANARY not in str(response.headers)
    audit_files = b"".join(
        p.read_bytes() for p in (server.home / "audit").rglob("*") if p.is_file()
    )
    assert CANARY.encode() not in audit_files
    assert CANARY not in repr(_records(server.home))
    assert CANARY not in httpx.get(f"{server.url}/metrics").text
    assert CANARY not in server.log()


def test_audit_cli_verifies_and_exports(server: ServerProcess) -> None:
    httpx.post(f"{server.url}{INFER}", json=BODY, headers={**server.auth, "x-request-id": "cli-1"})
    verify = run_cli(server.home, "audit", "verify")
    assert "Traceback" not in verify.stderr
    export = run_cli(server.home, "audit", "export", "--actor", "auditor")
    assert '"request_id":"cli-1"' in export.stdout.replace(" ", "")


def test_sigkill_mid_load_loses_no_acknowledged_record(home: Path) -> None:
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    under_load = threading.Event()  # enough requests acknowledged: the kill lands mid-load

    def client(worker: int, url: str, headers: dict[str, str]) -> None:
        with httpx.Client(timeout=5) as c:
            n = 0
            while not stop.is_set() and n < 2000:
                rid = f"crash-{worker}-{n}"
                n += 1
                try:
                    r = c.post(f"{url}{INFER}", json=BODY, headers={**headers, "x-request-id": rid})
                except httpx.HTTPError:
                    continue
                if 200 <= r.status_code < 300:
                    with lock:
                        acknowledged.append(rid)
                        if len(acknowledged) >= 200:
                            under_load.set()

    server = ServerProcess(home).start()
    headers = server.auth
    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(client, i, server.url, headers) for i in range(16)]
            assert under_load.wait(120), f"only {len(acknowledged)} requests acknowledged"
            server.kill()  # SIGKILL to arbiter and worker, mid-load
            stop.set()
            for f in futures:
                f.result()
    finally:
        stop.set()
        server.stop()
    assert len(acknowledged) > 50
    restarted = ServerProcess(home).start()  # recovers and seals the torn tail on start-up
    try:
        assert (
            httpx.post(f"{restarted.url}{INFER}", json=BODY, headers=restarted.auth).status_code
            == 200
        )
    finally:
        restarted.stop()
    records = _records(home)
    ids = [r["request_id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicate records"
    missing = set(acknowledged) - set(ids)
    assert not missing, f"{len(missing)} acknowledged requests have no record"
    for stream in {r["stream"] for r in records}:
        seqs = [r["seq"] for r in records if r["stream"] == stream]
        assert seqs == sorted(seqs)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap or reorder in the chain"
    verify = run_cli(home, "audit", "verify")
    assert verify.returncode == 0


@pytest.mark.skipif(
    shutil.which("mount") is None, reason="needs mount(8) for a real read-only bind"
)
def test_unwritable_audit_dir_fails_closed_and_recovers(home: Path) -> None:
    import subprocess

    audit_dir = home / "audit"
    audit_dir.mkdir(exist_ok=True)
    # Small segments: open file descriptors survive a remount, so failure shows at rotation.
    with ServerProcess(home, PHISERVE_AUDIT_SEGMENT_MAX_BYTES="4096") as server:
        assert httpx.post(f"{server.url}{INFER}", json=BODY, headers=server.auth).status_code == 200
        ro = subprocess.run(
            ["mount", "--bind", "-o", "ro", str(audit_dir), str(audit_dir)], capture_output=True
        )
        if ro.returncode != 0:
            pytest.skip(f"bind mount not permitted here: {ro.stderr.decode().strip()}")
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(audit_dir)], check=True)
            refused = 0
            for _ in range(200):
                r = httpx.post(f"{server.url}{INFER}", json=BODY, headers=server.auth)
                if r.status_code == 503:
                    refused += 1
                    assert r.headers["retry-after"]
                    assert r.json() == {"error": "audit trail unavailable; request refused"}
                    break
            assert refused, "requests kept succeeding with an unwritable audit directory"
            ready = httpx.get(f"{server.url}/v2/health/ready")
            assert ready.status_code == 503
            assert ready.json()["unavailable"] == ["audit trail"]
        finally:
            subprocess.run(["umount", str(audit_dir)], check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (
                httpx.post(f"{server.url}{INFER}", json=BODY, headers=server.auth).status_code
                == 200
            ):
                break
            time.sleep(0.5)
        else:
            pytest.fail("server did not recover after the audit directory became writable")
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert run_cli(home, "audit", "verify").returncode == 0

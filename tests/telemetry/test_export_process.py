"""The span export child process: spans over the wire, its failures, the collector's failures."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from opentelemetry.trace import Link

from phiserve import telemetry
from phiserve.telemetry import export_process, tracing
from phiserve.telemetry.testing import OtlpGrpcReceiver, OtlpHttpReceiver
from tests.server import free_port

from .conftest import CANARY, Harness

INFER = "/v2/models/sepsis/infer"
SPANS_PER_REQUEST = 6


def pipe() -> export_process.SpanPipe:
    assert tracing._STATE.pipe is not None
    return tracing._STATE.pipe


def child_pid() -> int:
    pid = pipe().child_pid
    assert pid is not None
    return pid


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still there")


def batched(otel_env: Any, receiver: OtlpHttpReceiver, *, queue: int, batch: int) -> None:
    """Tracing to ``receiver`` with these OTEL_BSP_* sizes and a delay that never passes here."""
    otel_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_MAX_QUEUE_SIZE=str(queue),
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE=str(batch),
        OTEL_BSP_SCHEDULE_DELAY="60000",
    )


def test_spans_are_exported_by_a_child_process(traced, harness: Harness) -> None:
    pid = child_pid()
    assert pid != os.getpid()
    harness.request("POST", INFER, content=b"{}")
    assert telemetry.force_flush()
    assert len(traced.spans()) == SPANS_PER_REQUEST
    assert traced.headers[-1]["x-collector-tenant"] == "phiserve-tests"  # OTEL_* honoured
    telemetry.shutdown_tracing()
    wait_gone(pid)  # shutdown ends the child


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_sdk_tracer_spans_take_the_sdks_own_path(otel_env, protocol) -> None:
    receiver = OtlpGrpcReceiver() if protocol == "grpc" else OtlpHttpReceiver()
    with receiver as rx:
        otel_env(OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol)
        tracer = telemetry.get_tracer()
        assert tracer is not None
        first = tracer.start_span("first")
        first.end()
        tracer.start_span("linked", links=[Link(first.get_span_context())]).end()
        assert telemetry.force_flush()
        assert sorted(s.name for s in rx.spans()) == ["first", "linked"]
        linked = next(s for s in rx.spans() if s.name == "linked")
        assert linked.span.links[0].span_id.hex() == f"{first.get_span_context().span_id:016x}"


def test_a_killed_child_is_replaced_and_later_spans_arrive(
    traced, harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(export_process, "RESTART_INTERVAL_S", 0.0)
    first = child_pid()
    os.kill(first, signal.SIGKILL)
    wait_gone_or_zombie(first)
    with caplog.at_level(logging.WARNING, logger=export_process.__name__):
        response = harness.request("POST", INFER, content=CANARY.encode())
        assert response.status_code == 200  # requests never wait for the exporter
        assert telemetry.force_flush()
    assert child_pid() != first
    assert len(traced.spans()) == SPANS_PER_REQUEST
    assert "span exporter process exited with code -9" in caplog.text
    assert CANARY not in caplog.text


def wait_gone_or_zombie(pid: int) -> None:
    """The child is ours, so it lingers as a zombie until polled: wait until it stopped running."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running")


def test_collector_down_costs_requests_nothing_and_recovers(
    otel_env, harness: Harness, capfd: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    otel_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_TRACES_SAMPLER="always_on",
    )
    started = time.monotonic()
    for _ in range(5):
        assert harness.request("POST", INFER, content=CANARY.encode()).status_code == 200
    assert time.monotonic() - started < 5
    assert telemetry.force_flush(20_000)  # the child tried, failed, logged and carried on
    logged = capfd.readouterr().err
    assert "phiserve span exporter" in logged
    assert CANARY not in logged

    with OtlpHttpReceiver(port=port) as rx:  # the collector comes back
        harness.request("POST", INFER, content=b"{}")
        assert telemetry.force_flush(20_000)
        assert len(rx.spans()) == SPANS_PER_REQUEST


def test_a_full_queue_drops_spans_and_says_how_many(
    otel_env, otlp_receiver, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    batched(otel_env, otlp_receiver, queue=12, batch=12)
    with pipe()._ship_lock:  # the hand-over is stuck (as behind a stalled child)
        for _ in range(3):
            harness.request("POST", INFER, content=b"{}")
    with caplog.at_level(logging.WARNING, logger=export_process.__name__):
        assert telemetry.force_flush()
    assert len(otlp_receiver.spans()) == 2 * SPANS_PER_REQUEST
    assert "6 spans dropped: the export queue (OTEL_BSP_MAX_QUEUE_SIZE=12) was full" in caplog.text


def test_a_stopped_child_cannot_hold_up_flush_or_shutdown(
    traced, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = child_pid()
    os.kill(stuck, signal.SIGSTOP)  # alive, but reads nothing: its pipe fills up
    big = ("s", 1, 2, 0, False, 1, 10, 20, {"pad": "x" * 100_000}, (), None)
    for _ in range(12):  # 1.2 MB: more than the pipe holds
        pipe().submit([big])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=export_process.__name__):
        assert not telemetry.force_flush(1000)
    assert time.monotonic() - started < 5
    assert "span exporter process is not reading: 12 spans dropped" in caplog.text
    wait_gone(stuck)  # stopped mid-frame, so it was killed, not resumed
    telemetry.shutdown_tracing()
    assert time.monotonic() - started < 10


def test_a_full_batch_is_handed_over_without_waiting_for_the_delay(
    otel_env, otlp_receiver, harness: Harness
) -> None:
    batched(otel_env, otlp_receiver, queue=100, batch=12)
    for _ in range(2):
        harness.request("POST", INFER, content=b"{}")
    otlp_receiver.wait_for_spans(lambda spans: len(spans) >= 2 * SPANS_PER_REQUEST)


def test_a_forked_process_gets_its_own_child(traced, harness: Harness) -> None:
    parent_child = child_pid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (runs in the fork)
        code = 1
        try:
            harness.request("POST", INFER, content=b"{}")
            ok = telemetry.force_flush(20_000) and pipe().child_pid not in (None, parent_child)
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    traced.wait_for_spans(lambda spans: len(spans) >= SPANS_PER_REQUEST)
    assert child_pid() == parent_child  # the parent's child was left alone
    harness.request("POST", INFER, content=b"{}")
    assert telemetry.force_flush()
    assert len(traced.spans()) == 2 * SPANS_PER_REQUEST


def test_the_child_refuses_an_unknown_protocol() -> None:
    result = subprocess.run(
        [sys.executable, "-m", export_process.CHILD_MODULE, "carrier-pigeon"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr

"""A collector that is down or hung neither fails nor holds up requests.

Spans are handed to the SDK's batch processor, whose own thread exports them; a request never
waits on the network. The hung collector makes this visible without timing anything: requests
complete while an export is provably stuck inside the collector.
"""

from __future__ import annotations

import httpx

from phiserve import telemetry
from tests.server import free_port

from .conftest import Harness
from .receivers import OtlpHttpReceiver

INFER = "/v2/models/sepsis/infer"


def test_requests_succeed_while_the_collector_refuses_connections(
    otel_env, harness: Harness
) -> None:
    status = otel_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",  # nothing listens
        OTEL_BSP_SCHEDULE_DELAY="10",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
    )
    assert status.enabled

    async def traffic(client: httpx.AsyncClient) -> list[int]:
        return [(await client.post(INFER, content=b"{}")).status_code for _ in range(30)]

    assert harness.run(traffic) == [200] * 30
    assert all(len(c.trace_id) == 32 for c in harness.tiny.contexts)


def test_requests_complete_while_an_export_is_stuck_in_the_collector(
    otel_env, harness: Harness
) -> None:
    with OtlpHttpReceiver(hung=True) as collector:
        otel_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="10",
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE="6",
        )
        assert harness.request("POST", INFER, content=b"{}").status_code == 200
        assert collector.holding.wait(10), "the first request's spans never reached the collector"

        async def traffic(client: httpx.AsyncClient) -> list[int]:
            return [(await client.post(INFER, content=b"{}")).status_code for _ in range(30)]

        assert harness.run(traffic) == [200] * 30
        # Every one of them finished while the export was still held by the collector.
        assert not collector.release.is_set()
        assert collector.requests == 1
        collector.release.set()
        assert telemetry.force_flush(10_000)
        assert len(collector.spans()) == 31 * 6

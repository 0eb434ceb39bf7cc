"""Dynamic batching: batches form under concurrency, results go back to the right caller."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from phiserve.config import BatchingSettings
from phiserve.errors import ConfigurationError, Overloaded
from phiserve.runtime.batching import Batcher
from phiserve.runtime.onnx import OnnxSession, choose_providers
from tests.toy_models import doubler_bytes, manifest_for


def _session(batch: bool = True) -> OnnxSession:
    data = doubler_bytes(batch=batch)
    return OnnxSession(manifest_for(data), data, execution_provider="cpu")


def _batcher(settings: BatchingSettings, batch: bool = True) -> Batcher:
    session = _session(batch)
    m = session.manifest
    return Batcher(
        session.run,
        name=m.name,
        version=m.version,
        model_max_batch_size=m.max_batch_size,
        settings=settings,
    )


def test_cpu_provider_is_used() -> None:
    assert _session().provider == "CPUExecutionProvider"


@pytest.mark.skipif(
    "CUDAExecutionProvider" in choose_providers("auto"),
    reason="this onnxruntime offers CUDA: the refusal without a GPU build cannot happen here",
)
def test_cuda_is_refused_without_gpu_build() -> None:
    with pytest.raises(ConfigurationError, match="install onnxruntime-gpu"):
        choose_providers("cuda")


async def _submit_many(batcher: Batcher, count: int) -> list:
    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(count)]
    results = await asyncio.gather(*(batcher.submit({"x": r}) for r in rows))
    return list(zip(rows, results, strict=True))


def test_concurrent_requests_are_batched_and_routed_back() -> None:
    async def main() -> list:
        batcher = _batcher(BatchingSettings(max_batch_size=16, max_queue_delay_ms=20))
        batcher.start()
        try:
            return await _submit_many(batcher, 40)
        finally:
            await batcher.stop()

    pairs = asyncio.run(main())
    sizes = [timings.batch_size for _, (_, timings) in pairs]
    assert max(sizes) == 16 and sum(1 for s in sizes if s > 1) >= 32
    for row, (outputs, timings) in pairs:
        np.testing.assert_array_equal(outputs["y"], row * 2)
        assert timings.enqueued_ns <= timings.started_ns <= timings.finished_ns


def test_batching_disabled_runs_one_request_at_a_time() -> None:
    async def main() -> list:
        batcher = _batcher(BatchingSettings(enabled=False))
        batcher.start()
        try:
            return await _submit_many(batcher, 10)
        finally:
            await batcher.stop()

    assert {timings.batch_size for _, (_, timings) in asyncio.run(main())} == {1}


def test_model_without_batch_axis_is_never_batched() -> None:
    batcher = _batcher(BatchingSettings(max_batch_size=8), batch=False)
    assert batcher.max_batch_size == 1


def test_multi_row_requests_share_a_batch_and_split_back() -> None:
    async def main() -> tuple:
        batcher = _batcher(BatchingSettings(max_batch_size=8, max_queue_delay_ms=20))
        batcher.start()
        try:
            a = batcher.submit({"x": np.ones((2, 4), np.float32)})
            b = batcher.submit({"x": np.ones((3, 4), np.float32)})
            return await asyncio.gather(a, b)
        finally:
            await batcher.stop()

    (ya, ta), (yb, tb) = asyncio.run(main())
    assert ya["y"].shape == (2, 4) and yb["y"].shape == (3, 4)
    assert ta.batch_size == tb.batch_size == 5


def test_full_queue_refuses_at_once_with_retry_after() -> None:
    async def main() -> None:
        batcher = _batcher(BatchingSettings(max_queue_size=2, max_queue_delay_ms=1000))
        # Not started: nothing drains the queue, so the bound is what answers.
        pending = [
            asyncio.ensure_future(batcher.submit({"x": np.ones((1, 4), np.float32)}))
            for _ in range(2)
        ]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await batcher.submit({"x": np.ones((1, 4), np.float32)})
        assert info.value.status == 503 and info.value.headers["Retry-After"] == "1"
        for task in pending:
            task.cancel()

    asyncio.run(main())

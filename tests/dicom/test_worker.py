"""Worker processes: the same preparation as in process, and a pool that outlives a crash."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from phiserve.dicom.errors import MalformedInstance, UnsupportedModality
from phiserve.dicom.spec import DicomPreprocessing
from phiserve.dicom.worker import DecodePool, prepare
from phiserve.monitoring.reference import IMAGE_STATISTICS, image_statistics
from tests.dicom import instances

SPEC = DicomPreprocessing(input="image", height=224, width=224, fit="pad")


def _crash(_: bytes) -> None:
    os._exit(3)  # what a native decoder's segfault looks like to the pool


def _slow_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@pytest.fixture
def pool() -> DecodePool:
    decoders = DecodePool(2)
    for started in decoders.start():
        assert started.result(timeout=120) != os.getpid()
    yield decoders
    decoders.close()


def test_workers_prepare_exactly_as_in_process(pool: DecodePool) -> None:
    raw = instances.raw("RG3_J2KI.dcm")

    async def main() -> None:
        remote = await pool.call(prepare, raw, SPEC, 25_000_000)
        local = prepare(raw, SPEC, 25_000_000)
        np.testing.assert_array_equal(remote.tensor, local.tensor)
        # The monitoring hook's own statistics of the model input, one float per name.
        expected = image_statistics(local.tensor)[0]
        assert list(remote.stats) == list(IMAGE_STATISTICS)
        assert list(remote.stats.values()) == expected.tolist()
        ds = instances.read("RG3_J2KI.dcm")
        assert remote.uids == (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID)
        refused = await pool.call(prepare, instances.raw("CT_small.dcm"), SPEC, 25_000_000)
        assert isinstance(refused.error, UnsupportedModality)  # typed errors cross the pipe
        assert refused.error.message == "modality CT is not accepted; this model takes CR, DX"
        assert refused.tensor is None

    asyncio.run(main())


def test_a_crash_refuses_that_input_and_the_pool_recovers(pool: DecodePool) -> None:
    async def main() -> None:
        innocent = asyncio.ensure_future(pool.call(_slow_pid, 1.0))
        await asyncio.sleep(0.2)  # the innocent call is running in the other worker
        with pytest.raises(MalformedInstance, match="the decoder crashed"):
            await pool.call(_crash, b"")
        # Held by the pool that broke, the innocent call was run again in a new one.
        assert await innocent != os.getpid()
        result = await pool.call(prepare, instances.raw("RG3_J2KI.dcm"), SPEC, 25_000_000)
        assert result.tensor is not None

    asyncio.run(main())

"""Preparing instances in worker processes, so that decoding never stops the event loop.

The JPEG 2000 decoders (pylibjpeg-openjpeg's and Pillow's alike) hold the GIL for a whole
decode: on a worker thread, one 4.3 MB lossless radiograph (RG1_J2KR, 1955 x 1841) stopped the
event loop, and every other request of the process with it, for about 0.5 s (``make bench``
prints the loop's worst gap both ways). Worker processes decode instead: the instance's bytes
go in through a pipe, and its UIDs, the model-sized tensor and its statistics come back. They
are spawned, not forked (the server's threads make fork unsafe), when the server starts.

A decoder that crashes its process on a hostile file breaks the pool: the pool is replaced, and
each instance it was holding is tried once more in a process of its own, so the file that
crashes it again is refused and the others are answered.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from phiserve.dicom.errors import MalformedInstance
from phiserve.dicom.image import preprocess
from phiserve.dicom.instance import check_image, instance_uids, read_instance
from phiserve.dicom.spec import DicomPreprocessing
from phiserve.errors import PhiserveError
from phiserve.monitoring.reference import IMAGE_STATISTICS, image_statistics

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Prepared:
    """One instance, prepared: its UIDs ("" unknown; PHI-grade, pseudonymise them at once),
    and the model input with its statistics, or why it was refused."""

    uids: tuple[str, str, str] = ("", "", "")
    tensor: np.ndarray | None = None
    stats: dict[str, float] | None = None
    error: PhiserveError | None = None


def prepare(raw: bytes, spec: DicomPreprocessing, max_pixels: int) -> Prepared:
    """Read, check, decode and preprocess one instance (in a worker process)."""
    uids = ("", "", "")
    try:
        ds = read_instance(raw)
        uids = instance_uids(ds)
        check_image(ds, spec.modalities, max_pixels)
        tensor = preprocess(ds, spec)
    except PhiserveError as exc:
        return Prepared(uids, error=exc)
    # For the monitoring hook (``annotations["image_stats"]``), by its own definition.
    stats = dict(zip(IMAGE_STATISTICS, image_statistics(tensor)[0].tolist(), strict=True))
    return Prepared(uids, tensor, stats)


def _started() -> int:
    return os.getpid()


class DecodePool:
    """A pool of ``processes`` spawned workers, started on :meth:`start` or on first use."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._quarantine = asyncio.Semaphore(processes)

    def start(self) -> list[Future[int]]:
        """Spawn every worker now (each imports the decoders), not on the first request."""
        pool = self._executor()
        return [pool.submit(_started) for _ in range(self.processes)]

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.processes, mp_context=context)
        return self._pool

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker. If a worker dies meanwhile, the call runs again alone in
        a fresh process, so an input that crashes it again takes down no other; that input is
        refused."""
        loop = asyncio.get_running_loop()
        pool = self._executor()
        try:
            return await loop.run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            if self._pool is pool:  # the first caller to notice replaces it
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
        async with self._quarantine:  # at most ``processes`` of these at once, too
            alone = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            try:
                return await loop.run_in_executor(alone, fn, *args)
            except BrokenProcessPool:
                raise MalformedInstance(
                    "the instance could not be decoded (the decoder crashed)"
                ) from None
            finally:
                alone.shutdown(wait=False)

    def close(self) -> None:
        """Stop the workers (queued work is dropped; in-flight requests have drained by now)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

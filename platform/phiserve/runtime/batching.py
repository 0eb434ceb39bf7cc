"""Dynamic batching in the style of Triton's dynamic batcher, inside the service.

Requests for one model version wait in a bounded queue. A single loop forms a batch from the
queue head (up to ``max_batch_size`` rows, waiting at most ``max_queue_delay_ms`` for more once
the first request arrived), runs it on a worker thread, and splits the outputs back. Under load,
requests that arrive while a batch runs form the next one, so batching grows with load and adds
no delay when idle. A full queue is refused at once with 503 + Retry-After: nothing hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from phiserve import telemetry
from phiserve.config import BatchingSettings
from phiserve.errors import Overloaded

# Runs one (possibly concatenated) batch on a worker thread: named inputs in, named outputs out.
RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(slots=True)
class Timings:
    """Where one request's time went inside the batcher, in ``time.perf_counter_ns`` units."""

    enqueued_ns: int
    started_ns: int = 0
    finished_ns: int = 0
    batch_size: int = 0


@dataclass(slots=True)
class _Item:
    feeds: dict[str, np.ndarray]
    rows: int
    # Shapes past the batch axis: only requests that agree on them can share a batch.
    tail: tuple
    future: asyncio.Future
    timings: Timings = field(default_factory=lambda: Timings(time.perf_counter_ns()))


class Batcher:
    """Queue, batch and run requests for one model version.

    ``model_max_batch_size`` is the manifest's (0: the model has no batch axis); ``settings``
    may lower it or turn batching off.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        name: str,
        version: int,
        model_max_batch_size: int,
        settings: BatchingSettings,
    ) -> None:
        self._run_model = run
        self._name, self._version = name, version
        batchable = settings.enabled and model_max_batch_size > 0
        self.max_batch_size = min(settings.max_batch_size, model_max_batch_size) if batchable else 1
        self.max_delay_s = settings.max_queue_delay_ms / 1000 if batchable else 0.0
        self.max_queue = settings.max_queue_size
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the batching loop on the running event loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop once the queue is empty (in-flight requests finish first)."""
        while self._queue:
            await asyncio.sleep(0.005)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Timings]:
        """Queue one request; returns its outputs and timings. Raises :class:`Overloaded`."""
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"model {self._name!r} queue is full ({self.max_queue} waiting)")
        first = next(iter(feeds.values()))
        item = _Item(
            feeds=feeds,
            rows=first.shape[0] if self.max_batch_size > 1 else 1,
            tail=tuple((name, a.shape[1:]) for name, a in feeds.items()),
            future=asyncio.get_running_loop().create_future(),
        )
        self._queue.append(item)
        self._wakeup.set()
        return await item.future, item.timings

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_delay_s and self._rows_ready() < self.max_batch_size:
                # Triton's max_queue_delay: wait for more rows, measured from the oldest request.
                deadline = self._queue[0].timings.enqueued_ns / 1e9 + self.max_delay_s
                while self._rows_ready() < self.max_batch_size:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
            batch = self._take_batch()
            if not batch:
                continue
            started = time.perf_counter_ns()
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, batch)
            except Exception as exc:  # handed to every waiter; the loop itself carries on
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finished = time.perf_counter_ns()
            rows = sum(item.rows for item in batch)
            telemetry.observe_batch(self._name, self._version, rows, started, finished)
            for item, result in zip(batch, outputs, strict=True):
                item.timings.started_ns, item.timings.finished_ns = started, finished
                item.timings.batch_size = rows
                if not item.future.done():
                    item.future.set_result(result)

    def _rows_ready(self) -> int:
        return sum(item.rows for item in self._queue)

    def _take_batch(self) -> list[_Item]:
        """The oldest live request plus compatible ones, up to ``max_batch_size`` rows."""
        while self._queue and self._queue[0].future.done():  # deadline passed or cancelled
            self._queue.popleft()
        if not self._queue:
            return []
        head = self._queue.popleft()
        batch, rows = [head], head.rows
        if self.max_batch_size > 1:
            kept: deque[_Item] = deque()
            while self._queue and rows < self.max_batch_size:
                item = self._queue.popleft()
                if item.future.done():
                    continue
                if item.tail == head.tail and rows + item.rows <= self.max_batch_size:
                    batch.append(item)
                    rows += item.rows
                else:
                    kept.append(item)
            self._queue.extendleft(reversed(kept))
        return batch

    def _run(self, batch: list[_Item]) -> list[dict[str, np.ndarray]]:
        """Runs on the worker thread: concatenate, infer, split."""
        if len(batch) == 1:
            return [self._run_model(batch[0].feeds)]
        names = batch[0].feeds.keys()
        feeds = {name: np.concatenate([item.feeds[name] for item in batch]) for name in names}
        outputs = self._run_model(feeds)
        bounds = np.cumsum([item.rows for item in batch])[:-1]
        split = {name: np.split(value, bounds) for name, value in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(batch))]

"""The open-loop dispatcher: every arrival sent at its scheduled time, whatever came before.

Shared by the locust users (:class:`phiserve_load.users.OpenLoopUser`) and the benchmarks' load
generator (``benchmarks/loadgen.py``), so that both measure an open loop the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import gevent
import gevent.pool

T = TypeVar("T")


def never() -> bool:
    """A ``stopping`` for dispatchers that run until their greenlet is killed."""
    return False


def dispatch(
    arrivals: Iterable[tuple[float, T]],
    send: Callable[[float, T], Any],
    drop: Callable[[float, T], Any],
    *,
    max_outstanding: int,
    stopping: Callable[[], bool] = never,
    drain_s: float = 0.0,
) -> None:
    """Issue each ``(offset, item)`` at ``t0 + offset``, ``t0`` being now (``perf_counter``).

    ``send(intended, item)`` runs on its own greenlet from a pool of ``max_outstanding``, so a
    slow answer never delays the next arrival; a dispatcher that fell behind sends at once.
    When the pool is full the arrival is not sent: ``drop(intended, item)`` runs instead, and the
    callers count it as a failure, so an overloaded server fails the error rate rather than
    quietly lowering the offered load. Ends when the arrivals run out or ``stopping()`` turns
    true, then waits up to ``drain_s`` for the requests in flight and kills the rest.
    """
    pool = gevent.pool.Pool(max_outstanding)
    t0 = time.perf_counter()
    for offset, item in arrivals:
        if stopping():
            break
        intended = t0 + offset
        delay = intended - time.perf_counter()
        if delay > 0:
            gevent.sleep(delay)
            if stopping():
                break
        if pool.full():
            drop(intended, item)
        else:
            pool.spawn(send, intended, item)
    pool.join(timeout=drain_s)
    pool.kill(block=True)

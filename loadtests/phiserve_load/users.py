"""The locust users: closed-loop clients and the open-loop dispatcher.

Closed loop (:class:`ClosedLoopUser`): each user sends a request, waits for the answer (and
``--think-time``), then sends the next. Offered load falls when the server slows down, so latency
percentiles look better than what an independent stream of clients would see (coordinated
omission). Good for "how much can N clients push through".

Open loop (:class:`OpenLoopUser`): one dispatcher greenlet per user issues request *i* at its
scheduled time ``t0 + i / rate`` (or Poisson arrivals) whether or not earlier requests have been
answered, each on its own greenlet from a bounded pool. Latency is measured from the *scheduled*
time, so when the server (or the load generator) falls behind, the wait shows up in the
percentiles instead of silently lowering the offered rate. When ``--max-outstanding`` requests
are in flight a new arrival is not sent and counts as a failure ("dropped"), so an overloaded
server fails the error-rate gate rather than throttling the test. Note what this is *not*:
locust's ``constant_throughput`` wait time plus a shape still waits for each answer before the
next request of that user, which is a closed loop with pacing.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from typing import Any

import gevent
from gevent import GreenletExit
from locust import FastHttpUser, task
from locust.user.users import LOCUST_STATE_STOPPING

from phiserve_load import openloop
from phiserve_load import session as session_mod
from phiserve_load.arrivals import arrival_schedule
from phiserve_load.session import LoadSession
from phiserve_load.tensors import Payload

CONTEXT_KEY = "phiserve"


class OpenLoopDropped(Exception):
    """An arrival that was not sent because too many requests were in flight."""


class UnfinishedRequest(Exception):
    """A request still unanswered when the run ended."""


class ServerError(Exception):
    """A non-200 answer: status and the server's error message."""


def error_message(status: int, body: bytes | None) -> str:
    detail = ""
    if body:
        try:
            doc = json.loads(body)
            detail = str(doc.get("error", "")) if isinstance(doc, dict) else ""
        except ValueError:
            detail = body[:120].decode(errors="replace")
    return f"HTTP {status}: {detail[:160]}" if detail else f"HTTP {status}"


def check_answer(resp: Any, ctx: dict[str, Any]) -> int:
    """Note the send-to-answer time in ``ctx``; fail a non-200 answer. Returns the status."""
    ctx["service_ms"] = resp.request_meta["response_time"]
    status = resp.status_code or 0
    # Status 0: no answer; locust already holds the connection error as the cause.
    if status not in (0, 200):
        resp.failure(ServerError(error_message(status, resp.content)))
    return status


_USER_INDEX = itertools.count()


class PhiserveUser(FastHttpUser):
    """Shared request sending; abstract (locust spawns only the concrete users)."""

    abstract = True

    def __init__(self, environment: Any) -> None:
        # Workers build the session (discovery, payloads) when their first user starts.
        self.session: LoadSession = session_mod.ensure(
            environment, build_payloads=True, preflight=False
        )
        opts = self.session.opts
        self.network_timeout = opts.request_timeout
        self.connection_timeout = opts.request_timeout
        self.insecure = opts.insecure
        self.concurrency = self.connections(opts.max_outstanding)
        # With --seed, user n of a process always draws the same targets and bodies.
        index = next(_USER_INDEX)
        self.chooser = self.session.chooser(index)
        self.rng = random.Random(None if opts.seed is None else opts.seed * 7919 + index)
        super().__init__(environment)

    def connections(self, max_outstanding: int) -> int:
        """Size of this user's connection pool."""
        return 1

    def pick(self) -> Payload:
        """A payload for the next request, per the mix."""
        target = self.chooser.choose()
        return self.rng.choice(self.session.payloads[target.key])

    def send(self, payload: Payload, *, intended: float | None = None, step: int = -1) -> None:
        """POST one payload; reports a request event with the phiserve context.

        ``intended`` (a ``perf_counter`` time) makes the reported latency run from the scheduled
        send time: it replaces locust's own response time, so locust's CSV and HTML show the
        coordinated-omission-free figure too.
        """
        sent = time.perf_counter()
        epoch_sent = time.time()
        scheduled = intended if intended is not None else sent
        ctx: dict[str, Any] = {
            "model": payload.target.model,
            "version": payload.target.version,
            "encoding": payload.target.encoding,
            "batch": payload.batch,
            "t_start": epoch_sent - (sent - scheduled),
            "lag_ms": (sent - scheduled) * 1000.0,
            "step": step,
        }
        headers = {**payload.headers, **self.session.tokens.headers()}
        try:
            with self.client.post(
                payload.target.path,
                data=payload.body,
                headers=headers,
                name=payload.name,
                catch_response=True,
                context={CONTEXT_KEY: ctx},
            ) as resp:
                check_answer(resp, ctx)
                if intended is not None:
                    resp.request_meta["response_time"] = (time.perf_counter() - intended) * 1000.0
        except GreenletExit:
            # Killed at the end of the run while waiting: count it, from its scheduled time.
            if intended is not None:
                self._fire_failure(
                    payload,
                    ctx,
                    UnfinishedRequest("no answer before the run ended"),
                    (time.perf_counter() - intended) * 1000.0,
                )
            raise

    def _fire_failure(
        self, payload: Payload, ctx: dict[str, Any], exc: Exception, latency_ms: float
    ) -> None:
        ctx.setdefault("service_ms", 0.0)
        self.environment.events.request.fire(
            request_type="POST",
            name=payload.name,
            response_time=latency_ms,
            response_length=0,
            response=None,
            exception=exc,
            context={CONTEXT_KEY: ctx},
        )


class ClosedLoopUser(PhiserveUser):
    """Sends back to back (plus ``--think-time``)."""

    def wait_time(self) -> float:
        """Seconds between a user's requests."""
        return self.session.opts.think_time

    @task
    def infer(self) -> None:
        """One inference request (none once --max-requests is spent; the run then ends)."""
        if not self.session.take():
            gevent.sleep(0.5)
            return
        self.send(self.pick())


class OpenLoopUser(PhiserveUser):
    """A dispatcher issuing requests at scheduled times (its share of ``--rate``)."""

    def connections(self, max_outstanding: int) -> int:
        """Every request in flight needs its own connection, or it would queue here."""
        return max_outstanding

    def wait_time(self) -> float:
        """The dispatcher task runs once; nothing to wait for."""
        return 0.0

    def _stopping(self) -> bool:
        return self._state == LOCUST_STATE_STOPPING

    @task
    def dispatch(self) -> None:
        """Issue the whole schedule, then drain; stays idle until the run stops."""
        opts = self.session.opts
        limit = math.ceil(opts.max_requests / opts.dispatchers) if opts.max_requests else None
        schedule = itertools.islice(arrival_schedule(opts, self.rng), limit)
        # Each arrival's payload is drawn in schedule order, so --seed runs stay reproducible.
        openloop.dispatch(
            ((offset, (step, self.pick())) for offset, step in schedule),
            self._send_at,
            self._drop,
            max_outstanding=opts.max_outstanding,
            stopping=self._stopping,
            # Answers to requests already sent still count (their latency may be the p99).
            drain_s=opts.request_timeout,
        )
        while not self._stopping():
            gevent.sleep(0.2)

    def _send_at(self, intended: float, arrival: tuple[int, Payload]) -> None:
        step, payload = arrival
        self.send(payload, intended=intended, step=step)

    def _drop(self, intended: float, arrival: tuple[int, Payload]) -> None:
        """Not sent: counted as a failure, so an overloaded server fails the error gate."""
        step, payload = arrival
        ctx = {
            "model": payload.target.model,
            "version": payload.target.version,
            "encoding": payload.target.encoding,
            "batch": payload.batch,
            "t_start": time.time() - (time.perf_counter() - intended),
            "lag_ms": 0.0,
            "step": step,
        }
        self._fire_failure(
            payload,
            ctx,
            OpenLoopDropped(
                f"dropped: {self.session.opts.max_outstanding} requests already in flight"
            ),
            0.0,
        )

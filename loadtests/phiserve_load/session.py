"""One process's view of a run: options, token, discovered signatures, the mix, the payloads.

Built once per process. On a local runner or the master it is built from locust's ``init`` event,
with a preflight that ends the run early and clearly when the host or token is wrong. On a
worker it is built by the first user that starts, after the master has sent the options.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import gevent.lock

from phiserve_load import discovery, mix, options, tensors
from phiserve_load.auth import TokenSource
from phiserve_load.discovery import Client, ModelSignature, PreflightError


@dataclass
class LoadSession:
    """Everything users and hooks share inside one process."""

    opts: options.LoadOptions
    tokens: TokenSource
    client: Client
    signatures: list[ModelSignature]
    weighted: list[tuple[tensors.Target, float]]
    payloads: dict[str, list[tensors.Payload]] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    # Requests this process may still send (--max-requests on a local runner); None: no cap.
    # Distributed runs are capped by the master instead, within about a second of requests.
    budget: int | None = None

    def take(self) -> bool:
        """Claim one request from the budget; False once it is spent."""
        if self.budget is None:
            return True
        if self.budget <= 0:
            return False
        self.budget -= 1
        return True

    def chooser(self, seed_offset: int) -> mix.WeightedChooser:
        """A chooser with its own random stream (one per user keeps runs reproducible)."""
        seed = None if self.opts.seed is None else self.opts.seed + seed_offset
        return mix.WeightedChooser(self.weighted, random.Random(seed))

    def describe_targets(self) -> list[dict[str, Any]]:
        """Targets and their expected share of requests, for run.json."""
        total = sum(w for _, w in self.weighted)
        return [
            {
                "key": t.key,
                "model": t.model,
                "version": t.version,
                "encoding": t.encoding,
                "share": w / total,
                "batch_sizes": list(tensors.usable_batches(t.signature, self.opts.batch_sizes)),
            }
            for t, w in self.weighted
        ]


_lock = gevent.lock.Semaphore()
_session: LoadSession | None = None


def current() -> LoadSession | None:
    """The session, if built."""
    return _session


def reset() -> None:
    """Forget the session (tests)."""
    global _session
    _session = None


def _preflight_infer(client: Client, session: LoadSession) -> None:
    """One request per target, so a missing infer scope or a bad signature fails up front."""
    rng = random.Random(0)
    for target, _ in session.weighted:
        payload = tensors.build_payload(target, 1, rng, dim_size=session.opts.dim_size)
        status, _, body = client.request(
            "POST",
            target.path,
            body=payload.body,
            headers=payload.headers,
            timeout=session.opts.request_timeout,
        )
        what = f"POST {target.path} ({target.encoding})"
        problem = discovery.auth_problem(status, body, session.tokens, what)
        if problem:
            raise PreflightError(problem)
        if status != 200:
            try:
                detail = json.loads(body).get("error", "")
            except (ValueError, AttributeError):
                detail = body[:200].decode(errors="replace")
            raise PreflightError(f"{what}: the server answered {status}: {detail}")


def ensure(environment: Any, *, build_payloads: bool, preflight: bool) -> LoadSession:
    """Build the session once (thread- and greenlet-safe); later calls return it."""
    global _session
    with _lock:
        if _session is not None:
            if build_payloads and not _session.payloads:
                _fill_payloads(_session)
            return _session
        opts = options.from_parsed(environment.parsed_options, environment.host)
        tokens = TokenSource(opts.token_file)
        client = Client(opts.host, tokens, insecure=opts.insecure)
        requests = discovery.parse_models(opts.models)
        if preflight:
            discovery.check_ready(client)
        signatures = discovery.discover(client, requests)
        weighted = mix.build_targets(signatures, opts.encodings, opts.mix)
        local = type(getattr(environment, "runner", None)).__name__ == "LocalRunner"
        session = LoadSession(
            opts=opts,
            tokens=tokens,
            client=client,
            signatures=signatures,
            weighted=weighted,
            rng=random.Random(opts.seed),
            budget=opts.max_requests if local and opts.max_requests else None,
        )
        if preflight:
            _preflight_infer(client, session)
        if build_payloads:
            _fill_payloads(session)
        _session = session
        return session


def _fill_payloads(session: LoadSession) -> None:
    session.payloads = tensors.build_payloads(
        [t for t, _ in session.weighted],
        session.opts.batch_sizes,
        variants=session.opts.payload_variants,
        dim_size=session.opts.dim_size,
        rng=session.rng,
    )

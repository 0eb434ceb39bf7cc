"""The locust side of CDS Hooks runs (``--cds-service``): the shared load and the user.

Every user of a process shares one :class:`CdsLoad` (signer, call body); the preflight (master or
local runner) checks that discovery lists the service for this client before any load is sent.
Calls are reported like every other request, under the service (model) name and encoding
``cds``, so the report, its exact percentiles and the SLO gate cover them unchanged.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import gevent.lock
from locust import FastHttpUser, task

from phiserve_load import options as options_mod
from phiserve_load.cds import ENCODING, CallBody, Signer
from phiserve_load.discovery import Client, PreflightError
from phiserve_load.users import CONTEXT_KEY, ServerError, check_answer, error_message


@dataclass
class CdsLoad:
    """What every CDS user of a process shares."""

    host: str
    service: str
    signer: Signer
    body: CallBody

    @property
    def path(self) -> str:
        """The service's path."""
        return f"/cds-services/{self.service}"

    def headers(self, path: str | None = None) -> dict[str, str]:
        """Content type and a fresh client JWT for ``path`` (default: the service call)."""
        token = self.signer.token(self.host + (path or self.path))
        return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}


_lock = gevent.lock.Semaphore()
_load: CdsLoad | None = None


def ensure(environment: Any, *, preflight: bool) -> CdsLoad:
    """The process's CDS load, built once; the preflight checks the server lists the service."""
    global _load
    with _lock:
        if _load is not None:
            return _load
        opts = options_mod.from_parsed(environment.parsed_options, environment.host)
        if not (opts.cds_key_file and opts.cds_iss):
            raise options_mod.OptionsError("--cds-service needs --cds-key-file and --cds-iss")
        load = CdsLoad(
            opts.host.rstrip("/"),
            opts.cds_service,
            Signer.from_file(opts.cds_key_file, opts.cds_iss),
            CallBody(opts.cds_observations),
        )
        if preflight:
            discover(load, insecure=opts.insecure)
        _load = load
        return load


def discover(load: CdsLoad, *, insecure: bool = False) -> None:
    """Raise :class:`PreflightError` unless discovery lists the service for this client."""
    client = Client(load.host, None, insecure=insecure)
    status, _, body = client.request(
        "GET", "/cds-services", headers=load.headers("/cds-services"), auth=False
    )
    if status != 200:
        raise PreflightError(
            f"GET /cds-services answered {status}: {error_message(status, body)} (does the "
            f"server trust --cds-iss {load.signer.iss!r} with this key in PHISERVE_CDS_CLIENTS?)"
        )
    services = [s.get("id") for s in json.loads(body).get("services", [])]
    if load.service not in services:
        raise PreflightError(f"CDS service {load.service!r} not offered; the server has {services}")


def reset() -> None:
    """Forget the process's CDS load (tests)."""
    global _load
    _load = None


class CdsHooksUser(FastHttpUser):
    """An EHR calling one CDS service back to back (plus ``--think-time``)."""

    def __init__(self, environment: Any) -> None:
        self.load = ensure(environment, preflight=False)
        opts = options_mod.from_parsed(environment.parsed_options, environment.host)
        self.think_time = opts.think_time
        self.network_timeout = opts.request_timeout
        self.connection_timeout = opts.request_timeout
        self.insecure = opts.insecure
        super().__init__(environment)

    def wait_time(self) -> float:
        """Seconds between a user's calls."""
        return self.think_time

    @task
    def patient_view(self) -> None:
        """One signed call; a non-200 answer or one without a card is a failure."""
        ctx: dict[str, Any] = {
            "model": self.load.service, "version": "", "encoding": ENCODING, "batch": 1,
            "t_start": time.time(), "lag_ms": 0.0, "step": -1,
        }  # fmt: skip
        with self.client.post(
            self.load.path,
            data=self.load.body.next(),
            headers=self.load.headers(),
            name=f"cds {self.load.service}",
            catch_response=True,
            context={CONTEXT_KEY: ctx},
        ) as resp:
            if check_answer(resp, ctx) == 200 and b'"cards":[{' not in (resp.content or b""):
                resp.failure(ServerError("HTTP 200 without a card"))

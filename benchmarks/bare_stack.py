"""phiserve's own ASGI stack under plain uvicorn, without BentoML: what BentoML's layers cost.

``python -m benchmarks.bare_stack`` builds the platform from the same ``PHISERVE_*`` settings as
``phiserve serve`` and serves ``platform.app`` with uvicorn's defaults as BentoML's worker sets
them (httptools and uvloop when installed, one worker, no server header), with no access log.
The difference to the shipped server is exactly what BentoML puts in front of phiserve's stack:
its OpenTelemetry ASGI middleware (every URL excluded), its timeout and context middleware, and
Starlette's error and exception middleware. ``make bench`` runs it in its ``bentoml`` group.
"""

from __future__ import annotations

import uvicorn
from starlette.types import Receive, Scope, Send

from phiserve.app import build_platform
from phiserve.config import load_settings


def main() -> None:
    """Serve until SIGTERM or SIGINT."""
    settings = load_settings()
    platform = build_platform(settings)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await platform.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await platform.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await platform.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()

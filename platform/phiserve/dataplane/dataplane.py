"""The transport-neutral data plane: health, metadata and inference over the model registry.

Everything the Open Inference Protocol means lives here, and every front end goes through it: the
V2 HTTP routes (:mod:`phiserve.protocol`) and the clinical interfaces alike. It knows nothing of
HTTP, bodies or headers (MLServer's ``handlers``, KServe's ``DataPlane``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from phiserve import __version__
from phiserve.errors import DeadlineExceeded, NotFound
from phiserve.model import (
    InferenceRequest,
    InferenceResponse,
    Model,
    check_inputs,
    select_outputs,
)
from phiserve.registry import ModelRegistry

if TYPE_CHECKING:
    from phiserve.context import RequestContext

EXTENSIONS = ["binary_tensor_data"]


class DataPlane:
    """Answers health, metadata and inference calls about the registry's models."""

    def __init__(self, registry: ModelRegistry, *, request_timeout_s: float) -> None:
        self.registry = registry
        self.request_timeout_s = request_timeout_s
        self.draining = False
        # Dependencies that must work for us to be ready (name -> healthy?), e.g. the audit sink.
        self.health_checks: dict[str, Callable[[], bool]] = {}

    async def start(self) -> None:
        """Load the registry's models."""
        await self.registry.start()

    async def stop(self) -> None:
        """Stop taking new work as ready, finish queued requests, unload."""
        self.draining = True
        await self.registry.stop()

    # --- health and metadata ---------------------------------------------------------------
    def readiness(self) -> dict[str, Any]:
        """Ready when every version is loaded, every dependency works and we are not draining.
        The reasons are names and causes, never data."""
        registry = self.registry
        unhealthy = sorted(name for name, check in self.health_checks.items() if not check())
        ready = bool(registry.loaded) and not registry.failures and not unhealthy
        ready = ready and not self.draining
        body: dict[str, Any] = {"ready": ready}
        if self.draining:
            body["reason"] = "draining"
        if unhealthy:
            body["unavailable"] = unhealthy
        if registry.failures:
            body["failures"] = [
                {"model": m, "version": v, "cause": c}
                for (m, v), c in sorted(registry.failures.items())
            ]
        return body

    def known_models(self) -> frozenset[str]:
        """Names of the models in the repository, loaded or not (computed once per load)."""
        return self.registry.names

    def server_metadata(self) -> dict[str, Any]:
        """Server name, version and protocol extensions."""
        return {"name": "phiserve", "version": __version__, "extensions": EXTENSIONS}

    def resolve(self, name: str | None, version: int | None, bad_version: bool = False) -> Model:
        """The live model version a call names (see :meth:`ModelRegistry.resolve`)."""
        return self.registry.resolve(name, version, bad_version)

    def resolve_for(self, ctx: RequestContext) -> Model:
        """The model version the request's route names; recorded in ``ctx`` (for the audit
        record, labels and spans) as the version actually served, after the version policy."""
        route = ctx.route
        if route is None:
            raise NotFound("no such route")
        model = self.resolve(route.model, route.version, route.bad_version)
        ctx.model, ctx.version = model.name, model.version
        return model

    def model_metadata(self, model: Model) -> dict[str, Any]:
        """A version's signature, with every live version and the policy's default."""
        doc = model.metadata()
        doc["versions"] = [str(v) for v in self.registry.versions(model.name)]
        doc["parameters"]["default_version"] = self.registry.defaults[model.name]
        return doc

    def model_ready(self, model: Model) -> bool:
        """Whether this version takes requests now."""
        return model.ready and not self.draining

    # --- inference -------------------------------------------------------------------------
    async def infer(self, model: Model, request: InferenceRequest) -> InferenceResponse:
        """Pre-process, check against the signature, predict (batched), post-process.

        Draining does not refuse work: requests that reached us still finish (only readiness
        drops, so the load balancer stops sending more).
        """
        if model.hooks:
            request = model.preprocess(request)
        feeds = check_inputs(model.manifest, request)
        try:
            prediction = await asyncio.wait_for(model.predict(feeds), self.request_timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"model {model.name!r}: no result within {self.request_timeout_s} s"
            ) from None
        response = InferenceResponse(
            model_name=model.name,
            model_version=model.version,
            id=request.id,
            outputs=select_outputs(model.manifest, request, prediction.outputs),
            batch_size=prediction.batch_size,
        )
        if model.hooks:
            response = model.postprocess(request, response)
        return response

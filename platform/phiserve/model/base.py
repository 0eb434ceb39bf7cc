"""The model interface: what every runtime implements and all the data plane calls.

A :class:`Model` is one servable version (MLServer's ``MLModel``, KServe's ``Model``): built from
its authenticated manifest, it loads from plaintext artifact bytes held in memory, describes
itself, and predicts on named tensors. Pre- and post-processing that belong to a model but not to
its runtime (explanations, deferral to a human, monitoring) plug in as :class:`ModelHook` objects
that the registry attaches from the manifest; the data plane runs, per request::

    request = model.preprocess(request)       # every hook, in order
    feeds = check_inputs(model.manifest, request)
    prediction = await model.predict(feeds)   # the runtime (batching, execution provider)
    response = model.postprocess(request, response)   # every hook, in order
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from phiserve.model.types import InferenceRequest, InferenceResponse, Prediction
from phiserve.repository.manifest import Manifest


class ModelHook:
    """Pre- and post-processing that one concern adds to a model; the defaults change nothing.

    Hooks run on the event loop, on the request path: keep them to microseconds, and hand
    anything slower (a rolling window update, say) to a worker of their own.
    """

    def preprocess(self, model: Model, request: InferenceRequest) -> InferenceRequest:
        """Adjust ``request`` before its inputs are checked against the signature."""
        return request

    def postprocess(
        self, model: Model, request: InferenceRequest, response: InferenceResponse
    ) -> InferenceResponse:
        """Adjust ``response`` (its outputs, its parameters) after the prediction."""
        return response


# Builds the hook a concern adds to one model version, or None when its manifest has nothing
# for that concern (no explanation block, no deferral policy, ...).
HookFactory = Callable[[Manifest], ModelHook | None]


class Model(abc.ABC):
    """One model version; ``load`` before ``predict``, ``unload`` when it stops serving."""

    def __init__(self, manifest: Manifest, hooks: Sequence[ModelHook] = ()) -> None:
        self.manifest = manifest
        self.hooks = tuple(hooks)
        self.ready = False

    @property
    def name(self) -> str:
        """The model's name."""
        return self.manifest.name

    @property
    def version(self) -> int:
        """The model's version."""
        return self.manifest.version

    @property
    def max_batch_size(self) -> int:
        """Rows the runtime may put in one batch (1: no batching)."""
        return 1

    @property
    def device(self) -> str:
        """Where the model runs (e.g. onnxruntime's execution provider), for metadata."""
        return "unknown"

    @abc.abstractmethod
    async def load(self, artifact: bytes) -> None:
        """Load from the decrypted artifact (in memory only) and set :attr:`ready`."""

    async def unload(self) -> None:
        """Finish queued work and release the runtime."""
        self.ready = False

    @abc.abstractmethod
    async def predict(self, inputs: Mapping[str, np.ndarray]) -> Prediction:
        """Run on inputs already checked against the signature; every output by name."""

    def metadata(self) -> dict[str, Any]:
        """Signature and runtime facts, in the Open Inference Protocol's model metadata shape."""
        m = self.manifest
        return {
            "name": m.name,
            "platform": m.platform,
            "inputs": [spec.model_dump() for spec in m.inputs],
            "outputs": [spec.model_dump() for spec in m.outputs],
            "parameters": {
                "version": m.version,
                "max_batch_size": self.max_batch_size,
                "sha256": m.sha256,
                "execution_provider": self.device,
            },
        }

    def preprocess(self, request: InferenceRequest) -> InferenceRequest:
        """Run every hook's ``preprocess`` in order."""
        for hook in self.hooks:
            request = hook.preprocess(self, request)
        return request

    def postprocess(
        self, request: InferenceRequest, response: InferenceResponse
    ) -> InferenceResponse:
        """Run every hook's ``postprocess`` in order."""
        for hook in self.hooks:
            response = hook.postprocess(self, request, response)
        return response


# Builds an unloaded model of one runtime from its manifest and hooks (see phiserve.registry).
ModelFactory = Callable[[Manifest, Sequence[ModelHook]], Model]

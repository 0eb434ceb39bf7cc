"""The model interface (:class:`Model`, :class:`ModelHook`) and the types it speaks."""

from phiserve.model.base import HookFactory, Model, ModelFactory, ModelHook
from phiserve.model.signature import check_inputs, select_outputs
from phiserve.model.types import (
    InferenceRequest,
    InferenceResponse,
    Prediction,
    RequestedOutput,
    RequestInput,
    ResponseOutput,
)

__all__ = [
    "HookFactory",
    "InferenceRequest",
    "InferenceResponse",
    "Model",
    "ModelFactory",
    "ModelHook",
    "Prediction",
    "RequestInput",
    "RequestedOutput",
    "ResponseOutput",
    "check_inputs",
    "select_outputs",
]

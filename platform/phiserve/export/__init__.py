"""What an export script hands to the model repository."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExportedModel:
    """One exported model, ready to be encrypted and published.

    ``parity`` records the native-vs-onnxruntime check (it must have ``passed: True``),
    ``metrics`` the evaluation on held-out data, ``card`` the model card (Model Card Toolkit
    fields). The repository derives the signature from the ONNX graph itself.
    """

    name: str
    onnx_bytes: bytes
    parity: dict[str, Any]
    metrics: dict[str, Any]
    card: dict[str, Any]
    # Per-model serving hints recorded in the manifest (e.g. {"max_batch_size": 8}).
    serving: dict[str, Any] = field(default_factory=dict)

"""The request bodies every server receives: byte-identical V2 requests, built once per run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from phiserve_load.cds import CallBody

BREAST_CANCER = "breast-cancer"
CHEST_XRAY = "chest-xray"
DETERIORATION = "deterioration"


@dataclass(frozen=True)
class Payload:
    """One HTTP request: path, body and headers (without Authorization)."""

    model: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """A JSON-safe form for handing to the load generator process."""
        return {
            "model": self.model,
            "path": self.path,
            "body_latin1": self.body.decode("latin-1"),
            "headers": self.headers,
        }

    @staticmethod
    def from_json(doc: dict[str, object]) -> Payload:
        """Inverse of :meth:`to_json`."""
        return Payload(
            model=str(doc["model"]),
            path=str(doc["path"]),
            body=str(doc["body_latin1"]).encode("latin-1"),
            headers=dict(doc["headers"]),  # type: ignore[arg-type]
        )


def breast_cancer_row(seed: int = 7) -> list[float]:
    """30 plausible feature values (fixed seed: every server and run sees the same numbers)."""
    rng = np.random.default_rng(seed)
    # Roughly the scale of the Wisconsin features; the model standardises them anyway.
    scale = np.array([14, 19, 92, 655, 0.1, 0.1, 0.09, 0.05, 0.18, 0.06] * 3, dtype=np.float64)
    return [round(float(v), 4) for v in scale * rng.uniform(0.7, 1.3, size=30)]


def breast_cancer_json(seed: int = 7) -> Payload:
    """A V2 JSON request for one row of 30 FP32 features (the benchmark's main request)."""
    doc = {
        "inputs": [
            {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": breast_cancer_row(seed)}
        ]
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Payload(
        BREAST_CANCER,
        f"/v2/models/{BREAST_CANCER}/infer",
        body,
        {"Content-Type": "application/json"},
    )


def chest_xray_binary(seed: int = 11, image: np.ndarray | None = None) -> Payload:
    """One 1x1x224x224 FP32 image (random, or ``image``) as a binary-tensor-extension request
    (as tritonclient sends).

    JSON would spend most of the time printing and parsing 50,176 floats on both sides; the
    binary extension is what a real client of an imaging model uses.
    """
    if image is None:
        image = np.random.default_rng(seed).random((1, 1, 224, 224), dtype=np.float32)
    raw = image.tobytes()
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": list(image.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"binary_data": False}}],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return Payload(
        CHEST_XRAY,
        f"/v2/models/{CHEST_XRAY}/infer",
        head + raw,
        {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        },
    )


def cds_patient_view(n_observations: int) -> Payload:
    """A CDS Hooks patient-view call to the deterioration service, its prefetch holding
    ``n_observations`` SYNTHETIC Observations (the locust CDS user's body; the client JWT is
    signed per call by the load generator)."""
    return Payload(
        DETERIORATION,
        f"/cds-services/{DETERIORATION}",
        CallBody(n_observations).next(),
        {"Content-Type": "application/json"},
    )

"""Reference statistics of a model's training population: the manifest's "monitoring" block.

An export script calls :func:`reference_block` once with the data the model was trained on and
the scores the exported artifact gives it; the result goes into
``ExportedModel.extensions["monitoring"]`` and so into the authenticated manifest. At serving, the
monitoring hook bins live traffic with the same :func:`bin_index` and compares proportions (PSI).

Monitored features are named scalars per row: the columns of a tabular input tensor, or for an
imaging model the per-image summary statistics of :func:`image_statistics` (the names in
:data:`IMAGE_STATISTICS`). Export and serving compute them with the same functions, so the
reference and the live window cannot disagree on a definition.

A feature name is a label value in /metrics, so the block restricts it to a short plain name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BLOCK: Final = "monitoring"
# Deciles: nine inner edges, ten bins (fewer when a feature takes few distinct values).
QUANTILES: Final = tuple(q / 10 for q in range(1, 10))
# Per-image statistics of an imaging model's input, in this order (see image_statistics).
IMAGE_STATISTICS: Final = ("mean", "std", "p05", "p50", "p95")
# Pixels between samples along each image axis for the percentiles: every 4th row and column
# (1/16 of a 224 x 224 image) keeps them within a grey level and costs ~10x less than all pixels.
_STRIDE: Final = 4
# Names are Prometheus label values and audit-safe codes; the leading underscore is reserved
# ("_score" labels the score's own PSI series).
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()/-]{0,63}$")


class Distribution(BaseModel):
    """Decile bins of one variable in the reference population."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Inner bin edges, ascending: bin i holds edges[i-1] < x <= edges[i].
    edges: list[float] = Field(max_length=len(QUANTILES))
    # Share of non-missing reference rows in each of the len(edges) + 1 bins.
    proportions: list[float]

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly ascending")
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError("proportions needs one entry per bin (len(edges) + 1)")
        if any(p < 0 for p in self.proportions) or abs(sum(self.proportions) - 1) > 1e-6:
            raise ValueError("proportions must be non-negative and sum to 1")
        return self


class FeatureReference(Distribution):
    """One monitored feature: its name, decile bins and how often it was missing."""

    name: str
    missing_rate: float = Field(default=0.0, ge=0, le=1)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError("feature names are 1-64 letters, digits, spaces or ._()/-")
        return name


class ScoreReference(Distribution):
    """Where the score comes from (an output column, maybe after softmax) and its deciles."""

    output: str
    # Column of a [rows, classes] output; None for a [rows] or [rows, 1] output.
    column: int | None = Field(default=None, ge=0)
    transform: Literal["identity", "softmax"] = "identity"
    # Scores at or above it are positive predictions (accuracy, and the decision label when no
    # hook set one).
    threshold: float = Field(default=0.5, ge=0, le=1)


class MonitoringBlock(BaseModel):
    """``manifest.extensions["monitoring"]``: what the monitoring hook compares traffic with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str
    kind: Literal["tabular", "image"]
    features: list[FeatureReference] = Field(min_length=1, max_length=256)
    score: ScoreReference
    # PSI above which a drift alert fires; None: the server's PHISERVE_MONITORING_PSI_THRESHOLD.
    psi_threshold: float | None = Field(default=None, gt=0)
    reference_rows: int = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> MonitoringBlock:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        if self.kind == "image" and tuple(names) != IMAGE_STATISTICS:
            raise ValueError(f"an image block monitors exactly {list(IMAGE_STATISTICS)}")
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Monitored feature names, in column order."""
        return tuple(f.name for f in self.features)


# --- the computations shared by export and serving ---------------------------------------------
def bin_index(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The bin of each value: 0 for ``x <= edges[0]``, ``len(edges)`` above the last edge."""
    return np.searchsorted(edges, values, side="left")


def image_statistics(images: np.ndarray) -> np.ndarray:
    """``[rows, len(IMAGE_STATISTICS)]`` float64: per image, the mean, standard deviation and
    5th, 50th, 95th percentiles of its (preprocessed) pixel values.

    ``images`` is a batch ``[rows, ...]`` of any image shape. Mean and std use every pixel; the
    percentiles a regular grid of every 4th pixel along the last two axes.
    """
    flat = images.reshape(images.shape[0], -1).astype(np.float64, copy=False)
    grid = images[..., ::_STRIDE, ::_STRIDE] if images.ndim >= 3 else images
    sampled = grid.reshape(images.shape[0], -1)
    pct = np.percentile(sampled, (5, 50, 95), axis=1).T
    return np.column_stack([flat.mean(axis=1), flat.std(axis=1), pct])


def scores_of(block: ScoreReference, output: np.ndarray) -> np.ndarray:
    """The score per row from the model's output array (the block says which column)."""
    values = np.asarray(output, dtype=np.float64)
    if block.transform == "softmax":
        shifted = np.exp(values - values.max(axis=1, keepdims=True))
        values = shifted / shifted.sum(axis=1, keepdims=True)
    if block.column is not None:
        return values[:, block.column]
    return values.reshape(values.shape[0])


def _distribution(values: np.ndarray) -> tuple[list[float], list[float]]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("a monitored variable has no finite reference value")
    # Quantiles that are data values: a discrete feature gets edges at its own values.
    edges = np.unique(np.quantile(finite, QUANTILES, method="inverted_cdf"))
    counts = np.bincount(bin_index(edges, finite), minlength=len(edges) + 1)
    return edges.tolist(), (counts / counts.sum()).tolist()


def reference_block(
    inputs: np.ndarray,
    score_output: np.ndarray,
    *,
    input_name: str,
    score_output_name: str,
    feature_names: Sequence[str] | None = None,
    score_column: int | None = None,
    score_transform: Literal["identity", "softmax"] = "identity",
    threshold: float = 0.5,
    psi_threshold: float | None = None,
) -> dict[str, Any]:
    """The "monitoring" manifest block for a model, from its reference population.

    ``inputs``: the reference rows as the model receives them: ``[rows, features]`` for a
    tabular model (NaN marks a missing value), ``[rows, ...]`` images for an imaging model
    (``feature_names`` None). ``score_output``: the exported model's output on those rows, named
    ``score_output_name``; the score is its ``score_column`` (after ``softmax`` if asked).
    Export scripts call it once::

        extensions={"monitoring": reference_block(x_train, onnx_probs, input_name="input",
                    score_output_name="probabilities", score_column=1,
                    feature_names=FEATURES)}
    """
    values = np.asarray(inputs, dtype=np.float64)
    kind: Literal["tabular", "image"]
    names: tuple[str, ...]
    if feature_names is None:
        kind, names, columns = "image", IMAGE_STATISTICS, image_statistics(values)
    else:
        if values.ndim != 2 or values.shape[1] != len(feature_names):
            raise ValueError("tabular inputs must be [rows, len(feature_names)]")
        kind, names, columns = "tabular", tuple(feature_names), values
    features = []
    for j, name in enumerate(names):
        edges, proportions = _distribution(columns[:, j])
        missing = float(np.mean(~np.isfinite(columns[:, j])))
        features.append(
            {"name": name, "edges": edges, "proportions": proportions, "missing_rate": missing}
        )
    score = ScoreReference(
        output=score_output_name,
        column=score_column,
        transform=score_transform,
        threshold=threshold,
        edges=[],
        proportions=[1.0],
    )
    edges, proportions = _distribution(scores_of(score, score_output))
    block = MonitoringBlock.model_validate(
        {
            "input": input_name,
            "kind": kind,
            "features": features,
            "score": score.model_copy(update={"edges": edges, "proportions": proportions}),
            "psi_threshold": psi_threshold,
            "reference_rows": values.shape[0],
        }
    )
    return block.model_dump(mode="json")

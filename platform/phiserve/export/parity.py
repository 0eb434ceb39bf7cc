"""Parity between a model in its training framework and the same model in onnxruntime.

An export is only as good as its conversion: a converter can drop an option, change a default or
lose precision. The check runs the exported bytes in an onnxruntime session built the way the
server builds one (from bytes, full graph optimisation) and compares every output with what the
native model produced on the same inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from phiserve.errors import PhiserveError

CPU = "CPUExecutionProvider"
MIN_SAMPLES = 100


class ParityError(PhiserveError):
    """The exported ONNX model does not reproduce the native model within tolerance.

    ``parity`` holds the measured figures (the same dict a passing check returns, with
    ``passed: False``), so the caller can log or report them.
    """

    def __init__(self, message: str, parity: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.parity = parity or {}


def run_onnx(onnx_bytes: bytes, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ONNX bytes once on CPU in memory and return every output by name.

    Export scripts use this to evaluate the artifact itself (what will be served), not only the
    native model. Raises ParityError when the session silently lands on another provider.
    """
    import onnxruntime as ort  # heavy import, only when a check really runs

    options = ort.SessionOptions()
    # Same optimisation level as the server: parity must hold for the graph that is served.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=[CPU])
    providers = session.get_providers()
    if providers != [CPU]:
        raise ParityError(f"parity session runs on {providers}, expected only {CPU}")
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def check_parity(
    name: str,
    onnx_bytes: bytes,
    feeds: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    *,
    atol: float,
    rtol: float,
    min_label_agreement: float = 1.0,
    min_samples: int = MIN_SAMPLES,
) -> dict[str, Any]:
    """Compare the native model's outputs ``expected`` with onnxruntime's on ``feeds``.

    Float outputs must satisfy ``|onnx - native| <= atol + rtol * |native|`` element-wise.
    Labels must agree on at least ``min_label_agreement`` of the samples: integer outputs
    (e.g. skl2onnx's ``label``) are compared exactly; with no integer output, the argmax of
    2-D float outputs (scores, logits) is compared. Lower ``min_label_agreement`` only for
    models whose float32 rounding can legitimately flip a decision (e.g. tree ensembles).

    Returns ``{"samples", "tolerance", "max_abs_diff", "label_agreement", "passed", ...}``
    with ``passed: True``; raises ParityError (carrying the same dict) when parity fails.
    """
    if not feeds or not expected:
        raise ParityError(f"parity failed for {name!r}: no inputs or no expected outputs given")
    samples = int(next(iter(feeds.values())).shape[0])
    actual = run_onnx(onnx_bytes, feeds)
    missing = sorted(set(expected) - set(actual))
    if missing:
        raise ParityError(
            f"parity failed for {name!r}: the ONNX model has no output(s) {missing} "
            f"(it has {sorted(actual)})"
        )

    natives = {out: np.asarray(native) for out, native in expected.items()}
    # Integer outputs are labels already; otherwise labels are the argmax of 2-D scores.
    has_int_labels = any(not np.issubdtype(a.dtype, np.floating) for a in natives.values())
    max_abs, close, labels = 0.0, True, []
    for out, native in natives.items():
        got = np.asarray(actual[out])
        if got.shape != native.shape:
            raise ParityError(
                f"parity failed for {name!r}: output {out!r} has shape {got.shape} in ONNX "
                f"and {native.shape} natively"
            )
        if np.issubdtype(native.dtype, np.floating):
            # Compare in float64 so the check itself adds no rounding; NaN counts as infinitely far.
            ref = native.astype(np.float64)
            diff = np.nan_to_num(np.abs(got.astype(np.float64) - ref), nan=np.inf)
            max_abs = max(max_abs, float(diff.max(initial=0.0)))
            close = close and bool(np.all(diff <= atol + rtol * np.abs(ref)))
            if native.ndim == 2 and not has_int_labels:
                labels.append(got.argmax(axis=1) == native.argmax(axis=1))
        else:
            labels.append((got == native).reshape(samples, -1).all(axis=1))
    agreement = float(np.mean(np.all(labels, axis=0))) if labels else 1.0

    parity: dict[str, Any] = {
        "samples": samples,
        "tolerance": {"atol": atol, "rtol": rtol, "min_label_agreement": min_label_agreement},
        "max_abs_diff": max_abs,
        "label_agreement": agreement,
        "outputs": sorted(expected),
        "provider": CPU,
        "passed": False,
    }
    problems = []
    if samples < min_samples:
        problems.append(f"only {samples} samples (at least {min_samples} required)")
    if not close:
        problems.append(
            f"outputs differ beyond atol={atol:g} + rtol={rtol:g}*|native| "
            f"(max abs diff {max_abs:.3g})"
        )
    if agreement < min_label_agreement:
        problems.append(f"label agreement {agreement:.4f} < {min_label_agreement:g}")
    if problems:
        raise ParityError(f"parity failed for {name!r}: " + "; ".join(problems), parity)
    parity["passed"] = True
    return parity

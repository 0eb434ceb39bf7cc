"""Clinical deterioration within 48 hours: a FHIR-fed logistic regression on SYNTHETIC patients.

Every patient here is made up: ``synthesize()`` draws seeded, synthetic adult inpatients
(demographics, vital signs, a basic metabolic panel and a blood count) and a synthetic outcome
from a hand-written risk formula. No real patient data is used, so the card's figures describe
this formula, not any hospital's patients.

What the export stores besides the ONNX model (all in the authenticated manifest):

- ``"fhir"``: the FHIR-to-feature mapping declared in ``features.yaml`` beside this script, with
  each feature's training mean filled in (what stands in for a missing value);
- ``"explanation"``: coefficients, standardisation means and scales, intercept, feature order:
  exact per-feature contributions to the logit;
- ``"confidence"``: label-conditional split conformal thresholds fitted on a calibration split,
  with the coverage measured on the held-out test split;
- ``"deferral"``: the decision threshold, risk bands and when to defer to a human;
- ``"monitoring"``: reference statistics of the training split, for drift in /metrics.

Nothing is written to disk: the ONNX model exists only as bytes in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from phiserve.export import (
    TARGET_OPSET,
    ExportedModel,
    build_card,
    check_parity,
    evaluate_binary,
    run_onnx,
)
from phiserve.fhir.mapping import FhirMapping
from phiserve.monitoring import reference_block

NAME = "deterioration"
FEATURES_FILE = Path(__file__).with_name("features.yaml")
N_PATIENTS = 8000
# Train / calibrate (conformal) / test (everything the card reports).
SPLIT = (0.6, 0.2, 0.2)
ALPHA = 0.1  # conformal level 90%, per outcome
TARGET_SENSITIVITY = 0.8  # the decision threshold is chosen on the calibration split for this
HIGH_RISK = 0.5  # scores from here up are "high" risk
MAX_MISSING = 1  # more missing defer-policy features than this defers


def synthesize(n: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """SYNTHETIC inpatients: feature columns by name (trained units) and a 0/1 outcome.

    Distributions are loosely shaped like adult medical wards; the outcome follows a fixed
    logistic formula with a few non-linear terms (fever or hypothermia, sodium either side of
    normal) that a linear model can only approximate.
    """
    male = rng.random(n) < 0.5
    age = np.clip(rng.normal(64, 17, n), 18, 100)
    x = {
        "age": age,
        "sex_male": male.astype(float),
        "encounter_hours": np.clip(rng.exponential(60, n), 0.5, 24 * 60),
        "heart_rate": np.clip(rng.normal(84, 16, n), 35, 190),
        "respiratory_rate": np.clip(rng.normal(18, 4, n), 6, 45),
        "systolic_bp": np.clip(rng.normal(126, 21, n) - 0.1 * (age - 64), 60, 230),
        "temperature": np.clip(rng.normal(37.0, 0.7, n), 34, 41.5),
        "spo2": np.clip(rng.normal(96, 2.6, n), 70, 100),
        "creatinine": np.clip(
            rng.lognormal(np.log(1.0), 0.45, n) * (1 + 0.004 * (age - 64)), 0.2, 15
        ),
        "sodium": np.clip(rng.normal(139, 4, n), 115, 165),
        "potassium": np.clip(rng.normal(4.2, 0.55, n), 2.5, 7.5),
        "glucose": np.clip(rng.lognormal(np.log(118), 0.3, n), 40, 900),
        "wbc": np.clip(rng.lognormal(np.log(8.0), 0.4, n), 0.5, 60),
        "hemoglobin": np.clip(rng.normal(12.6 + 1.2 * male, 1.9, n), 5, 19),
    }
    logit = -4.0 + 1.6 * (
        0.028 * (x["age"] - 64)
        + 0.045 * (x["heart_rate"] - 84)
        + 0.16 * (x["respiratory_rate"] - 18)
        - 0.028 * (x["systolic_bp"] - 126)
        + 0.9 * np.abs(x["temperature"] - 37.0)
        - 0.22 * (x["spo2"] - 96)
        + 0.9 * np.log(x["creatinine"])
        + 0.08 * np.abs(x["sodium"] - 139)
        + 0.35 * np.abs(x["potassium"] - 4.2)
        + 0.004 * (x["glucose"] - 118)
        + 0.06 * (x["wbc"] - 8)
        - 0.12 * (x["hemoglobin"] - 12.6)
        + 0.15 * x["sex_male"]
        - 0.002 * x["encounter_hours"]
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return x, y


def conformal_thresholds(scores: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, float]:
    """Label-conditional split conformal thresholds (nonconformity ``1 - p(label)``).

    ``event`` is in the set when the score is at least the first, ``no_event`` when it is at most
    the second; each outcome's true cases are covered with probability >= 1 - alpha.
    """

    def quantile(nonconformity: np.ndarray) -> float:
        k = int(np.ceil((len(nonconformity) + 1) * (1 - alpha)))
        return float(np.sort(nonconformity)[min(k, len(nonconformity)) - 1])

    event = 1.0 - quantile(1.0 - scores[y == 1])
    no_event = quantile(scores[y == 0])
    return event, no_event


def threshold_for_sensitivity(scores: np.ndarray, y: np.ndarray, target: float) -> float:
    """The highest threshold (2 decimals) whose sensitivity on (scores, y) is >= ``target``."""
    for t in np.arange(0.99, 0.0, -0.01):
        if np.mean(scores[y == 1] >= t) >= target:
            return round(float(t), 2)
    return 0.01


def calibration_rows(scores: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    """Card rows: Brier score, calibration in the large, and a 10-bin reliability table."""
    n = int(y.size)
    rows: list[dict[str, Any]] = [
        _row("Brier score", float(np.mean((scores - y) ** 2)), "all", n, int(y.sum())),
        _row(
            "mean predicted - observed rate",
            float(scores.mean() - y.mean()),
            "all",
            n,
            int(y.sum()),
        ),
    ]
    edges = np.quantile(scores, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, 9)
    for b in range(10):
        mask = bins == b
        if mask.any():
            label = f"score decile {b + 1} (mean predicted {scores[mask].mean():.3f})"
            rows.append(
                _row(
                    "observed event rate",
                    float(y[mask].mean()),
                    label,
                    int(mask.sum()),
                    int(y[mask].sum()),
                )
            )
    return rows


def _row(kind: str, value: float, slice_: str, n: int, n_positive: int) -> dict[str, Any]:
    return {
        "type": kind,
        "value": round(value, 4),
        "confidence_interval": {"lower_bound": None, "upper_bound": None},
        "threshold": None,
        "slice": slice_,
        "n": n,
        "n_positive": n_positive,
    }


def export(seed: int = 0) -> ExportedModel:
    """Synthesize, train, export, check parity, calibrate, evaluate, describe."""
    spec = yaml.safe_load(FEATURES_FILE.read_text())
    names = [f["name"] for f in spec["features"]]
    rng = np.random.default_rng(seed)
    columns, y = synthesize(N_PATIENTS, rng)
    x = np.column_stack([columns[n] for n in names]).astype(np.float32)
    order = rng.permutation(len(y))
    n_train, n_cal = int(SPLIT[0] * len(y)), int(SPLIT[1] * len(y))
    train, cal, test = np.split(order, [n_train, n_train + n_cal])

    clf = LogisticRegression(max_iter=2000)
    scaler = StandardScaler()
    pipeline = make_pipeline(scaler, clf).fit(x[train], y[train])
    onnx_bytes = convert_sklearn(
        pipeline,
        name=NAME,
        initial_types=[("input", FloatTensorType([None, len(names)]))],
        target_opset={"": TARGET_OPSET, "ai.onnx.ml": 3},
        options={id(clf): {"zipmap": False}},
    ).SerializeToString()
    parity = check_parity(
        NAME,
        onnx_bytes,
        {"input": x[test]},
        {"label": pipeline.predict(x[test]), "probabilities": pipeline.predict_proba(x[test])},
        atol=1e-5,
        rtol=1e-4,
    )

    # Everything below uses the artifact's own scores.
    def scores_of(rows: np.ndarray) -> np.ndarray:
        return run_onnx(onnx_bytes, {"input": x[rows]})["probabilities"][:, 1].astype(np.float64)

    s_cal, s_test = scores_of(cal), scores_of(test)
    threshold = threshold_for_sensitivity(s_cal, y[cal], TARGET_SENSITIVITY)
    event_t, no_event_t = conformal_thresholds(s_cal, y[cal], ALPHA)
    in_set = np.where(y[test] == 1, s_test >= event_t, s_test <= no_event_t)
    ambiguous = (s_test >= event_t) & (s_test <= no_event_t)

    age, male = x[test, names.index("age")], x[test, names.index("sex_male")] == 1
    metrics = evaluate_binary(
        y[test],
        s_test,
        threshold=threshold,
        threshold_rule=(
            f"the highest threshold with sensitivity >= {TARGET_SENSITIVITY} on the calibration "
            "split; applies to probabilities[:, 1] (the label output is its argmax, i.e. 0.5)"
        ),
        evaluation_data=f"held-out SYNTHETIC test split (seed {seed}), {len(test)} patients",
        seed=seed,
        slices={
            "sex: female": ~male,
            "sex: male": male,
            "age 18-49": age < 50,
            "age 50-69": (age >= 50) & (age < 70),
            "age 70+": age >= 70,
        },
    )
    coverage = {
        "all": float(in_set.mean()),
        "event": float(in_set[y[test] == 1].mean()),
        "no_event": float(in_set[y[test] == 0].mean()),
    }
    n_test, pos_test = len(test), int(y[test].sum())
    metrics["performance_metrics"] += (
        calibration_rows(s_test, y[test])
        + [
            _row(f"conformal coverage at {1 - ALPHA:.0%} ({k})", v, "all", n_test, pos_test)
            for k, v in coverage.items()
        ]
        + [
            _row(
                "conformal set holds both outcomes",
                float(ambiguous.mean()),
                "all",
                n_test,
                pos_test,
            )
        ]
    )
    metrics["conformal"] = {"coverage": coverage, "ambiguous_rate": float(ambiguous.mean())}

    means = [float(m) for m in scaler.mean_]
    mapping = FhirMapping.model_validate(
        {**spec, "features": [{**f, "impute": means[i]} for i, f in enumerate(spec["features"])]}
    )
    score = {"output": "probabilities", "index": 1}
    extensions = {
        "fhir": mapping.model_dump(mode="json"),
        "explanation": {
            "method": "linear",
            "input": "input",
            "features": names,
            "coefficients": [float(c) for c in clf.coef_[0]],
            "means": means,
            "scales": [float(s) for s in scaler.scale_],
            "intercept": float(clf.intercept_[0]),
            "score": score,
        },
        "confidence": {
            "method": "split-conformal-mondrian",
            "alpha": ALPHA,
            "event_threshold": event_t,
            "no_event_threshold": no_event_t,
            "score": score,
            "calibration_n": len(cal),
            "held_out_coverage": coverage["all"],
        },
        "deferral": {
            "score": score,
            "decision_threshold": threshold,
            "bands": [
                {"name": "low", "upper": threshold},
                {"name": "moderate", "upper": HIGH_RISK},
                {"name": "high", "upper": 1.0},
            ],
            "defer_uncertain": True,
            "max_missing": MAX_MISSING,
            "defer_out_of_range": True,
            "input": "input",
            "ranges": [f.range for f in mapping.features],
        },
        # Drift reference: the training split's deciles per feature and of the artifact's scores.
        "monitoring": reference_block(
            x[train],
            run_onnx(onnx_bytes, {"input": x[train]})["probabilities"],
            input_name="input",
            score_output_name="probabilities",
            score_column=1,
            feature_names=names,
            threshold=threshold,
        ),
    }

    card = build_card(
        name=NAME,
        overview=(
            "Logistic regression estimating the risk that an adult inpatient deteriorates "
            "(ICU transfer, rapid response call or death) within 48 hours, from 14 features read "
            "from FHIR R4 Patient, Encounter and LOINC-coded Observation resources. Trained and "
            "evaluated on SYNTHETIC patients only."
        ),
        owners=[
            {"name": "Example owner (replace with your team)", "contact": "ml-owners@example.org"}
        ],
        licence="Apache-2.0",
        references=[
            "https://hl7.org/fhir/R4/riskassessment.html",
            "https://cds-hooks.hl7.org/2.0/",
            "https://loinc.org",
        ],
        architecture=(
            "StandardScaler then LogisticRegression (L2, C=1, lbfgs), scikit-learn; per-feature "
            "contributions are exact (coefficient x standardised value). Confidence: "
            f"label-conditional split conformal prediction at {1 - ALPHA:.0%} fitted on "
            f"{len(cal)} calibration patients."
        ),
        training_data=(
            f"SYNTHETIC: {len(train)} made-up patients drawn by synthesize() in export.py "
            f"(seed {seed}) from hand-written distributions and a hand-written risk formula; "
            f"event rate {y[train].mean():.1%}. No real patient contributed any data."
        ),
        evaluation_data=metrics["evaluation_data"],
        input_format=(
            "14 float32 features per row in features.yaml order, in the units it names; the FHIR "
            "routes fill them from resources (missing values: the training mean)."
        ),
        output_format=(
            "probabilities: float32 [N, 2] as [P(no deterioration), P(deterioration)]; label: "
            "int64 argmax. With the deferral policy: decision, defer_reasons and risk_band."
        ),
        onnx_bytes=onnx_bytes,
        intended_use=(
            "A worked example of a FHIR-fed model with explanations, conformal confidence and "
            "deferral to a human, for testing and demonstrating phiserve's clinical interfaces. "
            "It must not be used to make or support any decision about a real patient."
        ),
        users=["Engineers integrating phiserve with an EHR (CDS Hooks, FHIR) in test systems."],
        use_cases=["End-to-end tests, demonstrations and load tests of the clinical interfaces."],
        limitations=[
            "SYNTHETIC training and test data: the figures describe a made-up formula, not any "
            "population; no clinical validity whatsoever.",
            "A linear model of a partly non-linear formula: risk at extreme temperatures and "
            "sodium values is underestimated.",
            "Conformal coverage holds on average over patients like the calibration split, per "
            "outcome; not for each patient or subgroup (see the coverage rows).",
            "Missing values are replaced by training means, which pulls scores towards average.",
        ],
        risks={
            "Use on real patients could miss deteriorations or raise false alarms.": (
                "Not for clinical use. A real model needs real, representative data, external "
                "validation and a threshold chosen with clinicians."
            ),
            "Scores near the decision threshold are unreliable.": (
                "The deferral policy sends them to a human (conformal set holds both outcomes)."
            ),
            "Subgroups may see different performance.": (
                "The card reports performance by sex and age band; check them before any use."
            ),
        },
        performance_metrics=metrics["performance_metrics"],
    )
    return ExportedModel(
        NAME, onnx_bytes, parity, metrics, card, {"max_batch_size": 256}, extensions
    )

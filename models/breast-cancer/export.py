"""Breast cancer (Wisconsin diagnostic): a scikit-learn pipeline exported to ONNX with skl2onnx.

Copy this folder to adapt it: replace the data loading, the pipeline and the card text; keep the
shape of ``export()``. Nothing is written to disk: the ONNX model exists only as bytes in memory.
"""

from __future__ import annotations

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
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
from phiserve.monitoring import reference_block

NAME = "breast-cancer"
# The served `label` output is argmax(probabilities), i.e. P(malignant) >= 0.5, so the card's
# operating point is the one a client gets without post-processing.
THRESHOLD = 0.5


def export(seed: int = 0) -> ExportedModel:
    """Train on a stratified 70% split, export, check parity, evaluate on the held-out 30%."""
    data = load_breast_cancer()
    x = data.data.astype(np.float32)  # train on exactly the float32 values the server receives
    y = (data.target == 0).astype(np.int64)  # scikit-learn codes malignant as 0; we want 1
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, stratify=y, random_state=seed
    )
    clf = LogisticRegression(max_iter=1000)
    pipeline = make_pipeline(StandardScaler(), clf).fit(x_train, y_train)

    onnx_bytes = convert_sklearn(
        pipeline,
        name=NAME,  # skl2onnx otherwise names the graph with a random UUID: a new digest each run
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        target_opset={"": TARGET_OPSET, "ai.onnx.ml": 3},
        options={id(clf): {"zipmap": False}},  # plain tensors, not a list of dicts
    ).SerializeToString()

    # Parity on all 569 rows: the native pipeline (float64 inside) vs onnxruntime (float32).
    parity = check_parity(
        NAME,
        onnx_bytes,
        {"input": x},
        {"label": pipeline.predict(x), "probabilities": pipeline.predict_proba(x)},
        atol=1e-5,
        rtol=1e-4,
    )

    # Evaluate the artifact itself, sliced by tumour size (mean radius tertiles of the training split).
    scores = run_onnx(onnx_bytes, {"input": x_test})["probabilities"][:, 1]
    cuts = np.quantile(x_train[:, 0], [1 / 3, 2 / 3])
    size = np.digitize(x_test[:, 0], cuts)
    metrics = evaluate_binary(
        y_test,
        scores,
        threshold=THRESHOLD,
        threshold_rule="fixed at 0.5: the served label output (argmax of the probabilities)",
        evaluation_data=f"held-out stratified 30% split (seed {seed}), {len(y_test)} tumours",
        seed=seed,
        slices={
            f"mean radius < {cuts[0]:.1f}": size == 0,
            f"mean radius {cuts[0]:.1f} to {cuts[1]:.1f}": size == 1,
            f"mean radius >= {cuts[1]:.1f}": size == 2,
        },
    )

    card = build_card(
        name=NAME,
        overview=(
            "Logistic regression on 30 nucleus features computed from fine-needle aspirate "
            "images, estimating whether a breast mass is malignant."
        ),
        owners=[
            {"name": "Example owner (replace with your team)", "contact": "ml-owners@example.org"}
        ],
        licence="Apache-2.0",
        references=[
            "https://archive.ics.uci.edu/dataset/17/breast+cancer+wisconsin+diagnostic",
            "https://scikit-learn.org/stable/datasets/toy_dataset.html#breast-cancer-dataset",
        ],
        citations=[
            "W.N. Street, W.H. Wolberg, O.L. Mangasarian. Nuclear feature extraction for breast "
            "tumor diagnosis. IS&T/SPIE Electronic Imaging, 1993.",
        ],
        architecture="StandardScaler then LogisticRegression (L2, C=1, lbfgs), scikit-learn.",
        training_data=(
            f"Wisconsin diagnostic breast cancer data as shipped with scikit-learn: {len(y_train)} "
            "of 569 tumours (stratified 70%), 212 malignant and 357 benign overall, one clinic "
            "in Wisconsin, early 1990s."
        ),
        evaluation_data=metrics["evaluation_data"],
        input_format="30 float32 features per row, in scikit-learn's feature order, unscaled.",
        output_format=(
            "label: int64 (1 = malignant, 0 = benign) at P(malignant) >= 0.5; "
            "probabilities: float32 [N, 2] as [P(benign), P(malignant)]."
        ),
        onnx_bytes=onnx_bytes,
        intended_use=(
            "A worked example of exporting, documenting and serving a tabular clinical model. "
            "Not validated for clinical use."
        ),
        users=["Engineers adapting phiserve to their own tabular models."],
        use_cases=["End-to-end tests and demonstrations of the serving platform."],
        limitations=[
            "569 tumours from one institution: no external validation, unknown transportability.",
            "Features come from a specific image-analysis pipeline; other measurements differ.",
            "Slices are small (about 57 tumours each; few malignant among small tumours): "
            "their intervals are wide, or left out below 10 cases.",
        ],
        risks={
            "A missed malignancy (false negative) delays treatment.": (
                "Not for clinical use; a real model needs a threshold chosen with clinicians "
                "against an explicit sensitivity target, and prospective validation."
            ),
            "Patient groups absent from the data may see worse performance.": (
                "Report per-slice metrics for the population it would serve before any use."
            ),
        },
        performance_metrics=metrics["performance_metrics"],
    )
    # Drift reference: the training split's deciles per feature and of the artifact's scores.
    monitoring = reference_block(
        x_train,
        run_onnx(onnx_bytes, {"input": x_train})["probabilities"],
        input_name="input",
        score_output_name="probabilities",
        score_column=1,
        feature_names=list(data.feature_names),
        threshold=THRESHOLD,
    )
    return ExportedModel(
        NAME,
        onnx_bytes,
        parity,
        metrics,
        card,
        {"max_batch_size": 256},
        extensions={"monitoring": monitoring},
    )

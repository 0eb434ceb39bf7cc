"""Reference statistics: decile bins, missing rates, image statistics, the block's validation."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from phiserve.monitoring import IMAGE_STATISTICS, MonitoringBlock, image_statistics, reference_block
from phiserve.monitoring.reference import bin_index, scores_of
from tests.monitoring.conftest import FEATURES, reference_rows, toy_block


def test_deciles_split_the_reference_population_into_tenths() -> None:
    block = MonitoringBlock.model_validate(toy_block())
    assert block.kind == "tabular" and block.feature_names == FEATURES
    x = reference_rows()
    for j, feature in enumerate(block.features):
        assert len(feature.edges) == 9
        assert np.allclose(
            feature.edges,
            np.quantile(x[:, j].astype(np.float64), np.arange(1, 10) / 10, method="inverted_cdf"),
        )
        counts = np.bincount(bin_index(np.asarray(feature.edges), x[:, j]), minlength=10)
        assert np.allclose(feature.proportions, counts / len(x))
        assert feature.missing_rate == 0.0
    assert block.score.column == 0 and block.reference_rows == len(x)


def test_missing_values_are_counted_and_left_out_of_the_bins() -> None:
    x = reference_rows(1000).astype(np.float64)
    x[:250, 1] = np.nan
    x[:, 3] = np.where(np.arange(1000) % 2, 1.0, 2.0)  # two values only: edges collapse
    block = MonitoringBlock.model_validate(
        reference_block(
            x,
            x * 0.25,
            input_name="x",
            score_output_name="s",
            score_column=0,
            feature_names=FEATURES,
        )
    )
    assert block.features[1].missing_rate == 0.25
    assert block.features[0].missing_rate == 0.0
    assert block.features[3].edges == [1.0, 2.0]
    assert np.allclose(block.features[3].proportions, [0.5, 0.5, 0.0])


def test_image_statistics_are_per_image_and_named() -> None:
    rng = np.random.default_rng(3)
    images = rng.random((3, 1, 224, 224), dtype=np.float32)
    images[1] *= 0.5
    stats = image_statistics(images)
    assert stats.shape == (3, len(IMAGE_STATISTICS))
    for i in range(3):
        flat = images[i].astype(np.float64).ravel()
        assert stats[i, 0] == pytest.approx(flat.mean())
        assert stats[i, 1] == pytest.approx(flat.std())
        # Percentiles from a 1-in-16 grid: within a few thousandths of the full image's.
        assert np.allclose(stats[i, 2:], np.percentile(flat, (5, 50, 95)), atol=0.01)


def test_an_image_block_monitors_the_image_statistics_and_a_softmax_score() -> None:
    images = np.random.default_rng(1).random((50, 1, 32, 32), dtype=np.float32)
    logits = np.random.default_rng(2).normal(size=(50, 3))
    block = MonitoringBlock.model_validate(
        reference_block(
            images,
            logits,
            input_name="image",
            score_output_name="logits",
            score_column=1,
            score_transform="softmax",
        )
    )
    assert block.kind == "image" and block.feature_names == IMAGE_STATISTICS
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.allclose(scores_of(block.score, logits), probs[:, 1])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"features": []}, "features"),
        ({"kind": "video"}, "kind"),
        ({"psi_threshold": -1}, "psi_threshold"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_a_bad_block_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        MonitoringBlock.model_validate(toy_block(**change))
    assert field in str(err.value)


def test_feature_names_must_be_plain_label_values() -> None:
    block = toy_block()
    block["features"][0]["name"] = 'x"} 1\nphiserve_fake{a="'
    with pytest.raises(ValidationError, match=r"features\.0\.name"):
        MonitoringBlock.model_validate(block)
    block["features"][0]["name"] = "_score"
    with pytest.raises(ValidationError, match=r"features\.0\.name"):
        MonitoringBlock.model_validate(block)


def test_edges_and_proportions_must_agree() -> None:
    block = toy_block()
    block["features"][2]["proportions"] = [0.5, 0.5]
    with pytest.raises(ValidationError, match=r"features\.2"):
        MonitoringBlock.model_validate(block)
    block = toy_block()
    block["features"][2]["edges"] = list(reversed(block["features"][2]["edges"]))
    with pytest.raises(ValidationError, match="ascending"):
        MonitoringBlock.model_validate(block)

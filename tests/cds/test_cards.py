"""Cards from real clinical results (the deterioration model through the data plane), and the
card store feedback joins on."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from phiserve.cds import cards
from phiserve.cds.cardstore import CardStore, IssuedCard
from phiserve.clinical import ClinicalResult
from phiserve.fhir.features import FeatureVector
from phiserve.fhir.mapping import FhirMapping
from tests.clinical.test_predict import NOW, features, run
from tests.fhir import bundles as fb
from tests.security.helpers import FakeClock

URL = "https://cds.example.org/model-cards/deterioration/versions/1"


def results(
    make_plane: Callable[..., Any], mapping: FhirMapping, records: list[list[dict[str, Any]]]
) -> list[tuple[ClinicalResult, FeatureVector]]:
    vectors = [features(mapping, record) for record in records]
    return list(zip(run(make_plane, vectors), vectors, strict=True))


def test_a_standing_prediction_card(make_plane: Callable[..., Any], mapping: FhirMapping) -> None:
    ((result, fv),) = results(make_plane, mapping, [fb.record(NOW)])
    card_id, card = cards.card(result, fv, model_card_url=URL)
    assert card["uuid"] == str(card_id) and uuid.UUID(card["uuid"]).version == 4
    assert len(card["summary"]) < 140
    assert card["summary"] == f"deterioration: high risk ({result.score:.0%})"
    assert card["indicator"] == "critical"  # band high
    assert card["source"] == {"label": "deterioration v1", "url": URL}
    detail = card["detail"]
    assert f"{result.score:.1%}" in detail and "band: **high**" in detail
    assert "split-conformal" in detail
    for c in result.contributions:
        assert f"| {c.feature} | {c.value:+.2f}" in detail
    assert "defer" not in detail.lower()
    codes = [r["code"] for r in card["overrideReasons"]]
    assert codes == list(cards.OVERRIDE_REASONS)
    assert all(r["display"] for r in card["overrideReasons"])
    # The card carries no identifier or name from the record, only the model's result.
    text = str(card)
    for canary in (fb.NAME_CANARY, fb.MRN, fb.SSN, fb.PATIENT_ID, fb.BIRTH_DATE, fb.ADDRESS):
        assert canary not in text


def test_a_deferred_prediction_card(make_plane: Callable[..., Any], mapping: FhirMapping) -> None:
    sparse = [fb.patient(), fb.encounter(NOW - timedelta(hours=3))]
    ((result, fv),) = results(make_plane, mapping, [sparse])
    assert result.deferred
    _, card = cards.card(result, fv, model_card_url=URL)
    assert card["summary"].endswith(", defer to human review")
    assert card["indicator"] in ("warning", "critical")
    assert "**Defer to human review:** " in card["detail"]
    assert "too many required features are missing" in card["detail"]
    assert "Missing, training mean used: " in card["detail"]


def test_summary_is_cut_below_140(make_plane: Callable[..., Any], mapping: FhirMapping) -> None:
    ((result, _),) = results(make_plane, mapping, [fb.record(NOW)])
    long = dataclasses.replace(result, model="m" * 200, decision="defer")
    text = cards.summary(long)
    assert len(text) == cards.MAX_SUMMARY and text.endswith("…")


def test_indicator_by_band() -> None:
    base = dict(
        model="m", version=1, score=0.5, outcome="x", interval=None, level=None,
        prediction_set=None, contributions=(), defer_reasons=(), prediction_id=None,
    )  # fmt: skip
    for band, want in [("negligible", "info"), ("low", "info"), ("moderate", "warning"),
                       ("high", "critical"), ("certain", "critical"), (None, "info")]:  # fmt: skip
        assert cards.indicator(ClinicalResult(band=band, decision="predict", **base)) == want
        deferred = ClinicalResult(band=band, decision="defer", **base)
        assert cards.indicator(deferred) == ("critical" if want == "critical" else "warning")


def test_card_store_expires_and_bounds() -> None:
    clock = FakeClock()
    store = CardStore(capacity=2, ttl_s=60, clock=clock)
    card = IssuedCard("deterioration", 1, "predict", "patient:" + "0" * 32, str(uuid.uuid4()))
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    store.add(a, card)
    clock.advance(30)
    store.add(b, card)
    assert store.get(a) == card and store.get(b) == card
    clock.advance(10)
    store.add(c, card)  # over capacity: the oldest goes
    assert store.get(a) is None and len(store) == 2
    clock.advance(55)  # b is 65 s old, c 55
    assert store.get(b) is None and store.get(c) == card
    clock.advance(10)
    assert store.get(c) is None and len(store) == 0

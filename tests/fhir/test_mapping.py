"""The "fhir" manifest block: validated when a version loads, prefetch templates from it."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from phiserve.export import ExportedModel
from phiserve.fhir.mapping import (
    FhirMapping,
    mapping_of,
    prefetch_templates,
    required_prefetch,
)
from tests.fhir.models import load_failure, with_extensions


def test_the_real_block_validates_and_is_attached(make_plane: Callable[..., Any]) -> None:
    async def main() -> None:
        plane, _ = make_plane()
        await plane.start()
        try:
            mapping = mapping_of(plane.resolve("deterioration", None))
            assert mapping is not None and len(mapping.features) == 14
            assert mapping_of(plane.resolve("deterioration", 1)) is mapping
        finally:
            await plane.stop()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda b: b["features"][3].update(range=[10, 5]), "extensions.fhir.features.3: Value error, range"),
        (lambda b: b["features"][4]["source"].update(lookback_hours=0),
         "extensions.fhir.features.4.source.observation.lookback_hours"),
        (lambda b: b["features"][5].update(missing="guess"), "extensions.fhir.features.5.missing"),
        (lambda b: b["features"][6]["source"].update(kind="lab"), "extensions.fhir.features.6.source"),
        (lambda b: b["features"][6]["source"]["conversions"]["[degF]"].update(scale=0),
         "extensions.fhir.features.6.source.observation.conversions"),
        (lambda b: b["features"].append(b["features"][0]), "extensions.fhir: Value error, feature names"),
        (lambda b: b.update(input="image"), "extensions.fhir.input"),
        (lambda b: b["features"].pop(), "extensions.fhir.input"),
        (lambda b: b["score"].update(output="logits"), "extensions.fhir.score"),
    ],
)  # fmt: skip
def test_a_bad_block_fails_the_version_naming_the_field(
    make_plane: Callable[..., Any],
    deterioration: ExportedModel,
    edit: Callable[[dict[str, Any]], None],
    field: str,
) -> None:
    block = copy.deepcopy(deterioration.extensions["fhir"])
    edit(block)
    cause = load_failure(make_plane, with_extensions(deterioration, fhir=block))
    assert field in cause
    assert "deterioration" in cause


def test_prefetch_templates_search_every_code_for_the_patient(mapping: FhirMapping) -> None:
    templates = prefetch_templates(mapping)
    assert templates["patient"] == "Patient/{{context.patientId}}"
    assert templates["encounters"].startswith("Encounter?patient={{context.patientId}}")
    query = parse_qs(urlsplit(templates["observations"]).query)
    assert query["patient"] == ["{{context.patientId}}"]
    codes = set(query["code"][0].split(","))
    for code in ("8867-4", "2160-0", "38483-4", "55284-4", "85354-9", "8480-6", "59408-5"):
        assert f"http://loinc.org|{code}" in codes
    assert set(query["status"][0].split(",")) == {"final", "amended", "corrected"}
    assert required_prefetch(mapping) == {"patient", "observations"}

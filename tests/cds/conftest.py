"""Fixtures of the CDS Hooks tests: the deterioration export and data plane (tests/fhir/models.py),
CDS clients and their keys."""

from __future__ import annotations

import pytest

from tests.cds.clients import Ehr, SigningKey, spec_ehr
from tests.fhir.models import deterioration, make_plane, mapping  # noqa: F401


@pytest.fixture(scope="session")
def spec_client() -> Ehr:
    """The spec's example EHR, signing ES384 with the published key."""
    return spec_ehr()


@pytest.fixture(scope="session")
def rsa_client() -> Ehr:
    """An EHR signing RS384 with a key the tests generated."""
    return Ehr("https://ehr-rsa.test/", [SigningKey.generate("RS384")])

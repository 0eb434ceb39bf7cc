"""Fixtures shared by the clinical test folders (see tests/fhir/models.py)."""

from tests.fhir.models import deterioration, make_plane, mapping  # noqa: F401

"""CDS Hooks 2.0: EHRs discover and call phiserve's FHIR-fed models as CDS services, and report
what their users did with the cards (see :mod:`phiserve.cds.http`)."""

from phiserve.cds.http import ROUTES, CdsHandlers

__all__ = ["ROUTES", "CdsHandlers"]

"""Clinical predictions: the one path from a FHIR feature vector through the data plane to a
result every clinical front end renders (FHIR RiskAssessment, CDS Hooks cards), and the audit
facts of the call."""

from phiserve.clinical.predict import (
    ClinicalResult,
    Contribution,
    Pseudonymize,
    audit_details,
    cite,
    predict,
)

__all__ = ["ClinicalResult", "Contribution", "Pseudonymize", "audit_details", "cite", "predict"]

"""FHIR R4: the model's FHIR-to-feature mapping (:mod:`.mapping`), parsing with fhir.resources'
R4B models (:mod:`.parse`), feature extraction (:mod:`.features`), and the direct FHIR route
(:mod:`.http`): a Bundle or Parameters in, a RiskAssessment or an OperationOutcome out."""

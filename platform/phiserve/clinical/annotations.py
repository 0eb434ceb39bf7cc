"""Names of the :attr:`~phiserve.model.InferenceRequest.annotations` that clinical front ends set.

Annotations are facts only a trusted front end adds (no wire format can set them); the hooks
(explanations, deferral, monitoring) read them. Values are request-level: clinical requests hold
one row.
"""

from typing import Final

# True: a clinical front end calls; explanations are always computed.
CLINICAL: Final = "clinical"
# Feature names the mapping could not fill (the training mean stands in), all policies.
MISSING: Final = "missing"
# The missing features whose policy counts them towards deferral.
DEFERRING: Final = "deferring"
# Feature names whose value lay outside the plausible range (not used; the mean stands in).
OUT_OF_RANGE: Final = "out_of_range"

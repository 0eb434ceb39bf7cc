"""Explanations and confidence: exact linear contributions and split-conformal prediction sets
from what the export stored in the manifest (:mod:`.blocks`), applied by a model hook
(:mod:`.hook`)."""

"""Deferral to a human: the manifest's policy (:mod:`.policy`), the model hook that applies it
(:mod:`.hook`) and the /metrics counter of deferrals by reason (:mod:`.metrics`)."""

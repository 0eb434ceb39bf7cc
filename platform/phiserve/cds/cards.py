"""A clinical result as a CDS Hooks card.

- ``summary`` (under 140 characters): the model, the risk band and the score; "defer to human
  review" when the deferral policy says so.
- ``indicator``: by band (negligible and low: info; moderate: warning; high and certain:
  critical); a deferred prediction is at least a warning.
- ``source``: label "<model> v<version>", url the model card of that version (served by
  phiserve, see :mod:`phiserve.cds.http`).
- ``detail`` (GitHub-flavoured Markdown): the score, its band, the conformal uncertainty band, the
  top contributing features with their signed contributions to the log-odds, what was missing or
  implausible, the deferral reasons.
- ``uuid``: a fresh random UUID, the key feedback is joined on (:mod:`.cardstore`).
- ``overrideReasons``: the reasons the EHR may offer the user when they dismiss the card; their
  codes are the bounded label values of the feedback metrics.

Feature names come from the authenticated manifest; no value a client sent appears on a card
except through the model's result.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from phiserve.clinical import ClinicalResult
from phiserve.deferral.policy import reasons_text
from phiserve.fhir.features import FeatureVector

MAX_SUMMARY: Final = 139
OVERRIDE_SYSTEM: Final = "urn:phiserve:cds:override-reason"
OVERRIDE_REASONS: Final = {
    "not-relevant": "Not clinically relevant for this patient now",
    "already-addressed": "Already being addressed",
    "data-inaccurate": "The data the score rests on is wrong or outdated",
    "disagree": "Clinical judgement disagrees with the score",
}
_INDICATOR: Final = {
    "negligible": "info",
    "low": "info",
    "moderate": "warning",
    "high": "critical",
    "certain": "critical",
}
_URGENCY: Final = ("info", "warning", "critical")


def indicator(result: ClinicalResult) -> str:
    """info | warning | critical, by band; at least warning when deferred."""
    level = _INDICATOR.get(result.band or "", "info")
    if result.deferred and _URGENCY.index(level) < _URGENCY.index("warning"):
        level = "warning"
    return level


def summary(result: ClinicalResult) -> str:
    """One line under 140 characters."""
    band = f"{result.band} risk" if result.band else "risk"
    text = f"{result.model}: {band} ({result.score:.0%})"
    if result.deferred:
        text += ", defer to human review"
    return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 1] + "…"


def detail(result: ClinicalResult, features: FeatureVector) -> str:
    """The Markdown shown when the user opens the card."""
    band = f" (band: **{result.band}**)" if result.band else ""
    lines = [f"**Risk of {result.outcome}: {result.score:.1%}**{band}", ""]
    if result.deferred:
        reasons = reasons_text(result.defer_reasons)
        lines += [f"**Defer to human review:** {reasons}.", ""]
    if result.interval is not None and result.level is not None:
        low, high = result.interval
        lines += [
            f"Uncertainty band ({result.level:.0%} split-conformal): scores from {low:.1%} to "
            f"{high:.1%} cannot be called either way at that level.",
            "",
        ]
    if result.contributions:
        lines += ["| Top contributing feature | Contribution to the log-odds |", "|---|---|"]
        lines += [
            f"| {c.feature} | {c.value:+.2f} ({_effect(c.value)}) |" for c in result.contributions
        ]
        lines.append("")
    if features.missing:
        lines += [f"Missing, training mean used: {', '.join(features.missing)}.", ""]
    if features.out_of_range:
        lines += [f"Implausible, not used: {', '.join(features.out_of_range)}.", ""]
    lines.append(
        f"Model {result.model} version {result.version}: read its model card (source link) "
        "for its intended use and limits."
    )
    return "\n".join(lines)


def _effect(contribution: float) -> str:
    if abs(contribution) < 0.005:  # shown as +0.00 or -0.00
        return "no visible effect"
    return "raises the risk" if contribution > 0 else "lowers the risk"


def card(
    result: ClinicalResult, features: FeatureVector, *, model_card_url: str
) -> tuple[uuid.UUID, dict[str, Any]]:
    """A new card for ``result``, and its uuid."""
    card_id = uuid.uuid4()
    return card_id, {
        "uuid": str(card_id),
        "summary": summary(result),
        "indicator": indicator(result),
        "detail": detail(result, features),
        "source": {"label": f"{result.model} v{result.version}", "url": model_card_url},
        "overrideReasons": [
            {"system": OVERRIDE_SYSTEM, "code": code, "display": display}
            for code, display in OVERRIDE_REASONS.items()
        ],
    }

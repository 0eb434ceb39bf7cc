"""The request mix: which target (model version and encoding) each request goes to.

``--mix 'breast-cancer=3,chest-xray:json=0.2,chest-xray@2=0'`` gives weights to targets. A key is
``model[@version][:encoding]``; among the keys that match a target the most specific one wins
(most parts given); a target no key matches weighs 1; weight 0 leaves a target out. A key that
matches nothing is an error, so a typo cannot silently change the mix.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

from phiserve_load.discovery import ModelSignature
from phiserve_load.tensors import Target


class MixError(ValueError):
    """A ``--mix`` that cannot be applied."""


@dataclass(frozen=True)
class MixRule:
    """One ``key=weight`` entry."""

    model: str
    version: str | None  # None: any; "" : the unversioned route ("default")
    encoding: str | None  # None: any
    weight: float

    @property
    def specificity(self) -> int:
        """How many parts the key names (more wins)."""
        return 1 + (self.version is not None) + (self.encoding is not None)

    def matches(self, target: Target) -> bool:
        """Whether this rule applies to ``target``."""
        return (
            self.model == target.model
            and (self.version is None or self.version == target.version)
            and (self.encoding is None or self.encoding == target.encoding)
        )


def parse_mix(text: str) -> list[MixRule]:
    """Parse ``--mix``."""
    rules: list[MixRule] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise MixError(f"--mix: {part!r} needs key=weight")
        try:
            weight = float(value)
        except ValueError:
            raise MixError(f"--mix: weight of {key!r} is not a number: {value!r}") from None
        if weight < 0:
            raise MixError(f"--mix: weight of {key!r} is negative")
        rest, _, encoding = key.strip().partition(":")
        model, at, version = rest.partition("@")
        rules.append(
            MixRule(
                model=model,
                version=("" if version == "default" else version) if at else None,
                encoding=encoding or None,
                weight=weight,
            )
        )
    return rules


def build_targets(
    signatures: list[ModelSignature], encodings: tuple[str, ...], mix: str
) -> list[tuple[Target, float]]:
    """Every (target, weight) with a positive weight, in a stable order."""
    rules = parse_mix(mix)
    targets = [Target(sig, enc) for sig in signatures for enc in encodings]
    for rule in rules:
        if not any(rule.matches(t) for t in targets):
            known = ", ".join(t.key for t in targets)
            raise MixError(f"--mix: no target matches {rule} (targets: {known})")
    weighted: list[tuple[Target, float]] = []
    for target in targets:
        matching = [r for r in rules if r.matches(target)]
        weight = max(matching, key=lambda r: r.specificity).weight if matching else 1.0
        if weight > 0:
            weighted.append((target, weight))
    if not weighted:
        raise MixError("--mix: every target has weight 0; nothing to send")
    return weighted


class WeightedChooser:
    """Pick targets in proportion to their weights (cumulative weights + bisect)."""

    def __init__(self, weighted: list[tuple[Target, float]], rng: random.Random) -> None:
        self.targets = [t for t, _ in weighted]
        self.cumulative: list[float] = []
        total = 0.0
        for _, w in weighted:
            total += w
            self.cumulative.append(total)
        self.total = total
        self.rng = rng

    def choose(self) -> Target:
        """One target."""
        i = bisect.bisect_right(self.cumulative, self.rng.random() * self.total)
        return self.targets[min(i, len(self.targets) - 1)]

    def shares(self) -> dict[str, float]:
        """Target key -> expected fraction of requests."""
        prev = 0.0
        out = {}
        for t, c in zip(self.targets, self.cumulative, strict=True):
            out[t.key] = (c - prev) / self.total
            prev = c
        return out

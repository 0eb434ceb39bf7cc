"""The cards a service issued, remembered so that feedback can be joined to them by ``uuid``.

Bounded and expiring, in memory: a card is kept ``PHISERVE_CDS_CARD_TTL_S`` (default a day) or
until ``PHISERVE_CDS_CARD_STORE_SIZE`` newer cards pushed it out, whichever comes first. What is
kept is PHI-free: the model version, the decision and the patient's keyed pseudonym, so feedback
lands in the audit trail and the metrics next to the call it is about. Feedback on a card the
store does not hold (never issued here, by another service, expired, or issued before a restart)
is refused with 404.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IssuedCard:
    """What feedback on a card is joined to."""

    model: str
    version: int
    decision: str
    patient: str  # keyed pseudonym ("patient:<32 hex>")
    hook_instance: str


class CardStore:
    """``uuid`` -> :class:`IssuedCard`, oldest first; event-loop only (no lock)."""

    def __init__(
        self, *, capacity: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.clock = clock
        # uuid -> (issued at, by self.clock; the card), oldest first.
        self._cards: OrderedDict[uuid.UUID, tuple[float, IssuedCard]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cards)

    def add(self, card_id: uuid.UUID, card: IssuedCard) -> None:
        """Remember an issued card, forgetting the oldest beyond the capacity."""
        self._expire()
        self._cards[card_id] = (self.clock(), card)
        while len(self._cards) > self.capacity:
            self._cards.popitem(last=False)

    def get(self, card_id: uuid.UUID) -> IssuedCard | None:
        """The card, unless it was never issued or is forgotten."""
        self._expire()
        found = self._cards.get(card_id)
        return None if found is None else found[1]

    def _expire(self) -> None:
        oldest = self.clock() - self.ttl_s
        cards = self._cards
        while cards and next(iter(cards.values()))[0] <= oldest:
            cards.popitem(last=False)

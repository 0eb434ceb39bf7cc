"""The authenticated caller of one request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling and what they may do: the verified ``sub`` and scopes of a token.

    ``break_glass`` is set when the token carries the emergency-access scope; the middleware
    copies it to the request context so the audit record flags every such request.
    """

    subject: str
    scopes: frozenset[str]
    break_glass: bool = False

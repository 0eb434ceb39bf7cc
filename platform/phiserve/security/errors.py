"""Typed refusals of the security layer, one class per cause.

Each class name is a bounded, PHI-free label: the middleware stores it as the request's
``error_type`` (audit record, metrics), and the message names the cause class only. Nothing here
ever carries the token, a header value or a claim value taken from the request.
"""

from __future__ import annotations

from phiserve.errors import Forbidden, Unauthorized

_REALM = 'Bearer realm="phiserve"'


def _challenge(error: str, description: str) -> dict[str, str]:
    # RFC 6750 section 3: the challenge names the error code; the description is our own text.
    return {"WWW-Authenticate": f'{_REALM}, error="{error}", error_description="{description}"'}


class MissingToken(Unauthorized):
    """No usable ``Authorization: Bearer`` header (RFC 6750: a bare challenge, no error code)."""

    def __init__(self, message: str = "bearer token required") -> None:
        super().__init__(message, headers={"WWW-Authenticate": _REALM})


class InvalidToken(Unauthorized):
    """A bearer token was presented but is not acceptable; subclasses name the cause."""

    default_message = "invalid token"

    def __init__(self, message: str | None = None) -> None:
        text = message or self.default_message
        super().__init__(text, headers=_challenge("invalid_token", text))


class MalformedToken(InvalidToken):
    """Not a well-formed compact JWS, or a claim of the wrong type."""

    default_message = "malformed token"


class AlgorithmNotAllowed(InvalidToken):
    """The header's ``alg`` is not in the allowed list (``none`` and HS* never are)."""

    default_message = "algorithm not allowed"


class UnknownKeyId(InvalidToken):
    """No key in the JWKS has the token's ``kid`` (after a rate-limited refresh)."""

    default_message = "unknown key id"


class BadSignature(InvalidToken):
    """The signature does not verify under the key named by ``kid``."""

    default_message = "bad signature"


class TokenExpired(InvalidToken):
    """``exp`` is in the past (beyond the leeway)."""

    default_message = "token expired"


class TokenNotYetValid(InvalidToken):
    """``nbf`` or ``iat`` is in the future (beyond the leeway)."""

    default_message = "token not yet valid"


class WrongIssuer(InvalidToken):
    """``iss`` is not the configured OIDC issuer (or not a trusted CDS client)."""

    default_message = "wrong issuer"


class WrongAudience(InvalidToken):
    """``aud`` does not name this service."""

    default_message = "wrong audience"


class MissingClaim(InvalidToken):
    """A required claim (``exp``, ``sub``, ``iss``, ``aud``) is absent."""

    default_message = "missing required claim"


class TokenReplayed(InvalidToken):
    """A CDS client JWT whose ``jti`` was already used (refused until its ``exp``)."""

    default_message = "token already used (jti replayed)"


class TokenLifetimeTooLong(InvalidToken):
    """A CDS client JWT whose ``exp`` lies further ahead than the configured maximum."""

    default_message = "token lifetime exceeds the allowed maximum"


class InsufficientScope(Forbidden):
    """A valid token without the scope this route needs."""

    def __init__(self, message: str, *, scope: str | None = None) -> None:
        challenge = f'{_REALM}, error="insufficient_scope"'
        if scope is not None:
            challenge += f', scope="{scope}"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})

"""Authentication (OIDC bearer tokens) and authorization (scopes per model).

Composition root::

    verifier = TokenVerifier.from_settings(settings)        # loads the JWKS (file or URL)
    app = ContextMiddleware(... AuthMiddleware(router, {"bearer": BearerAuthenticator(verifier)}) ...)

``ensure_dev_keys(settings)`` creates the dev signing key and JWKS for local use.
"""

from phiserve.security.authorization import BREAK_GLASS_SCOPE, authorize, is_allowed
from phiserve.security.devkeys import ensure_dev_keys, issue_token
from phiserve.security.middleware import Authenticator, AuthMiddleware, BearerAuthenticator
from phiserve.security.principal import Principal
from phiserve.security.tokens import TokenVerifier

__all__ = [
    "BREAK_GLASS_SCOPE",
    "AuthMiddleware",
    "Authenticator",
    "BearerAuthenticator",
    "Principal",
    "TokenVerifier",
    "authorize",
    "ensure_dev_keys",
    "is_allowed",
    "issue_token",
]

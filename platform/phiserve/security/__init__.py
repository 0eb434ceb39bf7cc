"""Authentication (OIDC bearer tokens) and authorization (scopes per model)."""

"""Tamper-evident audit trail: records, HMAC chain, encrypted segments, verifier, middleware."""

"""Tamper-evident audit trail: records, HMAC chain, encrypted segments, verifier, middleware.

The composition root needs only this surface::

    writer = AuditWriter.from_settings(settings, provider, stream="server")
    writer.start()                       # recovers a crashed tail; raises on tampering
    app = ContextMiddleware(AuditMiddleware(AuthMiddleware(app), writer))
    ...
    writer.close()                       # after draining: flush and seal

and ``rewrap(settings.audit_path, provider)`` from ``phiserve keys rotate``.
"""

from phiserve.audit.keys import load_keys, rewrap
from phiserve.audit.middleware import AuditMiddleware
from phiserve.audit.record import AuditEvent, AuditRecord
from phiserve.audit.verify import TrailReport, read_trail, verify_trail
from phiserve.audit.writer import AuditWriter

__all__ = [
    "AuditEvent",
    "AuditMiddleware",
    "AuditRecord",
    "AuditWriter",
    "TrailReport",
    "load_keys",
    "read_trail",
    "rewrap",
    "verify_trail",
]

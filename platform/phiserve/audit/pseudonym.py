"""Keyed pseudonyms: how an audit record names a patient, an encounter or a DICOM instance.

A pseudonym is ``<kind>:<32 hex digits>``, an HMAC-SHA256 of the kind and the identifier under
the trail's pseudonym key (derived from its root key, see :mod:`phiserve.audit.keys`). The same
identifier always maps to the same pseudonym within a trail, so records about one patient can be
found by whoever holds the trail key (``phiserve audit pseudonym``), while the trail itself never
holds an identifier and a low-entropy one (an MRN, a birth date) cannot be guessed from it
without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

_KIND_OK: Final = re.compile(r"^[a-z][a-z_]{0,23}$")
_DIGITS: Final = 32


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """The pseudonym of identifier ``value`` of ``kind`` (e.g. ``patient``) under ``key``."""
    if not _KIND_OK.match(kind):
        raise ValueError("pseudonym kinds are short lowercase words")
    if not key:
        raise ValueError("no pseudonym key")
    digest = hmac.new(key, kind.encode() + b"\x00" + value.encode(), hashlib.sha256).hexdigest()
    return f"{kind}:{digest[:_DIGITS]}"

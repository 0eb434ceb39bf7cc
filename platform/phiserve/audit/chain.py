"""The HMAC hash chain that links every record of an audit stream to the one before it.

``mac[n] = HMAC-SHA256(chain_key, mac[n-1] || canonical(record n))``. The chain runs across
segment boundaries: the first record of a segment chains from the last record of the previous
one, so deleting, editing, reordering or swapping records or whole segments breaks it. The chain
key never leaves the process in clear (it is stored wrapped by the KEK), so a party who can edit
files but cannot call the key provider cannot forge a consistent chain.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from phiserve.audit.record import AuditEvent, AuditRecord, canonical, mac_input


def genesis_mac(chain_key: bytes, trail_id: str, stream: str) -> str:
    """The "previous MAC" of a stream's first record: bound to its trail and stream name."""
    msg = b"phiserve-audit-genesis\0" + trail_id.encode() + b"\0" + stream.encode()
    return hmac.new(chain_key, msg, hashlib.sha256).hexdigest()


def record_mac(chain_key: bytes, prev_mac: str, seq: int, fields: dict[str, Any]) -> str:
    """MAC of one record: HMAC(chain key, previous MAC || canonical record)."""
    return hmac.new(
        chain_key, bytes.fromhex(prev_mac) + mac_input(seq, fields), hashlib.sha256
    ).hexdigest()


def seal_mac(chain_key: bytes, seal: dict[str, Any]) -> str:
    """MAC of a seal frame's fields (everything but ``mac``)."""
    body = {k: v for k, v in seal.items() if k != "mac"}
    return hmac.new(
        chain_key, b"phiserve-audit-seal\0" + canonical(body), hashlib.sha256
    ).hexdigest()


def key_fingerprint(chain_key: bytes) -> str:
    """A short public fingerprint of the chain key, written into every segment header.

    A replaced audit key file yields a different fingerprint, so the verifier can name the cause
    instead of reporting only a broken MAC.
    """
    return hmac.new(chain_key, b"phiserve-audit-fingerprint", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ChainState:
    """Where a stream's chain stands: the last sequence number and MAC made durable."""

    seq: int
    mac: str

    def link(self, chain_key: bytes, event: AuditEvent) -> AuditRecord:
        """The record that follows this state (the state itself is not changed)."""
        seq = self.seq + 1
        signed = event.signed_bytes(seq)
        mac = hmac.new(chain_key, bytes.fromhex(self.mac) + signed, hashlib.sha256).hexdigest()
        return AuditRecord(seq=seq, event=event, prev_mac=self.mac, mac=mac, signed=signed)

    def after(self, record: AuditRecord) -> ChainState:
        """The state once ``record`` is durable."""
        return ChainState(record.seq, record.mac)


def build_seal(
    chain_key: bytes,
    *,
    segment: int,
    count: int,
    state: ChainState,
    time: str,
    recovered: bool = False,
    discarded_bytes: int = 0,
) -> dict[str, Any]:
    """The seal frame that closes a segment: its record count and last link, MAC'd.

    ``recovered`` marks a seal written at start-up for a segment left open by a crash;
    ``discarded_bytes`` says how much of a torn final frame was cut off.
    """
    seal: dict[str, Any] = {"kind": "seal", "segment": segment, "count": count,
                            "last_seq": state.seq, "last_mac": state.mac, "time": time,
                            "recovered": recovered, "discarded_bytes": discarded_bytes}  # fmt: skip
    seal["mac"] = seal_mac(chain_key, seal)
    return seal

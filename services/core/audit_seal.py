"""How the audit chain is signed: HMAC-SHA256 under a key named by id, never a bare hash.

A plain hash chain proves nothing against whoever can write the table: they edit a row and
recompute every hash after it. The MAC's key lives in the settings (AUDIT_KEYS), not in the
database, so rows and chain heads can only be written by holders of the key. Each row and
head stores the id of the key that signed it; the key ring keeps old keys for verifying.

Pure functions (no app, no database), so migrations can sign with them too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


class EntryRow(Protocol):
    """What a new row's `entry_mac` covers (its id is not known yet)."""

    team_id: uuid.UUID | None
    actor_user_id: uuid.UUID | None
    action: str
    subject_type: str | None
    subject_id: str | None
    data: dict[str, Any]
    ip: Any
    user_agent: str | None
    request_id: str | None
    created_at: datetime
    key_id: str


class SignedRow(EntryRow, Protocol):
    """What a chained row's MAC covers: an AuditLog, or a plain result row with the same
    columns."""

    id: int
    prev_hash: str | None


def row_mac(row: SignedRow, key: bytes) -> str:
    """HMAC-SHA256 over the row's content, its id, its key id and its predecessor's MAC.

    The id is covered so rows cannot be renumbered; `prev_hash` links the row to the one
    before it, so removing or reordering rows breaks the next link.
    """
    return _mac(key, "row", {**_content(row), "prev_hash": row.prev_hash})


def entry_mac(row: EntryRow, key: bytes) -> str:
    """HMAC-SHA256 over a new row's content and key id, before it has an id or a place in
    its chain: the sealer links only rows that carry a valid one, so a row written by
    anyone without the key is never vouched for by the chain. It covers the row's time to
    the microsecond and its request id; a unique index refuses a copy of a genuine row."""
    content = _content(row)
    del content["id"]
    return _mac(key, "entry", content)


def _content(row: EntryRow) -> dict[str, Any]:
    return {
        "id": getattr(row, "id", None),
        "team_id": str(row.team_id) if row.team_id else None,
        "actor_user_id": str(row.actor_user_id) if row.actor_user_id else None,
        "action": row.action,
        "subject_type": row.subject_type,
        "subject_id": row.subject_id,
        "data": row.data,
        "ip": _address(row.ip),
        "user_agent": row.user_agent,
        "request_id": row.request_id,
        "created_at": row.created_at.astimezone(UTC).isoformat(),
        "key_id": row.key_id,
    }


def head_seal(chain: str, last_id: int, last_hash: str, row_count: int, key_id: str,
              key: bytes) -> str:  # fmt: skip
    """The MAC that seals a chain's head: where the chain ends and how many rows it holds."""
    content = {"chain": chain, "last_id": last_id, "last_hash": last_hash,
               "row_count": row_count, "key_id": key_id}  # fmt: skip
    return _mac(key, "head", content)


def sign_cursor(payload: Mapping[str, Any], key: bytes) -> str:
    """An opaque, tamper-proof continuation token for a paged verification."""
    token = base64.urlsafe_b64encode(_canonical(payload)).decode().rstrip("=")
    return f"{token}.{_token_mac(key, token)}"


def open_cursor(cursor: str, ring: Mapping[str, bytes]) -> dict[str, Any] | None:
    """The payload of a cursor signed by any key of the ring; None if forged or garbled."""
    token, _, tag = cursor.partition(".")
    if not _HEX64.fullmatch(tag) or not _TOKEN.fullmatch(token):
        return None
    if not any(hmac.compare_digest(_token_mac(key, token), tag) for key in ring.values()):
        return None
    try:  # signed by us, so well-formed; checked anyway
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        return None
    return payload if isinstance(payload, dict) else None


def _token_mac(key: bytes, token: str) -> str:
    return hmac.new(key, b"cursor\x00" + token.encode(), hashlib.sha256).hexdigest()


def _address(ip: Any) -> str | None:
    # The row is signed with the address as given and checked with the one PostgreSQL's
    # INET gives back, spelt differently for some (::ffff:1.2.3.4 comes back as
    # ::ffff:102:304 on Python 3.11): sign one spelling of the address.
    if not ip:
        return None
    try:
        return ipaddress.ip_interface(str(ip)).exploded
    except ValueError:
        return str(ip)


def _mac(key: bytes, purpose: str, content: Mapping[str, Any]) -> str:
    # The purpose is signed too, so a row's MAC can never pass for a head seal.
    message = purpose.encode() + b"\x00" + _canonical(content)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _canonical(content: Mapping[str, Any]) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=str).encode()

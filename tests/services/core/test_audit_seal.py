"""The audit chain's signatures and its key settings, without a database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from config import DEV_AUDIT_KEYS, load_settings, parse_audit_keys
from services.core.audit_seal import head_seal, open_cursor, row_mac, sign_cursor
from tests.support.settings import PRODUCTION_REQUIRED

KEY, OTHER_KEY = b"k" * 32, b"o" * 32
STRONG = {k: v for k, v in PRODUCTION_REQUIRED.items() if k != "audit_keys"}


def row(**changes: Any) -> Any:
    fields = {
        "id": 7, "team_id": uuid.UUID(int=1), "actor_user_id": None, "action": "team.updated",
        "subject_type": "team", "subject_id": "x", "data": {"name": {"from": "A", "to": "B"}},
        "ip": "10.0.0.1", "user_agent": "curl", "request_id": "r1",
        "created_at": datetime(2026, 11, 26, tzinfo=UTC), "key_id": "k1", "prev_hash": "a" * 64,
    }  # fmt: skip
    return SimpleNamespace(**{**fields, **changes})


@pytest.mark.parametrize(
    "change",
    [{"id": 8}, {"data": {"name": {"from": "A", "to": "C"}}}, {"prev_hash": "b" * 64},
     {"key_id": "k2"}, {"actor_user_id": uuid.UUID(int=2)}, {"ip": "10.0.0.2"}],
)  # fmt: skip
def test_a_row_signature_covers_its_content_id_link_and_key_id(change: dict[str, Any]) -> None:
    assert row_mac(row(**change), KEY) != row_mac(row(), KEY)


def test_without_the_key_a_signature_cannot_be_remade() -> None:
    assert row_mac(row(), KEY) != row_mac(row(), OTHER_KEY)
    # A head seal is never a valid row signature, even over the same values.
    assert head_seal("global", 7, "a" * 64, 1, "k1", KEY) != row_mac(row(), KEY)


def test_an_address_signs_the_same_however_postgresql_spells_it() -> None:
    # INET hands back ::ffff:1.2.3.4 as ::ffff:102:304 (Python 3.11 prints it so).
    assert row_mac(row(ip="::ffff:1.2.3.4"), KEY) == row_mac(row(ip="::ffff:102:304"), KEY)


def test_a_cursor_opens_only_unaltered_and_with_a_key_of_the_ring() -> None:
    payload = {"chain": "global", "after": 40, "prev": "c" * 64, "count": 40}
    cursor = sign_cursor(payload, KEY)
    assert open_cursor(cursor, {"new": OTHER_KEY, "old": KEY}) == payload  # after a rotation
    assert open_cursor(cursor, {"new": OTHER_KEY}) is None
    token, _, tag = cursor.partition(".")
    forged = sign_cursor({**payload, "after": 4000}, OTHER_KEY).partition(".")[0]
    for bad in (f"{forged}.{tag}", f"{token}.{'0' * 64}", token, "é.ü", "", "..."):
        assert open_cursor(bad, {"k": KEY}) is None


def test_audit_keys_parse_in_order_and_refuse_malformed_values() -> None:
    ring = parse_audit_keys("new:secret-two, old:secret:with:colons")
    assert list(ring) == ["new", "old"] and ring["old"] == b"secret:with:colons"
    for bad in ("", "nokey", ":secret", "id:", "a:x,a:y", "an id:x", "x" * 17 + ":s"):
        with pytest.raises(ValueError, match="AUDIT_KEYS"):
            parse_audit_keys(bad)


def test_development_and_test_sign_with_the_development_key() -> None:
    for env in ("development", "test"):
        ring = load_settings(app_env=env, audit_keys="").audit_key_ring
        assert ring == parse_audit_keys(DEV_AUDIT_KEYS)


@pytest.mark.parametrize(
    ("audit_keys", "error"),
    [
        ("", "AUDIT_KEYS must be set"),
        (DEV_AUDIT_KEYS, "strong secret"),
        ("k1:" + "a" * 40 + "," + DEV_AUDIT_KEYS, "strong secret"),
        ("k1:too-short", "strong secret"),
        ("k1 " + "a" * 40, "id:secret"),
    ],
)
def test_production_refuses_a_missing_development_or_weak_audit_key(
    audit_keys: str, error: str
) -> None:
    with pytest.raises(ValidationError, match=error):
        load_settings(app_env="production", audit_keys=audit_keys, **STRONG)


def test_production_signs_with_the_first_key_and_keeps_the_others() -> None:
    keys = "k2:" + "b" * 40 + ",k1:" + "a" * 40
    ring = load_settings(app_env="production", audit_keys=keys, **STRONG).audit_key_ring
    assert list(ring) == ["k2", "k1"]

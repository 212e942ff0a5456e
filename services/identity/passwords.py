"""Passwords: argon2id hashing at (or above) OWASP's minimum parameters, and the policy."""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from flask import current_app

from services.core.errors import ValidationFailed

# OWASP: m=19 MiB, t=2, p=1 is the floor; these costs are ~15-25 ms a hash on our machines.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verifying against this keeps unknown-email logins as slow as real ones (no user probing).
_DUMMY_HASH = _hasher.hash("not-a-real-password-used-for-timing")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if the password matches; always spends one hash's time."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    # zxcvbn ships the 30,000 most common passwords from real breaches. Imported lazily:
    # the list is large, and only a password being set needs it.
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def check_password_policy(password: str, *, email: str = "", name: str = "") -> None:
    """Raise 422 for a password that is too short, too common or built from the account."""
    settings = current_app.config["SETTINGS"]
    problems: list[str] = []
    if len(password) < settings.password_min_length:
        problems.append(f"Use at least {settings.password_min_length} characters.")
    lowered = password.lower()
    if lowered in _common_passwords() or lowered.strip("0123456789!") in _common_passwords():
        problems.append("This password is too common; choose another.")
    local_part = email.split("@", 1)[0].lower()
    if (local_part and len(local_part) >= 4 and local_part in lowered) or (
        name and len(name) >= 4 and name.lower() in lowered
    ):
        problems.append("Do not build the password from your email or name.")
    if problems:
        raise ValidationFailed(
            "The password does not meet the policy.", errors={"password": problems}
        )

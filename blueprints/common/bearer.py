"""The access token of a request, its signature verified once per process.

flask-jwt-extended's `verify_jwt_in_request` decodes a token four times (twice unverified
for the key and the header, once verified, once more for the header), and PyJWT checks
every base64 character of each in Python: about a quarter of a cached read's CPU. A
client sends the same token with every request until it expires, so each process keeps
what it verified, keyed by the exact token string (signature included: a token altered
in any byte is a different key and is verified from scratch), until the token's own
`exp`. Nothing that can change before then is cached here: revocation and the account
are checked on every request (blueprints.common.auth), so the cache changes no answer,
only what it costs to give it.

Everything else is the library's: its header parsing and errors, `decode_token` (the
signature, expiry, not-before and required claims, with the app's JWT settings), the
token-type check and the user loader; `g` is left as `verify_jwt_in_request` leaves it, so
`get_jwt()`, `get_jwt_header()` and `current_user` answer as before.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final

import jwt as pyjwt
from flask import g
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import UserLookupError
from flask_jwt_extended.internal_utils import user_lookup, verify_token_type
from flask_jwt_extended.view_decorators import _decode_jwt_from_headers

from models import User

# Far more than the distinct tokens one process sees within an access token's lifetime
# at this size of deployment; when full, expired entries go first, then all.
MAX_TOKENS: Final = 10_000

_Verified = tuple[float, dict[str, Any], dict[str, Any]]  # (exp, header, claims)
_tokens: dict[str, _Verified] = {}
_lock = threading.Lock()


def verify_access_token() -> tuple[dict[str, Any], dict[str, Any], User]:
    """This request's bearer token: (its header, its claims, its user). Raises what
    `verify_jwt_in_request(skip_revocation_check=True)` raises for the same request."""
    encoded, _csrf = _decode_jwt_from_headers()
    header, claims = verified_token(encoded)
    verify_token_type(claims, refresh=False)
    user = user_lookup(header, claims)
    if user is None:
        raise UserLookupError(f"user_lookup returned None for {claims['sub']}", header, claims)
    g._jwt_extended_jwt_user = {"loaded_user": user}
    g._jwt_extended_jwt_header = header
    g._jwt_extended_jwt = claims
    g._jwt_extended_jwt_location = "headers"
    return header, claims, user


def verified_token(encoded: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a token whose signature and expiry verified; copies, so no
    caller can change what the next request is told."""
    entry = _tokens.get(encoded)
    if entry is not None and time.time() < entry[0]:
        return dict(entry[1]), dict(entry[2])
    claims = decode_token(encoded)  # raises for a bad signature, an expired token, ...
    header = pyjwt.get_unverified_header(encoded)  # its signature just verified
    expires = claims.get("exp")
    if isinstance(expires, int | float):
        with _lock:
            if len(_tokens) >= MAX_TOKENS:
                _evict(time.time())
            _tokens[encoded] = (float(expires), header, claims)
    return dict(header), dict(claims)


def _evict(now: float) -> None:
    for token in [t for t, (expires, _, _) in _tokens.items() if expires <= now]:
        del _tokens[token]
    if len(_tokens) >= MAX_TOKENS:
        _tokens.clear()

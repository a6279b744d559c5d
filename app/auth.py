"""Who is asking: user JWTs (HS256), the publish API key, and the browser origin policy.

The user id only ever comes from a verified token's ``sub``; nothing a client sends in a
frame or a query string can name another user.
"""

from __future__ import annotations

import hmac
import time
import warnings
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

import jwt

from app import models

ALGORITHM = "HS256"
COOKIE_NAME = "herald_token"


class AuthError(Exception):
    """Authentication failed; the message is safe to show to the client."""


@dataclass(frozen=True)
class Claims:
    user: str
    expires_at: float


def mint_token(
    secret: str, user: str, ttl: int = 3600, now: float | None = None,
    audience: str | None = None, issuer: str | None = None,
) -> str:
    """Sign a token for ``user`` valid for ``ttl`` seconds (what any backend would do)."""
    if not models.is_user_id(user):
        raise ValueError(f"user id must be {models.USER_ID_RULE}")
    issued = int(now if now is not None else time.time())
    claims: dict[str, object] = {"sub": user, "iat": issued, "exp": issued + ttl}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    with warnings.catch_warnings():
        # PyJWT warns on HMAC keys under 32 bytes; the operator chose the secret.
        warnings.simplefilter("ignore")
        return jwt.encode(claims, secret, ALGORITHM)


def verify_token(
    secret: str, token: str | None, audience: str | None = None, issuer: str | None = None
) -> Claims:
    """Return the token's claims, or raise ``AuthError``: missing, malformed, wrong
    signature, an algorithm other than HS256 (``none`` included), no ``exp``, expired,
    a ``sub`` that is not a valid user id, or — when configured — the wrong ``aud`` or
    ``iss``."""
    if not token:
        raise AuthError("missing token")
    required = ["exp", "sub"] + (["aud"] if audience else []) + (["iss"] if issuer else [])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            claims = jwt.decode(
                token, secret, algorithms=[ALGORITHM], audience=audience, issuer=issuer,
                options={"require": required, "verify_aud": audience is not None},
            )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidTokenError as err:
        raise AuthError(f"invalid token: {err}") from None
    user = claims.get("sub")
    if not models.is_user_id(user):
        raise AuthError(f"invalid token: sub must be a user id, {models.USER_ID_RULE}")
    return Claims(user=user, expires_at=float(claims["exp"]))


@dataclass(frozen=True)
class Tokens:
    """The token policy of one deployment: secret plus optional audience and issuer."""

    secret: str
    audience: str | None = None
    issuer: str | None = None

    def mint(self, user: str, ttl: int = 3600) -> str:
        return mint_token(self.secret, user, ttl, audience=self.audience, issuer=self.issuer)

    def verify(self, token: str | None) -> Claims:
        return verify_token(self.secret, token, self.audience, self.issuer)


def bearer(header: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <x>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def api_key_ok(expected: str | None, presented: str | None) -> bool:
    """Constant-time API key comparison; no configured key means nobody may publish."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def origin_allowed(origin: str | None, host: str, allowed: Sequence[str]) -> bool:
    """May a browser page from ``origin`` open a WebSocket or POST with cookies here?

    No Origin header means a non-browser client (which cannot ride on a victim's
    cookie), so it is allowed. Otherwise the origin must be this very host, or listed
    exactly (scheme, host and port) in ``HERALD_ALLOWED_ORIGINS``; ``*`` allows any.
    """
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()

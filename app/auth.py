"""Who is asking: user JWTs, the publish API key, and the browser origin policy.

User tokens are HS256 with Herald's secret (what ``herald token`` and the dev login
mint), and, when a deployment names its identity provider's keys (a PEM file or a JWKS
URL, app/keyset.py), RS256, ES256 or EdDSA signed by that provider. The user id only
ever comes from a verified token (``sub``, or the provider tokens' configured claim);
nothing a client sends in a frame or a query string can name another user.
"""

from __future__ import annotations

import hmac
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import urlsplit

import jwt

from app import keyset, models

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


# Tokens Herald accepts expire within this many seconds unless configured otherwise.
MAX_LIFETIME = 7 * 86400
# How far ahead of Herald's clock a token's iat and nbf may be: an identity provider's
# clock slightly ahead must not refuse its fresh tokens. (exp gets no such allowance.)
CLOCK_SKEW = 60


def _numeric_date(value: object) -> bool:
    """A JWT NumericDate (RFC 7519): a JSON number of seconds, not a string, not a bool,
    finite and within the years datetime knows."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0 <= value < 253402300800)


def verify_token(
    secret: str, token: str | None, audience: str | None = None, issuer: str | None = None,
    max_lifetime: float = MAX_LIFETIME, now: float | None = None,
) -> Claims:
    """Return the token's claims, or raise ``AuthError``: missing, malformed, wrong
    signature, an algorithm other than HS256 (``none`` included), no ``exp``, an ``exp``
    (or ``iat``, ``nbf``) that is not a plain number, expired, expiring more than
    ``max_lifetime`` seconds from now, a ``sub`` that is not a valid user id, or — when
    configured — the wrong ``aud`` or ``iss``."""
    if not token:
        raise AuthError("missing token")
    return _verified(token, secret, ALGORITHM, audience, issuer, max_lifetime, now, "sub")


def _verified(token: str, key: Any, algorithm: str, audience: str | None,
              issuer: str | None, max_lifetime: float, now: float | None,
              user_claim: str) -> Claims:
    """The claims of ``token`` signed with ``key`` by ``algorithm`` (and no other), its
    user from ``user_claim``; raises ``AuthError`` as ``verify_token`` says."""
    required = (["exp", user_claim] + (["aud"] if audience else [])
                + (["iss"] if issuer else []))
    try:
        with warnings.catch_warnings():
            # PyJWT warns on HMAC keys under 32 bytes; the operator chose the secret.
            warnings.simplefilter("ignore")
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=audience, issuer=issuer,
                options={"require": required, "verify_aud": audience is not None,
                         "verify_iat": False, "verify_nbf": False},
            )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidTokenError as err:
        raise AuthError(f"invalid token: {err}") from None
    for name in ("exp", "iat", "nbf"):
        if name in claims and not _numeric_date(claims[name]):
            raise AuthError(f"invalid token: {name} must be a number of seconds")
    clock = time.time() if now is None else now
    for name in ("iat", "nbf"):
        if name in claims and float(claims[name]) > clock + CLOCK_SKEW:
            raise AuthError(f"invalid token: not valid yet ({name} is in the future)")
    if float(claims["exp"]) - clock > max_lifetime:
        raise AuthError(f"invalid token: exp is more than {max_lifetime:g} s away "
                        "(HERALD_MAX_TOKEN_LIFETIME)")
    user = claims.get(user_claim)
    if not models.is_user_id(user):
        raise AuthError(f"invalid token: {user_claim} must be a user id, "
                        f"{models.USER_ID_RULE}")
    return Claims(user=user, expires_at=float(claims["exp"]))


@dataclass(frozen=True)
class Tokens:
    """The token policy of one deployment: the secret, optional audience and issuer, and
    optionally the identity provider's keys and the claim of its tokens that names the
    user (``sub`` unless configured; Herald's own HS256 tokens always use ``sub``)."""

    secret: str
    audience: str | None = None
    issuer: str | None = None
    max_lifetime: float = MAX_LIFETIME
    keys: keyset.KeySet | None = None
    user_claim: str = "sub"

    def mint(self, user: str, ttl: int = 3600) -> str:
        if ttl > self.max_lifetime:
            raise ValueError(f"ttl must be at most {self.max_lifetime:g} s "
                             "(HERALD_MAX_TOKEN_LIFETIME)")
        return mint_token(self.secret, user, ttl, audience=self.audience, issuer=self.issuer)

    def verify(self, token: str | None) -> Claims:
        """An HS256 token's claims (see ``verify_token``)."""
        return verify_token(self.secret, token, self.audience, self.issuer, self.max_lifetime)

    async def check(self, token: str | None) -> Claims:
        """Any token this deployment accepts: HS256 with the secret, and with a key set
        configured RS256, ES256 or EdDSA signed by one of its keys (found by the header's
        ``kid``; each key verifies the one algorithm of its type). Raises ``AuthError``
        for everything ``verify_token`` refuses, an unknown key and a mismatched ``alg``."""
        if not token:
            raise AuthError("missing token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as err:
            raise AuthError(f"invalid token: {err}") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str):
            raise AuthError("invalid token: alg must be a string")
        if self.keys is None or algorithm not in keyset.ALGORITHMS:
            return self.verify(token)  # HS256, or refused for its algorithm there
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("invalid token: kid must be a string")
        key = await self.keys.key_for(kid)
        if key is None:
            raise AuthError("invalid token: signed with a key the identity provider "
                            "does not publish" if kid is not None else
                            "invalid token: no kid, and the key set holds several keys")
        if key.algorithm != algorithm:
            raise AuthError(f"invalid token: its key verifies {key.algorithm}, "
                            f"not {algorithm}")
        return _verified(token, key.key, key.algorithm, self.audience, self.issuer,
                         self.max_lifetime, None, self.user_claim)


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


def origin_listed(origin: str, allowed: Sequence[str]) -> bool:
    """Is ``origin`` one of ``HERALD_ALLOWED_ORIGINS`` (exactly, or ``*``)? The CORS rule:
    a page of this very host needs no CORS."""
    return "*" in allowed or origin.rstrip("/") in allowed


def origin_named(origin: str, allowed: Sequence[str]) -> bool:
    """Is ``origin`` listed by name (``*`` does not count, nor ``null``)? Only those may
    read the API with the user's cookie (CORS with credentials)."""
    return origin != "null" and origin.rstrip("/") in allowed


def origin_allowed(origin: str | None, host: str, allowed: Sequence[str],
                   scheme: str = "http") -> bool:
    """May a browser page from ``origin`` open a WebSocket or POST with cookies here?

    No Origin header means a non-browser client (which cannot ride on a victim's
    cookie), so it is allowed. Otherwise the origin must be this very host reached with
    this very ``scheme`` (the request's, ``ws`` counting as ``http``: behind a trusted
    proxy, the client's), or listed exactly (scheme, host and port) in
    ``HERALD_ALLOWED_ORIGINS``; ``*`` allows any.
    """
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin_listed(origin, allowed):
        return True
    parts = urlsplit(origin)
    own = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return parts.scheme == own and parts.netloc.lower() == host.lower()

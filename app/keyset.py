"""The identity provider's public keys, for user tokens signed RS256, ES256 or EdDSA:
one PEM file (``HERALD_JWT_PUBLIC_KEY``) or a JWKS URL (``HERALD_JWKS_URL``, OpenID
Connect's ``jwks_uri``).

A JWKS is fetched when first needed; after ``ttl`` seconds it is fetched again in the
background while the keys held go on verifying. A token naming a ``kid`` the set does
not hold makes it fetched again at once (the provider rotated its key), but at most once
per ``min_interval`` seconds whatever the tokens say, so made-up kids cannot make every
node hammer the provider. Concurrent lookups share one fetch. A fetch that fails, or
returns nothing usable (or more than ``MAX_JWKS_BYTES``), keeps the keys already held (a
provider's outage must not sign everybody out); until a first fetch succeeds, every
token with an asymmetric algorithm is refused.

Each key is bound to one algorithm by its type: RSA to RS256, EC P-256 to ES256,
Ed25519 to EdDSA. A token's ``alg`` must be its key's, which rules out the algorithm
confusion attacks (an RSA public key used as an HMAC secret, ``none``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

log = logging.getLogger(__name__)

# The asymmetric algorithms Herald verifies, by JWK key type (RFC 7518, RFC 8037).
ALGORITHM_OF_KTY = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}
ALGORITHMS = frozenset(ALGORITHM_OF_KTY.values())
# A JWKS document larger than this is refused (a provider's holds a few keys, ~2 KB each).
MAX_JWKS_BYTES = 256 * 1024


class UnusableKey(Exception):
    """A key or key set that cannot be used; the message says why."""


@dataclass(frozen=True)
class PublicKey:
    """One verification key: its ``kid`` (None for a PEM file), the one algorithm it
    verifies, and the key object PyJWT takes."""

    kid: str | None
    algorithm: str
    key: Any


class KeySet(Protocol):
    """Where app.auth finds the key for a token's ``kid``."""

    async def key_for(self, kid: str | None) -> PublicKey | None:
        """The key named ``kid`` (any key for a token without one when the set holds a
        single key), or None."""


def algorithm_of(key: Any) -> str:
    """The algorithm ``key`` verifies; raises ``UnusableKey`` for other key types."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise UnusableKey(f"RSA keys must have at least 2048 bits, not {key.key_size}")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise UnusableKey(f"EC keys must be on P-256 (ES256), not {key.curve.name}")
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise UnusableKey(f"unsupported public key type {type(key).__name__}; "
                    "use RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA)")


def key_from_pem(data: bytes) -> PublicKey:
    """The public key of a PEM file (``-----BEGIN PUBLIC KEY-----``)."""
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise UnusableKey(f"not a PEM public key: {err}") from None
    return PublicKey(None, algorithm_of(key), key)


def keys_from_jwks(document: Any) -> dict[str | None, PublicKey]:
    """The usable signing keys of a JWKS document, by ``kid``. Keys meant for
    encryption (``use`` other than ``sig``), of other types or curves, or whose ``alg``
    disagrees with their type are left out; a document without a ``keys`` list raises."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise UnusableKey("a JWKS is a JSON object with a \"keys\" list")
    keys: dict[str | None, PublicKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, Mapping) or jwk.get("use", "sig") != "sig":
            continue
        kty = jwk.get("kty")
        algorithm = ALGORITHM_OF_KTY.get(kty) if isinstance(kty, str) else None
        if algorithm is None or jwk.get("alg", algorithm) != algorithm:
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str) or kid in keys:
            continue  # a kid must name one key: the first one keeps it
        try:
            key = jwt.PyJWK(dict(jwk), algorithm).key
            if algorithm_of(key) != algorithm:
                continue
        except (jwt.PyJWKError, jwt.InvalidKeyError, UnusableKey, ValueError, TypeError):
            log.warning("jwks: key %r left out: not a usable %s key", kid, algorithm)
            continue
        keys[kid] = PublicKey(kid, algorithm, key)
    return keys


class StaticKey:
    """One key from a PEM file: every token is checked against it."""

    def __init__(self, key: PublicKey) -> None:
        self._key = key

    async def key_for(self, kid: str | None) -> PublicKey | None:
        return self._key


Fetch = Callable[[str], Awaitable[bytes]]


async def http_fetch(url: str) -> bytes:
    """GET ``url`` (5 s timeout; a body over ``MAX_JWKS_BYTES`` is refused as it
    arrives, not after); raises on failure."""
    import tornado.httpclient

    # A client of its own: the shared one buffers bodies of up to 100 MB.
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True,
                                                max_body_size=MAX_JWKS_BYTES)
    try:
        response = await client.fetch(url, request_timeout=5, connect_timeout=5,
                                      follow_redirects=False,
                                      headers={"Accept": "application/json"})
    finally:
        client.close()
    return response.body


class JwksKeys:
    """The keys of a JWKS URL, cached (see the module docstring for when it is fetched)."""

    def __init__(self, url: str, fetch: Fetch = http_fetch, ttl: float = 600.0,
                 min_interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self._fetch = fetch
        self._ttl = ttl
        self._min_interval = min_interval
        self._clock = clock
        self._keys: dict[str | None, PublicKey] = {}
        self._fetched_at: float | None = None  # the last successful fetch
        self._tried_at: float | None = None  # the last attempt, successful or not
        self._inflight: asyncio.Future[None] | None = None
        self._background: asyncio.Future[None] | None = None  # kept from being collected

    async def key_for(self, kid: str | None) -> PublicKey | None:
        now = self._clock()
        if self._fetched_at is None:
            await self._refresh(now)  # nothing held yet: wait for the first set
        elif now - self._fetched_at >= self._ttl and self._inflight is None:
            # Stale: fetch again in the background and go on with the keys held, so a
            # slow or hanging provider does not hold up tokens it signed with them.
            self._background = asyncio.ensure_future(self._refresh(now))
        key = self._lookup(kid)
        if key is None:
            await self._refresh(self._clock())  # maybe rotated: look again (rate-bounded)
            key = self._lookup(kid)
        return key

    def _lookup(self, kid: str | None) -> PublicKey | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def _refresh(self, now: float) -> None:
        """Fetch the set again unless one fetch is under way (then wait for it) or the
        last attempt was less than ``min_interval`` seconds ago."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        if self._tried_at is not None and now - self._tried_at < self._min_interval:
            return
        self._tried_at = now
        self._inflight = asyncio.get_running_loop().create_future()
        try:
            keys = keys_from_jwks(json.loads(await self._fetch(self.url)))
            if not keys:
                raise UnusableKey("no usable signing key in it")
            self._keys, self._fetched_at = keys, self._clock()
        except Exception as err:  # any failure keeps the keys held: logged, not raised
            log.warning("jwks: fetching %s failed (%s); keeping %d key(s)", self.url,
                        err, len(self._keys))
        finally:
            self._inflight.set_result(None)
            self._inflight = None

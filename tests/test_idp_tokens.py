"""Tokens from the user's identity provider (app/keyset.py, ``auth.Tokens.check``):
RS256, ES256 and EdDSA with a PEM key or a JWKS URL served by a real local HTTP server
that rotates its keys, on a real node over WebSocket and HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from app import auth, keyset
from app.config import ConfigError, load_config
from tests.conftest import SECRET, insert
from tests.helpers import call

FUTURE = int(time.time()) + 3600


class SigningKey:
    """One of the provider's private keys, with its kid and algorithm."""

    def __init__(self, kid: str, algorithm: str) -> None:
        self.kid, self.algorithm = kid, algorithm
        self.private: Any = {
            "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
            "EdDSA": ed25519.Ed25519PrivateKey.generate,
        }[algorithm]()

    def jwk(self) -> dict[str, Any]:
        exporter = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}
        jwk = exporter[self.algorithm].to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, claims: dict[str, Any], kid: str | None = "same",
             algorithm: str | None = None) -> str:
        headers = {} if kid is None else {"kid": self.kid if kid == "same" else kid}
        return jwt.encode(claims, self.private, algorithm=algorithm or self.algorithm,
                          headers=headers)


class Provider:
    """A JWKS endpoint on a real local HTTP server; ``keys`` is what it publishes now."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self.requests = 0
        self.down = False
        self.padding = 0  # bytes of filler in the document
        provider = self

        class Jwks(tornado.web.RequestHandler):
            def get(self) -> None:
                provider.requests += 1
                if provider.down:
                    self.set_status(503)
                    return
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps({"keys": [k.jwk() for k in provider.keys],
                                        "filler": "x" * provider.padding}))

        (sock,) = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/certs"
        self.server = tornado.httpserver.HTTPServer(tornado.web.Application([("/certs", Jwks)]))
        self.server.add_sockets([sock])

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def signers() -> dict[str, SigningKey]:
    return {alg: SigningKey(f"{alg.lower()}-1", alg) for alg in ("RS256", "ES256", "EdDSA")}


def tokens_on(provider: Provider, **settings: float) -> tuple[auth.Tokens, list[float]]:
    """Tokens checked against ``provider``'s JWKS, on a clock the test moves (``now[0]``)."""
    now = [1000.0]
    keys = keyset.JwksKeys(provider.url, clock=lambda: now[0], **settings)
    return auth.Tokens(SECRET, keys=keys), now


def _claims(user: str, **more: Any) -> dict[str, Any]:
    return {"sub": user, "exp": FUTURE, **more}


def _hs256_with(secret: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token keyed with ``secret`` (PyJWT refuses to sign with a PEM key)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


# --- the key set, no database ---------------------------------------------------------

@pytest.mark.unit
def test_a_jwks_keeps_only_usable_signing_keys(signers: dict[str, SigningKey]) -> None:
    p384 = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(),
                              as_dict=True)
    short_rsa = RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
        as_dict=True)
    rsa_jwk = signers["RS256"].jwk()
    document = {"keys": [
        *(s.jwk() for s in signers.values()),
        {**rsa_jwk, "kid": "for-encryption", "use": "enc"},
        {**rsa_jwk, "kid": "says-es256", "alg": "ES256"},
        {**p384, "kid": "p-384"},
        {**short_rsa, "kid": "rsa-1024"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        {**SigningKey("rs256-1", "RS256").jwk()},  # the same kid again: the first keeps it
        {"kty": ["RSA"], "kid": "unhashable"},
        "not a key",
    ]}
    keys = keyset.keys_from_jwks(document)
    assert {kid: k.algorithm for kid, k in keys.items()} == {
        "rs256-1": "RS256", "es256-1": "ES256", "eddsa-1": "EdDSA"}
    assert keys["rs256-1"].key.public_numbers() == \
        signers["RS256"].private.public_key().public_numbers()
    with pytest.raises(keyset.UnusableKey):
        keyset.keys_from_jwks({"no": "keys"})


@pytest.mark.unit
@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
async def test_a_pem_key_verifies_its_algorithm_only(signers: dict[str, SigningKey],
                                                     algorithm: str) -> None:
    signer = signers[algorithm]
    tokens = auth.Tokens(SECRET, keys=keyset.StaticKey(keyset.key_from_pem(signer.pem())))
    claims = await tokens.check(signer.sign(_claims("ada")))
    assert claims.user == "ada" and claims.expires_at == FUTURE
    assert (await tokens.check(auth.mint_token(SECRET, "bob"))).user == "bob"  # HS256 too
    other = SigningKey("other", algorithm)  # same type, another key
    refused = [
        other.sign(_claims("ada")),
        signer.sign({"sub": "ada", "exp": int(time.time()) - 5}),  # expired
        signer.sign({"sub": "ada"}),  # no exp
        signer.sign({"exp": FUTURE}),  # no sub
        signer.sign(_claims("ada", exp=FUTURE + 30 * 86400)),  # beyond the max lifetime
        signer.sign(_claims("ada", nbf=int(time.time()) + 300)),  # not valid yet
        signer.sign(_claims("ada", iat=int(time.time()) + 300)),  # issued in the future
        _hs256_with(signer.pem(), _claims("ada")),  # algorithm confusion
    ]
    if algorithm == "RS256":  # the same RSA key under another RSA algorithm
        refused.append(signer.sign(_claims("ada"), algorithm="RS512"))
    for token in refused:
        with pytest.raises(auth.AuthError):
            await tokens.check(token)
    # A provider's clock a little ahead of Herald's: its fresh tokens still pass.
    ahead = _claims("ada", iat=int(time.time()) + 20, nbf=int(time.time()) + 20)
    assert (await tokens.check(signer.sign(ahead))).user == "ada"


@pytest.mark.unit
async def test_a_header_of_the_wrong_shape_is_refused_not_a_crash(
        signers: dict[str, SigningKey]) -> None:
    tokens = auth.Tokens(SECRET, keys=keyset.StaticKey(
        keyset.key_from_pem(signers["ES256"].pem())))
    token = signers["ES256"].sign(_claims("ada"))
    head, body, signature = token.split(".")
    for header in ({"alg": ["ES256"], "kid": "es256-1"}, {"alg": {"x": 1}},
                   {"alg": "ES256", "kid": ["es256-1"]}):
        forged = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
        with pytest.raises(auth.AuthError):
            await tokens.check(f"{forged}.{body}.{signature}")


@pytest.mark.unit
async def test_the_user_claim_audience_and_issuer_are_configurable(
        signers: dict[str, SigningKey]) -> None:
    signer = signers["ES256"]
    tokens = auth.Tokens(SECRET, audience="herald", issuer="https://idp.example",
                         keys=keyset.StaticKey(keyset.key_from_pem(signer.pem())),
                         user_claim="preferred_username")
    good = _claims("idp|123", aud="herald", iss="https://idp.example",
                   preferred_username="ada")
    assert (await tokens.check(signer.sign(good))).user == "ada"
    for bad in ({**good, "aud": "another-app"}, {**good, "iss": "https://evil.example"},
                {k: v for k, v in good.items() if k != "preferred_username"},
                {**good, "preferred_username": ["ada"]}):
        with pytest.raises(auth.AuthError):
            await tokens.check(signer.sign(bad))


@pytest.mark.unit
async def test_without_provider_keys_asymmetric_tokens_are_refused(
        signers: dict[str, SigningKey]) -> None:
    tokens = auth.Tokens(SECRET)
    with pytest.raises(auth.AuthError, match="alg"):
        await tokens.check(signers["RS256"].sign(_claims("ada")))


@pytest.mark.unit
async def test_jwks_refetches_on_an_unknown_kid_at_a_bounded_rate() -> None:
    first, second = SigningKey("k1", "RS256"), SigningKey("k2", "EdDSA")
    provider = Provider([first])
    tokens, now = tokens_on(provider, ttl=600, min_interval=30)
    try:
        assert (await tokens.check(first.sign(_claims("ada")))).user == "ada"
        assert provider.requests == 1
        await tokens.check(first.sign(_claims("bob")))
        assert provider.requests == 1  # cached

        # Made-up kids: none within min_interval of the last fetch; past it, one refetch,
        # then none again.
        with pytest.raises(auth.AuthError, match="does not publish"):
            await tokens.check(first.sign(_claims("eve"), kid="made-up-0"))
        assert provider.requests == 1
        now[0] += 31
        for kid in ("made-up-1", "made-up-2", "made-up-3"):
            with pytest.raises(auth.AuthError, match="does not publish"):
                await tokens.check(first.sign(_claims("eve"), kid=kid))
        assert provider.requests == 2

        provider.keys = [second]  # the provider rotates its key
        now[0] += 31
        # Many sessions at once with the new key: one fetch between them.
        results = await asyncio.gather(*(tokens.check(second.sign(_claims(f"u{i}")))
                                         for i in range(20)))
        assert [c.user for c in results] == [f"u{i}" for i in range(20)]
        assert provider.requests == 3
        with pytest.raises(auth.AuthError):  # the retired key is gone from the set
            await tokens.check(first.sign(_claims("ada")))

        provider.down = True  # an outage after the cache expired keeps the keys held
        now[0] += 601
        assert (await tokens.check(second.sign(_claims("ada")))).user == "ada"
        await asyncio.sleep(0.2)  # the refresh runs behind it
        assert provider.requests == 4
        # A token without a kid: the single key of the set.
        assert (await tokens.check(second.sign(_claims("ada"), kid=None))).user == "ada"
    finally:
        provider.stop()


@pytest.mark.unit
async def test_an_oversized_jwks_is_refused_and_the_keys_held_stay() -> None:
    signer = SigningKey("k1", "EdDSA")
    provider = Provider([signer])
    tokens, now = tokens_on(provider, ttl=10, min_interval=1)
    try:
        assert (await tokens.check(signer.sign(_claims("ada")))).user == "ada"
        provider.padding = keyset.MAX_JWKS_BYTES
        provider.keys = [SigningKey("k2", "EdDSA")]
        now[0] += 2
        with pytest.raises(auth.AuthError):  # k2 is only in the oversized document
            await tokens.check(provider.keys[0].sign(_claims("ada")))
        assert provider.requests == 2
        assert (await tokens.check(signer.sign(_claims("ada")))).user == "ada"  # k1 held
    finally:
        provider.stop()


@pytest.mark.unit
async def test_until_a_first_fetch_succeeds_provider_tokens_are_refused() -> None:
    signer = SigningKey("k1", "ES256")
    provider = Provider([signer])
    provider.down = True
    tokens, now = tokens_on(provider, min_interval=5)
    try:
        with pytest.raises(auth.AuthError):
            await tokens.check(signer.sign(_claims("ada")))
        provider.down = False
        with pytest.raises(auth.AuthError):  # within min_interval: not asked again
            await tokens.check(signer.sign(_claims("ada")))
        now[0] += 6
        assert (await tokens.check(signer.sign(_claims("ada")))).user == "ada"
    finally:
        provider.stop()


@pytest.mark.unit
def test_bad_key_settings_are_refused_up_front(tmp_path: Path,
                                               signers: dict[str, SigningKey]) -> None:
    env = {"HERALD_SECRET": SECRET, "HERALD_DATABASE_URL": "postgresql://x@127.0.0.1/db",
           "HERALD_JWT_ISSUER": "https://idp.example", "HERALD_JWT_AUDIENCE": "herald"}
    good = tmp_path / "idp.pem"
    good.write_bytes(signers["EdDSA"].pem())
    assert load_config({**env, "HERALD_JWT_PUBLIC_KEY": str(good)}).jwt_public_key
    assert load_config({**env, "HERALD_JWKS_URL": "http://127.0.0.1:9/certs"}).jwks_url
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    private = tmp_path / "hs.pem"
    private.write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    for extra, message in [
        ({"HERALD_JWT_PUBLIC_KEY": str(tmp_path / "missing.pem")}, "cannot read"),
        ({"HERALD_JWT_PUBLIC_KEY": str(garbage)}, "PEM"),
        ({"HERALD_JWT_PUBLIC_KEY": str(private)}, "PEM"),
        ({"HERALD_JWKS_URL": "ftp://idp.example/keys"}, "HERALD_JWKS_URL"),
        ({"HERALD_JWKS_URL": "http://idp.example/keys"}, "https"),  # in the clear
        ({"HERALD_JWKS_URL": "https://idp.example/k", "HERALD_JWT_AUDIENCE": ""},
         "HERALD_JWT_AUDIENCE"),
        ({"HERALD_JWT_PUBLIC_KEY": str(good), "HERALD_JWT_ISSUER": ""}, "HERALD_JWT_ISSUER"),
        ({"HERALD_JWT_PUBLIC_KEY": str(good), "HERALD_JWKS_URL": "https://idp.example/k"},
         "exclusive"),
        ({"HERALD_JWT_USER_CLAIM": " "}, "HERALD_JWT_USER_CLAIM"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config({**env, **extra})


# --- a real node ----------------------------------------------------------------------

async def test_a_node_takes_provider_tokens_and_follows_a_key_rotation(
        make_node, clients, sql, user, signers: dict[str, SigningKey]) -> None:
    """A session opened with the provider's first key keeps receiving after the provider
    rotates; new sessions need the new key; bad provider tokens close with 4401 and get
    401 over HTTP, like bad HS256 ones."""
    rsa_old, es, ed = signers["RS256"], signers["ES256"], signers["EdDSA"]
    provider = Provider([rsa_old, es, ed])
    try:
        node = await make_node(jwks_url=provider.url, jwks_min_refresh_seconds=0.2)
        live = await clients(node.port)
        await live.hello(rsa_old.sign(_claims(user)))
        await insert(sql, user, "before rotation")
        (frame,) = await live.notifications(1)
        assert frame["title"] == "before rotation"

        code, body = await call(node.port, "GET", "/api/notifications",
                                token=ed.sign(_claims(user)))
        assert code == 200 and body["notifications"][0]["title"] == "before rotation"

        rsa_new = SigningKey("rs256-2", "RS256")
        provider.keys = [rsa_new, es, ed]
        await asyncio.sleep(0.3)  # past the minimum refresh interval
        fresh = await clients(node.port)
        await fresh.hello(rsa_new.sign(_claims(user)), last_seq=frame["seq"])  # new kid: refetched
        await insert(sql, user, "after rotation")
        assert [f["title"] for f in await live.notifications(1)] == ["after rotation"]
        assert [f["title"] for f in await fresh.notifications(1)] == ["after rotation"]

        bad = {
            "retired key": rsa_old.sign(_claims(user)),
            "kid of another key": SigningKey("x", "ES256").sign(_claims(user), kid=es.kid),
            "alg of another type": es.sign(_claims(user), kid=ed.kid),
            "expired": ed.sign({"sub": user, "exp": int(time.time()) - 5}),
            "no kid, several keys": ed.sign(_claims(user), kid=None),
            "HS256 keyed with the public key": _hs256_with(es.pem(), _claims(user)),
        }
        for kind, token in bad.items():
            client = await clients(node.port)
            await client.send({"type": "hello", "token": token})
            code, frames = await client.closed()
            assert code == 4401, kind
            assert frames[0]["code"] == "unauthorized", kind
            status, _ = await call(node.port, "GET", "/api/notifications", token=token)
            assert status == 401, kind
        # The first fetch, the rotation's, at most one each for the retired kid and the
        # token without one (0.2 s apart at least).
        assert 2 <= provider.requests <= 4
        await live.sync()  # the first session is still live after all of that
    finally:
        provider.stop()

"""An OAuth/OpenID identity provider's public face, for the gateway's JWT access tokens.

Serves a discovery document (``/.well-known/openid-configuration``, or only RFC 8414's
``/.well-known/oauth-authorization-server`` with ``discovery="oauth"``) naming ``/jwks``,
and the JWKS itself. The test holds the private keys and mints tokens::

    with run_oauth_issuer() as issuer:
        kid = issuer.add_key("RSA")                  # or "EC" (P-256), "EC384", "Ed25519"
        token = issuer.token(kid, sub="alice", scope="lattice:compute:inference")
        issuer.retire(kid)                           # no longer published
        issuer.jwks_fetches()                        # GET /jwks so far

Behaviour keys: ``issuer`` (the ``iss`` it announces; default: its URL), ``discovery``
("oidc" or "oauth"), ``jwks`` (the published public keys, managed by ``add_key``).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.servers import _core
from tests.servers._core import Request, Response, ServerState

DEFAULTS: dict[str, Any] = {"issuer": None, "discovery": "oidc", "jwks": []}
AUDIENCE = "https://lattice.test/api"


async def handle(request: Request, response: Response, state: ServerState) -> None:
    b = state.behaviour
    if (request.path == "/.well-known/openid-configuration" and b["discovery"] == "oidc") \
            or (request.path == "/.well-known/oauth-authorization-server" \
            and b["discovery"] == "oauth"):
        host = request.headers.get("host", "")
        return response.send_json(200, {"issuer": b["issuer"],
                                        "jwks_uri": f"http://{host}/jwks",
                                        "response_types_supported": ["code"]})
    if request.path == "/jwks":
        return response.send_json(200, {"keys": b["jwks"]})
    return response.send_json(404, {"error": "not found"})


_ALGORITHMS = {"RSA": "RS256", "EC": "ES256", "EC384": "ES384", "Ed25519": "EdDSA"}


class Issuer:
    """The running issuer, its private keys, and a token minter."""

    def __init__(self, handle: _core.ServerHandle) -> None:
        self.handle = handle
        self.url = handle.url
        self.private: dict[str, Any] = {}
        self.algorithms: dict[str, str] = {}
        self.published: list[dict[str, Any]] = []
        handle.configure(issuer=self.url)

    def add_key(self, kind: str = "RSA", kid: str | None = None) -> str:
        kid = kid or f"{kind.lower()}-{secrets.token_hex(4)}"
        if kind == "RSA":
            key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        elif kind in ("EC", "EC384"):
            key = ec.generate_private_key(ec.SECP256R1() if kind == "EC" else ec.SECP384R1())
            public = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        else:
            key = ed25519.Ed25519PrivateKey.generate()
            public = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
        self.private[kid] = key
        self.algorithms[kid] = _ALGORITHMS[kind]
        public.update(kid=kid, use="sig")
        self.published.append(public)
        self.handle.configure(jwks=self.published)
        return kid

    def public_jwk(self, kid: str) -> dict[str, Any]:
        return next(k for k in self.published if k["kid"] == kid)

    def retire(self, kid: str) -> None:
        self.published = [k for k in self.published if k["kid"] != kid]
        self.handle.configure(jwks=self.published)

    def jwks_fetches(self) -> int:
        return sum(1 for r in self.handle.stats()["requests"] if r["path"] == "/jwks")

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url, "aud": AUDIENCE, "sub": "alice", "client_id": "notes-web",
            "scope": "lattice:compute:inference lattice:compute:personal_runtime:manage",
            "iat": now, "exp": now + 300, "jti": secrets.token_hex(8)}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str, *, typ: str | None = "at+jwt", alg: str | None = None,
              key: Any = None, **claims: Any) -> str:
        """A token signed with ``kid``'s private key (or ``key``); claim None: left out."""
        headers: dict[str, Any] = {"kid": kid}
        if typ is not None:
            headers["typ"] = typ
        return jwt.encode(self.claims(**claims), key or self.private[kid],
                          algorithm=alg or self.algorithms[kid], headers=headers)


@contextlib.contextmanager
def run_oauth_issuer(**behaviour: Any) -> Iterator[Issuer]:
    """The issuer on a free 127.0.0.1 port in a background thread."""
    with _core.run_in_thread(handle, DEFAULTS, behaviour) as server:
        yield Issuer(server)

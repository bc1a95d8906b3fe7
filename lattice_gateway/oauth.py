"""JWT access tokens from the operator's own identity provider (docs/api.md, "JWT access
tokens").

With ``--oauth-issuer URL`` (repeatable) and ``--oauth-audience``, an app may send
``Authorization: Bearer <JWT>``: an access token its users got from the operator's
identity provider ("Sign in with ..."). It is verified here with PyJWT (no signature code
of ours) against the issuer's published keys:

- the keys: the issuer's discovery document (``/.well-known/openid-configuration``, else
  ``/.well-known/oauth-authorization-server``) names its ``jwks_uri``; the JWKS is cached,
  fetched again after ``JWKS_MAX_AGE_SECONDS``, and at once when a token names a key id
  (``kid``) it does not hold (the issuer rotated its keys), at most once per
  ``min_refresh_seconds`` per issuer so unknown-``kid`` tokens cannot flood the issuer;
- the algorithm: one of ``ALLOWED_ALGORITHMS`` (RSA, RSA-PSS, ECDSA, EdDSA), and the one
  the key is for. ``none`` and every HMAC algorithm are refused before any key is looked
  at, and symmetric (``oct``) keys in a JWKS are ignored: a public key can never be used
  as an HMAC secret;
- the claims: ``iss`` (one of the configured issuers, exactly), ``aud`` (contains the
  configured audience), ``exp`` required and ``nbf`` if present, each with
  ``LEEWAY_SECONDS`` of clock skew;
- the header ``typ``: ``at+jwt`` (RFC 9068) or a plain JWT (``JWT`` or none at all: what
  many identity providers issue as access tokens); any other type (an ID token's or a
  logout token's, say) is refused.

The token then grants the scopes in ``scope`` (space-separated) or ``scp`` (a list), for
the account named by the account claim (default ``sub``), to the app named by
``client_id`` (else ``azp``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from lattice_protocol import ErrorCode, LatticeError

log = logging.getLogger("lattice_gateway.oauth")

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
                      "ES384", "EdDSA")
# The key types each allowed algorithm verifies with (checked before PyJWT sees the key).
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
ACCEPTED_TYPES = ("at+jwt", "application/at+jwt", "jwt")
LEEWAY_SECONDS = 30
JWKS_MAX_AGE_SECONDS = 3600.0
DEFAULT_MIN_REFRESH_SECONDS = 30.0
FETCH_TIMEOUT_SECONDS = 5.0
_MAX_TOKEN_BYTES = 16 * 1024


def looks_like_jwt(value: str) -> bool:
    """A compact JWS (three base64url parts, a JSON header): never one of our own secrets
    (``sk_...``, ``loat_v1_...``)."""
    return value.startswith("eyJ") and value.count(".") == 2


@dataclass(frozen=True)
class OAuthConfig:
    issuers: tuple[str, ...]
    audience: str
    account_claim: str = "sub"


def oauth_config(issuers: tuple[str, ...], audience: str | None,
                 account_claim: str) -> OAuthConfig | None:
    """The configuration the settings describe (None: no issuer trusted), or ValueError."""
    if not issuers:
        return None
    if not audience:
        raise ValueError("--oauth-issuer needs --oauth-audience (the `aud` value the "
                         "identity provider puts in access tokens for this gateway)")
    for issuer in issuers:
        parts = urlsplit(issuer)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.query \
                or parts.fragment:
            raise ValueError(f"--oauth-issuer must be an http(s) URL without query or "
                             f"fragment, got {issuer!r}")
        if parts.scheme == "http":
            log.warning("the identity provider %s is trusted over plain http: its keys "
                        "could be replaced in transit; use https outside tests", issuer)
    if not account_claim:
        raise ValueError("--oauth-account-claim cannot be empty")
    return OAuthConfig(tuple(dict.fromkeys(issuers)), audience, account_claim)


@dataclass(frozen=True)
class VerifiedToken:
    issuer: str
    account_name: str  # the account claim's value: a Lattice account name
    client_id: str
    scopes: frozenset[str]


def _refused(message: str) -> LatticeError:
    return LatticeError(ErrorCode.INVALID_API_KEY, message)


def _shown(value: object) -> str:
    """A claim value for an error message: short, printable."""
    text = str(value)
    return repr(text[:100] + ("..." if len(text) > 100 else ""))


@dataclass
class _IssuerKeys:
    """One issuer's signing keys (JWKs by ``kid``) and when they were fetched."""

    jwks: dict[str | None, dict[str, Any]] = field(default_factory=dict)
    fetched_at: float | None = None  # monotonic; None: never fetched successfully
    attempted_at: float | None = None  # the last fetch, successful or not
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fetches: int = 0


class JwtVerifier:
    """Verifies JWT access tokens of the configured issuers (see the module docstring)."""

    def __init__(self, config: OAuthConfig, *, http: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 min_refresh_seconds: float = DEFAULT_MIN_REFRESH_SECONDS) -> None:
        self.config = config
        self._http = http or httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS,
                                               follow_redirects=False)
        self._owns_http = http is None
        self._clock = clock
        self._min_refresh = min_refresh_seconds
        self._issuers = {issuer: _IssuerKeys() for issuer in config.issuers}

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def fetches(self, issuer: str) -> int:
        """How many times the issuer's keys were fetched (for tests and logs)."""
        return self._issuers[issuer].fetches

    async def verify(self, token: str) -> VerifiedToken:
        """The verified token's grant, or LatticeError invalid_api_key saying why not."""
        if len(token) > _MAX_TOKEN_BYTES:
            raise _refused("malformed JWT access token: too long")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _refused("malformed JWT access token") from None
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise _refused(f"JWT signature algorithm {_shown(algorithm)} is not accepted "
                           f"(accepted: {', '.join(ALLOWED_ALGORITHMS)})")
        token_type = header.get("typ")
        if token_type is not None and (not isinstance(token_type, str)
                                       or token_type.lower() not in ACCEPTED_TYPES):
            raise _refused(f"JWT type {_shown(token_type)} is not an access token "
                           "(accepted: at+jwt or JWT)")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or issuer not in self._issuers:
            raise _refused(f"JWT issuer {_shown(issuer)} is not trusted by this gateway")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refused("malformed JWT access token: `kid` is not a string")
        key = await self._signing_key(issuer, kid, algorithm)
        try:
            claims = jwt.decode(
                token, key=key.key, algorithms=[algorithm], audience=self.config.audience,
                issuer=issuer, leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise _refused("this JWT access token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _refused("this JWT access token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise _refused(f"this JWT access token is for another audience (aud), not "
                           f"{_shown(self.config.audience)}") from None
        except jwt.InvalidIssuerError:
            raise _refused("this JWT access token's issuer (iss) is wrong") from None
        except jwt.InvalidSignatureError:
            raise _refused("this JWT access token's signature does not verify with the "
                           "issuer's keys") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refused(f"this JWT access token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise _refused(f"invalid JWT access token: {type(exc).__name__}") from None
        return self._grant(issuer, claims)

    def _grant(self, issuer: str, claims: dict[str, Any]) -> VerifiedToken:
        account_claim = self.config.account_claim
        account = claims.get(account_claim)
        if not isinstance(account, str) or not account.strip() or len(account) > 200:
            raise _refused(f"this JWT access token's {account_claim!r} claim names no "
                           "account (a string of 1 to 200 characters is needed)")
        client_id = claims.get("client_id") or claims.get("azp")
        if not isinstance(client_id, str) or not 0 < len(client_id) <= 128 \
                or not client_id.isprintable():
            raise _refused("this JWT access token names no client (`client_id` or `azp`, "
                           "1 to 128 printable characters)")
        scope = claims.get("scope")
        scp = claims.get("scp")
        if isinstance(scope, str):
            scopes = frozenset(scope.split())
        elif isinstance(scp, list):
            scopes = frozenset(s for s in scp if isinstance(s, str))
        elif isinstance(scp, str):
            scopes = frozenset(scp.split())
        else:
            scopes = frozenset()
        return VerifiedToken(issuer=issuer, account_name=account.strip(),
                             client_id=client_id, scopes=scopes)

    # -- keys ------------------------------------------------------------------------------

    async def _signing_key(self, issuer: str, kid: str | None, algorithm: str) -> jwt.PyJWK:
        state = self._issuers[issuer]
        now = self._clock()
        stale = state.fetched_at is None or now - state.fetched_at >= JWKS_MAX_AGE_SECONDS
        unknown = self._pick(state, kid) is None
        if stale or (unknown and self._may_refresh(state, now)):
            async with state.lock:
                # A burst of tokens waits for one fetch: whoever comes after it rechecks.
                now = self._clock()
                stale = (state.fetched_at is None
                         or now - state.fetched_at >= JWKS_MAX_AGE_SECONDS)
                unknown = self._pick(state, kid) is None
                if stale or (unknown and self._may_refresh(state, now)):
                    await self._refresh(issuer, state)
        jwk = self._pick(state, kid)
        if jwk is None:
            if state.fetched_at is None:
                raise _refused(f"cannot verify this JWT access token now: the keys of "
                               f"{issuer} could not be fetched")
            raise _refused(f"this JWT access token's signing key (kid {_shown(kid)}) is not "
                           f"among {issuer}'s published keys")
        declared = jwk.get("alg")
        if declared is not None and declared != algorithm:
            raise _refused(f"this JWT access token says {algorithm} but its key is for "
                           f"{_shown(declared)}")
        if jwk.get("kty") != _KEY_TYPES[algorithm[:2]]:
            raise _refused(f"this JWT access token says {algorithm} but its key is of type "
                           f"{_shown(jwk.get('kty'))}")
        try:
            return jwt.PyJWK(jwk, algorithm=algorithm)
        except jwt.PyJWTError:
            raise _refused("the issuer's key for this JWT access token is unusable") from None

    def _may_refresh(self, state: _IssuerKeys, now: float) -> bool:
        return state.attempted_at is None or now - state.attempted_at >= self._min_refresh

    @staticmethod
    def _pick(state: _IssuerKeys, kid: str | None) -> dict[str, Any] | None:
        if kid is not None:
            return state.jwks.get(kid)
        # No kid: only unambiguous when the issuer publishes exactly one signing key.
        return next(iter(state.jwks.values())) if len(state.jwks) == 1 else None

    async def _refresh(self, issuer: str, state: _IssuerKeys) -> None:
        state.attempted_at = self._clock()
        state.fetches += 1
        try:
            jwks_uri = await self._jwks_uri(issuer)
            response = await self._http.get(jwks_uri, headers={"accept": "application/json"})
            response.raise_for_status()
            document = response.json()
            keys = document.get("keys") if isinstance(document, dict) else None
            if not isinstance(keys, list):
                raise ValueError("the JWKS has no `keys` list")
        except (httpx.HTTPError, ValueError) as exc:
            # Keep the keys we have: an identity provider that is down for a moment must
            # not stop tokens signed with keys we already know.
            log.warning("could not fetch the signing keys of %s: %s: %s", issuer,
                        type(exc).__name__, exc)
            return
        jwks: dict[str | None, dict[str, Any]] = {}
        for jwk in keys:
            if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
                continue  # symmetric (oct) or unknown keys: never used
            if jwk.get("use", "sig") != "sig":
                continue  # encryption keys
            kid = jwk.get("kid")
            jwks[kid if isinstance(kid, str) else None] = jwk
        state.jwks = jwks
        state.fetched_at = self._clock()
        log.info("fetched %d signing keys of %s", len(jwks), issuer)

    async def _jwks_uri(self, issuer: str) -> str:
        """From the issuer's discovery document: OpenID Connect's, else RFC 8414's."""
        parts = urlsplit(issuer)
        origin = f"{parts.scheme}://{parts.netloc}"
        path = parts.path.rstrip("/")
        candidates = (f"{issuer.rstrip('/')}/.well-known/openid-configuration",
                      f"{origin}/.well-known/oauth-authorization-server{path}")
        problems: list[str] = []
        for url in candidates:
            try:
                response = await self._http.get(url, headers={"accept": "application/json"})
                if response.status_code != 200:
                    problems.append(f"{url}: HTTP {response.status_code}")
                    continue
                document = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                problems.append(f"{url}: {type(exc).__name__}")
                continue
            if not isinstance(document, dict):
                problems.append(f"{url}: not a JSON object")
                continue
            if document.get("issuer") not in (None, issuer):
                # A discovery document must name its own issuer exactly (OIDC Discovery
                # 4.3, RFC 8414 3.3); anything else could hand us another issuer's keys.
                problems.append(f"{url}: names another issuer")
                continue
            jwks_uri = document.get("jwks_uri")
            if isinstance(jwks_uri, str) and urlsplit(jwks_uri).scheme in ("https", "http"):
                return jwks_uri
            problems.append(f"{url}: no jwks_uri")
        raise ValueError("no usable discovery document (" + "; ".join(problems) + ")")

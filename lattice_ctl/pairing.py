"""Redeeming a bootstrap token (docs/protocol.md §1) and what each failure means.

The bootstrap token is a secret: it goes only into the redeem request body. Every
message built here is scrubbed of it, whatever the gateway echoes back.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from lattice_daemon.shared import RelayConfig, relay_base_url
from lattice_protocol._version import __version__
from lattice_protocol.timestamps import iso_from_seconds

BOOTSTRAP_PREFIX = "plrt_v1"

# The gateway's codes (docs/api.md) -> what the person at the terminal should do.
REDEEM_ERRORS: dict[str, str] = {
    "bootstrap_token_expired": (
        "This bootstrap token has expired. Ask the app for a new one (a new "
        "`lattice-ctl relay connect ...` command) and run that."),
    "bootstrap_token_used": (
        "This bootstrap token was already used: each token pairs one machine, once. "
        "Ask the app for a new one."),
    "invalid_bootstrap_token": (
        "The gateway does not know this bootstrap token. Check that it was copied "
        "completely and that --gateway is the gateway that issued it."),
    "runtime_revoked": (
        "This runtime was revoked on the gateway and cannot be paired again. "
        "Create a new runtime and use its command."),
}


class PairingError(Exception):
    """Redeeming failed; ``str(exc)`` is safe to show (never contains the token)."""

    def __init__(self, message: str, code: str = "pairing_failed") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Redeemed:
    relay: RelayConfig
    poll_window_seconds: float | None


def normalize_gateway(url: str) -> str:
    import httpx

    url = url.strip().rstrip("/")
    try:
        host = httpx.URL(url).host if url.startswith(("http://", "https://")) else ""
    except httpx.InvalidURL:  # e.g. "http://[::1": a typo, not a reason for a traceback
        host = ""
    if not host:
        raise PairingError(f"--gateway must be an http:// or https:// URL, got {url!r}",
                           "invalid_gateway")
    return url


def check_token_shape(token: str) -> str:
    token = token.strip()
    if not token:
        raise PairingError("the bootstrap token is empty", "invalid_bootstrap_token")
    if not token.startswith(BOOTSTRAP_PREFIX):
        raise PairingError(f"that is not a bootstrap token (they start with "
                           f"{BOOTSTRAP_PREFIX}_); copy the whole command the app showed",
                           "invalid_bootstrap_token")
    return token


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "<bootstrap token>") if token else text


# The variables that name a proxy for the relay (httpx reads them, either spelling).
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                   "all_proxy")


def proxy_variables(scheme: str) -> list[str]:
    """Those that apply to ``scheme`` URLs, in the order they are looked up."""
    wanted = (f"{scheme.upper()}_PROXY", "ALL_PROXY")
    return sorted((name for name in PROXY_VARIABLES if name.upper() in wanted),
                  key=lambda name: wanted.index(name.upper()))


def _proxy_hint(gateway: str) -> str:
    scheme = "https" if gateway.startswith("https") else "http"
    name = next((n for n in proxy_variables(scheme) if os.environ.get(n)), None)
    if name:
        return (f" (going through the proxy in {name}; check the proxy, or add the "
                f"gateway's host to NO_PROXY)")
    return " (if this network needs a proxy, set HTTPS_PROXY)"


# What OpenSSL says when a TLS client gets a plain-HTTP answer.
_PLAIN_HTTP_ANSWER = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG")


def scheme_mismatch(url: str, error: BaseException) -> str | None:
    """One line for a ``url`` whose scheme the server does not speak (``https://`` to a
    plain-http server, or the reverse), else None."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "https" and any(m in str(error).upper() for m in _PLAIN_HTTP_ANSWER):
        return (f"{url} answered in plain HTTP, not HTTPS: if this gateway serves plain "
                f"HTTP, use http://{parts.netloc}")
    import httpx

    answered_badly = isinstance(error, httpx.RemoteProtocolError | httpx.ReadError)
    if parts.scheme == "http" and answered_badly and _speaks_tls(parts.hostname or "",
                                                                 parts.port or 80):
        return f"{url} expects HTTPS, not plain HTTP: use https://{parts.netloc}"
    return None


def _speaks_tls(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TLS handshake with ``host:port`` completes (certificate not checked: this
    only tells which protocol the server speaks)."""
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host or None):
            return True
    except (OSError, ValueError):
        return False


def pairing_rejected(relay: RelayConfig, timeout: float = 5.0) -> str | None:
    """Why the gateway refuses this pairing's daemon credential (the runtime was revoked,
    deleted or paired elsewhere), or None when it accepts it or cannot be asked.

    Asks with the credential itself: ending a session that does not exist changes
    nothing, but the gateway checks the credential first (docs/protocol.md)."""
    import httpx

    url = relay_base_url(relay.relay_url) + "/sessions/pairing-check"
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.delete(url, headers={
                "Authorization": f"Bearer {relay.daemon_token}",
                "User-Agent": f"lattice-ctl/{__version__}"})
    except (httpx.HTTPError, ValueError):
        return None
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    # The same rule as the daemon's: final only when the gateway itself says so.
    if response.status_code == 403 and code == "runtime_revoked":
        return "the runtime was revoked"
    if response.status_code == 401 and code == "invalid_api_key":
        return "the gateway no longer accepts this machine's credential"
    return None


def redeem(gateway: str, token: str, daemon_public_key: str,
           timeout: float = 15.0) -> Redeemed:
    """POST /v1/relay/redeem; the config section to save, or PairingError."""
    import httpx

    url = f"{gateway}/v1/relay/redeem"
    body = {"bootstrapToken": token, "daemonPublicKey": daemon_public_key,
            "daemonVersion": __version__}
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.post(url, json=body,
                                   headers={"User-Agent": f"lattice-ctl/{__version__}"})
    except httpx.ProxyError as exc:
        raise PairingError(f"the proxy refused the connection to {gateway}: "
                           f"{_scrub(str(exc), token)}", "gateway_unreachable") from None
    except httpx.TimeoutException:
        raise PairingError(f"the gateway at {gateway} did not answer within {timeout:g} s"
                           + _proxy_hint(gateway), "gateway_unreachable") from None
    except httpx.TransportError as exc:
        mismatch = scheme_mismatch(gateway, exc)
        if mismatch:
            raise PairingError(mismatch, "gateway_unreachable") from None
        reason = _scrub(str(exc), token) or type(exc).__name__
        raise PairingError(f"cannot reach the gateway at {gateway}: {reason}"
                           + _proxy_hint(gateway), "gateway_unreachable") from None
    return _parse_redeem(gateway, token, response.status_code, response.content)


def _parse_redeem(gateway: str, token: str, status: int, content: bytes) -> Redeemed:
    import json

    try:
        data: Any = json.loads(content) if content else None
    except ValueError:
        data = None
    if status >= 400:
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict):
            hint = "; is --gateway the right URL?" if status in (404, 405) else ""
            raise PairingError(f"{gateway} did not answer like a Lattice gateway "
                               f"(HTTP {status}){hint}", "bad_gateway_answer")
        code = str(error.get("code") or "error")
        message = REDEEM_ERRORS.get(code)
        if message is None and status in (404, 405):
            message = (f"no Lattice relay at {gateway} (HTTP {status}); is --gateway the "
                       "right URL?")
        if message is None:
            message = (f"the gateway refused the pairing: "
                       f"{_scrub(str(error.get('message') or ''), token)} (HTTP {status})")
        raise PairingError(message, code)
    if not isinstance(data, dict):
        raise PairingError(f"{gateway} did not answer like a Lattice gateway "
                           f"(HTTP {status}, not JSON)", "bad_gateway_answer")
    try:
        relay = RelayConfig(
            gateway=gateway,
            relay_url=str(data.get("relayUrl") or gateway),
            lattice_id=str(data["latticeId"]),
            account_id=str(data["accountId"]),
            display_name=str(data.get("displayName") or ""),
            execution_backend=str(data.get("executionBackend") or "local-model"),
            daemon_token=str(data["daemonToken"]),
            gateway_public_key=str(data["gatewayPublicKey"]),
            paired_at=iso_from_seconds(time.time()),
        )
    except KeyError as exc:
        raise PairingError(f"the gateway's pairing answer lacks {exc.args[0]}",
                           "bad_gateway_answer") from None
    window = data.get("pollWindowSeconds")
    return Redeemed(relay, float(window) if isinstance(window, (int, float)) else None)

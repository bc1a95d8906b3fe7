"""HTTP transports that skip loading the CA bundle when a URL cannot use TLS.

Every ``httpx.AsyncClient`` builds an SSL context with the full CA bundle at creation,
~1 MB of the daemon's 30 MB idle budget (SPEC §7) each, even for a provider at
``http://localhost``. For plain-http URLs we hand httpx a context that verifies
strictly but trusts no CA: it is never used, and if a TLS connection were ever tried
with it, it would fail closed rather than open.
"""

from __future__ import annotations

import ssl

import httpx


def _unused_tls_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    return context


def transport_for(url: str, limits: httpx.Limits) -> httpx.AsyncHTTPTransport | None:
    """A lean transport for ``http://`` URLs; None (httpx's default) for anything else."""
    if not url.lower().startswith("http://"):
        return None
    return httpx.AsyncHTTPTransport(verify=_unused_tls_context(), limits=limits)

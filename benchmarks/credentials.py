"""What authenticating a chat request costs: API keys (credential cache hit and miss, on
SQLite and PostgreSQL) and JWT access tokens (RS256, ES256), with the cache bound that
makes revocation reach every replica within a second.

Baseline in the same run: the cache hit, what almost every request with an API key pays.
A miss happens once per cache period per credential per replica; with the period at
0.5 s (was 2 s) that is 1.5 more misses per second per busy credential, whose cost this
prints. Run from the repository root (~20 s)::

    .venv/bin/python benchmarks/credentials.py [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lattice_gateway.oauth import JwtVerifier, OAuthConfig
from lattice_gateway.store import SqlStore
from lattice_gateway.store.sql import CREDENTIAL_CACHE_SECONDS
from tests.servers.oauth_issuer import AUDIENCE, run_oauth_issuer

ROUNDS = 2000


def _us(samples: list[float]) -> str:
    samples = sorted(samples)
    p50 = statistics.median(samples) * 1e6
    p99 = samples[int(len(samples) * 0.99)] * 1e6
    return f"p50 {p50:7.1f} us  p99 {p99:7.1f} us"


async def _store_costs(database: str, label: str) -> None:
    store = await SqlStore.open(database)
    try:
        secret = (await store.create_api_key("bench", ["lattice:compute:inference"])).secret
        await store.credential(secret)
        hits: list[float] = []
        misses: list[float] = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            await store.credential(secret)
            hits.append(time.perf_counter() - started)
            store._credentials.clear()  # the next lookup is a miss, as after the TTL
            started = time.perf_counter()
            await store.credential(secret)
            misses.append(time.perf_counter() - started)
        miss_p50 = statistics.median(misses)
        extra = miss_p50 * (1 / CREDENTIAL_CACHE_SECONDS - 1 / 2.0)
        print(f"{label:10} API key, cache hit  (baseline): {_us(hits)}")
        print(f"{label:10} API key, cache miss          : {_us(misses)}  "
              f"ratio p50 {miss_p50 / statistics.median(hits):.0f}x")
        print(f"{label:10} TTL 2 s -> {CREDENTIAL_CACHE_SECONDS} s: +{extra * 1e6:.0f} us of "
              f"lookups per second per busy credential per replica")
    finally:
        await store.close()


async def _jwt_costs() -> None:
    with run_oauth_issuer() as issuer:
        for kind in ("RSA", "EC"):
            kid = issuer.add_key(kind)
            token = issuer.token(kid, exp=int(time.time()) + 3600)
            verifier = JwtVerifier(OAuthConfig((issuer.url,), AUDIENCE))
            try:
                await verifier.verify(token)  # fetch the keys once
                samples = []
                for _ in range(ROUNDS):
                    started = time.perf_counter()
                    await verifier.verify(token)
                    samples.append(time.perf_counter() - started)
            finally:
                await verifier.close()
            algorithm = "RS256" if kind == "RSA" else "ES256"
            print(f"JWT {algorithm} verify (keys cached)   : {_us(samples)}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        await _store_costs(str(Path(directory) / "gw.db"), "SQLite")
    if args.postgres:
        schema = "bench_" + secrets.token_hex(4)
        await _store_costs(f"{args.postgres}?schema={schema}", "PostgreSQL")
        import asyncpg

        connection = await asyncpg.connect(args.postgres)
        await connection.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await connection.close()
    await _jwt_costs()


if __name__ == "__main__":
    asyncio.run(main())

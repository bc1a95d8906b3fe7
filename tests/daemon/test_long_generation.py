"""A non-streaming generation that runs far longer than the gateway's silence deadlines
is answered, not cut off: the daemon reports progress while the provider works.

Real processes: gateway (short deadlines: 1 s pickup, 1 s first token, 1 s idle), the
daemon, and the Ollama test server producing a reply over ~3 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lattice_daemon.paths import get_paths
from tests.daemon.support import DaemonProcess, pair_runtime, ping, write_config
from tests.servers import run_ollama_server
from tests.support.gateway import GatewayProcess, run_gateway
from tests.support.net import wait_until

pytestmark = pytest.mark.e2e

MODEL = "llama3.2:3b"
CHUNKS = [f"word{i} " for i in range(12)]


@pytest.fixture
def gateway() -> Iterator[GatewayProcess]:
    with run_gateway(None, poll_window_seconds=2, presence_window_seconds=1,
                     pickup_timeout_seconds=1, first_token_timeout_seconds=1,
                     idle_timeout_seconds=1) as gw:
        yield gw


def test_non_streaming_generation_longer_than_every_gateway_deadline_is_answered(
        gateway: GatewayProcess, lattice_home: Path) -> None:
    paths = get_paths()
    with run_ollama_server(models=[MODEL]) as ollama:
        ollama.configure(chunks=CHUNKS, chunk_delay=0.25)  # ~3 s: past 1 + 1 s of silence
        runtime = pair_runtime(gateway, paths)
        write_config(paths, relay=runtime.relay, provider_url=ollama.url)
        with DaemonProcess(paths).start():
            wait_until(lambda: ping(paths.socket)["relay"]["state"] == "connected",
                       timeout=5, what="daemon connected")
            answer = httpx.post(
                gateway.url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {runtime.api_key}"},
                json={"model": f"lattice:personal:{runtime.lattice_id}",
                      "messages": [{"role": "user", "content": "a long answer, please"}]},
                timeout=20)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["choices"][0]["message"]["content"] == "".join(CHUNKS)
    assert body["choices"][0]["finish_reason"] == "stop"

"""The embedded engine serves models it finds on the machine, by the names their tools
give them: an Ollama store, an LM Studio folder, the Hugging Face cache and the Lattice
models directory, each holding the real SmolLM2 file (laid out as those tools lay it out).

Real processes: openai client -> gateway -> relay -> daemon -> worker -> llama.cpp.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.harness import PairedMachine, auth, home_paths, pair_machine, stop_daemon
from tests.support.gateway import GatewayProcess
from tests.support.model_stores import (
    ModelStores,
    hf_cached_model,
    lmstudio_model,
    ollama_model,
)

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def machine(lattice_home: Path, gateway: GatewayProcess, api_key: str, smollm2_gguf: Path,
            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PairedMachine]:
    stores = ModelStores.under(tmp_path / "stores")
    ollama_model(stores.ollama, "smol:135m", smollm2_gguf)
    home = tmp_path / "home"
    lmstudio_model(home / ".lmstudio" / "models", "HuggingFaceTB", "SmolLM2-GGUF",
                   "smollm2-lmstudio.gguf", smollm2_gguf)
    hf_cached_model(stores.hf, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
                    "smollm2-hf.gguf", smollm2_gguf)
    # The daemon (a child of `lattice-ctl daemon start`) finds the stores where the real
    # tools keep them: these variables, and LM Studio's folder under HOME.
    monkeypatch.setenv("OLLAMA_MODELS", str(stores.ollama))
    monkeypatch.setenv("HF_HUB_CACHE", str(stores.hf))
    monkeypatch.setenv("HOME", str(home))
    # `lattice-ctl models pull` puts a file here
    pulled = home_paths(lattice_home).models_dir / "smollm2-pulled.gguf"
    pulled.parent.mkdir(parents=True, exist_ok=True)
    pulled.write_bytes(smollm2_gguf.read_bytes())
    try:
        yield pair_machine(lattice_home, gateway.url, api_key, None)
    finally:
        stop_daemon(lattice_home)


def test_discovered_models_are_listed_and_served_by_name(machine: PairedMachine) -> None:
    names = ["smol:135m", "smollm2-lmstudio", "smollm2-hf", "smollm2-pulled"]
    record = httpx.get(f"{machine.gateway_url}/v1/personal-runtimes/{machine.lattice_id}",
                       headers=auth(machine.key), timeout=10).json()["runtime"]
    assert set(names) <= set(record["models"])  # what the daemon registered
    client = machine.openai(timeout=60.0)
    for name in names:  # one worker, which loads each file in turn
        completion = client.chat.completions.create(
            model=f"lattice:personal:{machine.lattice_id}/{name}", messages=HELLO,
            max_tokens=4)
        assert completion.choices[0].message.content, name
        assert completion.model.endswith(name)
        assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_an_unknown_model_is_refused_listing_what_exists(machine: PairedMachine) -> None:
    client = machine.openai(timeout=60.0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=f"lattice:personal:{machine.lattice_id}/no-such-model", messages=HELLO,
            max_tokens=4)
    error = caught.value.body
    assert isinstance(error, dict)
    message = error["message"]
    # as for a model Ollama or LM Studio does not have
    assert (caught.value.status_code, error["code"]) == (502, "provider_error"), message
    assert "no-such-model" in message
    for found in ("smol:135m (ollama)", "smollm2-lmstudio (lmstudio)",
                  "smollm2-hf (huggingface)"):
        assert found in message

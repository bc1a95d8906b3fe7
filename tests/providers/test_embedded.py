"""The embedded engine with its real worker process and a real GGUF model (SmolLM2-135M).

No gateway here: the provider interface as the daemon's runner calls it. The whole path
(openai client -> gateway -> relay -> daemon -> worker) is in tests/e2e/test_embedded.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from providers import ProviderError
from providers.embedded import INSTALL_COMMAND, EmbeddedProvider
from tests.support.net import async_wait_until

HELLO = [{"role": "user", "content": "Say hello."}]
LONG = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


@pytest.fixture
async def engine(smollm2_gguf: Path) -> AsyncIterator[EmbeddedProvider]:
    provider = EmbeddedProvider(str(smollm2_gguf), n_ctx=512, first_token_timeout=60,
                                idle_timeout=30)
    yield provider
    await provider.aclose()


def _request(messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    return {"messages": messages, "max_tokens": 8, "seed": 1, **options}


async def test_chat_answers_with_the_model_and_counts_tokens(
        engine: EmbeddedProvider, smollm2_gguf: Path) -> None:
    completion = await engine.chat(_request(HELLO, temperature=0))
    message = completion["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"].strip()
    assert completion["object"] == "chat.completion"
    assert completion["model"] == smollm2_gguf.stem
    usage = completion["usage"]
    # SmolLM2's chat template wraps the message in its im_start/im_end markup
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert completion["choices"][0]["finish_reason"] in ("stop", "length")


async def test_stream_has_the_openai_shape(engine: EmbeddedProvider) -> None:
    request = _request(HELLO, max_tokens=6, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in engine.stream(request)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) >= 2  # token by token, not one block
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert len({c["id"] for c in chunks}) == 1


async def test_same_seed_same_answer_and_stop_sequences(engine: EmbeddedProvider) -> None:
    first = await engine.chat(_request(LONG, max_tokens=12, temperature=0.9, seed=7))
    again = await engine.chat(_request(LONG, max_tokens=12, temperature=0.9, seed=7))
    text = first["choices"][0]["message"]["content"]
    assert again["choices"][0]["message"]["content"] == text
    stop_word = text.split()[1]
    stopped = await engine.chat(_request(LONG, max_tokens=12, temperature=0.9, seed=7,
                                         stop=[stop_word]))
    assert stop_word not in stopped["choices"][0]["message"]["content"]
    assert stopped["choices"][0]["finish_reason"] == "stop"


async def test_json_schema_response_format_is_enforced_by_a_grammar(
        engine: EmbeddedProvider) -> None:
    schema = {"type": "object", "properties": {
        "fruit": {"type": "string", "enum": ["apple", "pear", "plum"]},
        "ripe": {"type": "boolean"}}, "required": ["fruit", "ripe"]}
    completion = await engine.chat(_request(
        [{"role": "user", "content": "Name a fruit."}], max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "f", "schema": schema}}))
    value = json.loads(completion["choices"][0]["message"]["content"])
    assert value["fruit"] in ("apple", "pear", "plum") and isinstance(value["ripe"], bool)
    plain = await engine.chat(_request(
        [{"role": "user", "content": 'Give a JSON object with a key "fruit".'}],
        max_tokens=80, seed=1, response_format={"type": "json_object"}))
    assert isinstance(json.loads(plain["choices"][0]["message"]["content"]), dict)
    # without a grammar, SmolLM2 answers this in prose
    prose = await engine.chat(_request([{"role": "user", "content": "Name a fruit."}],
                                       max_tokens=60))
    with pytest.raises(ValueError):
        json.loads(prose["choices"][0]["message"]["content"])


async def test_prompt_longer_than_n_ctx_is_a_clear_request_error(
        engine: EmbeddedProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await engine.chat(_request([{"role": "user", "content": "word " * 2000}]))
    assert caught.value.reason == "bad_request" and caught.value.status is None
    assert "exceed context window of 512" in caught.value.message
    # the worker is still there and serves the next request
    pid = engine.engine()["workerPid"]
    await engine.chat(_request(HELLO))
    assert engine.engine()["workerPid"] == pid


async def test_sigkill_mid_stream_fails_the_job_and_the_next_job_gets_a_new_worker(
        engine: EmbeddedProvider) -> None:
    stream = engine.stream(_request(LONG, max_tokens=400))
    await anext(stream)
    pid = engine.engine()["workerPid"]
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ProviderError) as caught:
        async for _ in stream:
            pass
    assert caught.value.reason == "internal"
    assert f"pid {pid}" in caught.value.message and "SIGKILL" in caught.value.message
    completion = await engine.chat(_request(HELLO))
    assert completion["choices"][0]["message"]["content"]
    assert engine.engine()["workerPid"] not in (None, pid)


async def test_closing_a_stream_stops_generation_within_a_token(
        engine: EmbeddedProvider) -> None:
    stream = engine.stream(_request(LONG, max_tokens=400))
    for _ in range(4):
        await anext(stream)
    await stream.aclose()  # what the runner does when the app goes away
    cancel = await async_wait_until(lambda: _last_cancel(engine), timeout=10,
                                    what="the worker's cancel report")
    assert cancel["tokensAfterCancel"] <= 2 and cancel["tokens"] < 50
    # the engine is free at once for the next job
    assert (await engine.chat(_request(HELLO)))["choices"][0]["message"]["content"]


async def _last_cancel(engine: EmbeddedProvider) -> dict[str, Any] | None:
    return engine.engine()["lastCancel"]


async def test_jobs_wait_for_their_turn_and_all_finish(engine: EmbeddedProvider) -> None:
    answers = await asyncio.gather(*(engine.chat(_request(HELLO, max_tokens=4))
                                     for _ in range(3)))
    assert all(a["choices"][0]["message"]["content"] for a in answers)


async def test_unloads_after_keep_alive_and_loads_again(smollm2_gguf: Path) -> None:
    engine = EmbeddedProvider(str(smollm2_gguf), n_ctx=256, keep_alive=0.3)
    try:
        await engine.chat(_request(HELLO, max_tokens=2))
        pid = engine.engine()["workerPid"]
        assert engine.engine()["loaded"] and engine.engine()["workerRssBytes"] > 50 * 2**20

        async def unloaded() -> bool:
            return not engine.engine()["loaded"] and not psutil.pid_exists(pid)

        await async_wait_until(unloaded, timeout=10, what="the worker to exit")
        await engine.chat(_request(HELLO, max_tokens=2))
        assert engine.engine()["workerPid"] != pid
    finally:
        await engine.aclose()


async def test_health_and_models_name_the_model(engine: EmbeddedProvider,
                                                smollm2_gguf: Path) -> None:
    health = await engine.health()
    assert health.ok and health.models == [smollm2_gguf.stem]
    assert health.engine is not None and health.engine["loaded"] is False
    assert await engine.models() == [smollm2_gguf.stem]


async def test_a_missing_model_file_says_how_to_get_one(tmp_path: Path) -> None:
    engine = EmbeddedProvider(str(tmp_path / "none.gguf"))
    health = await engine.health()
    assert not health.ok and "lattice-ctl models pull" in health.detail
    with pytest.raises(ProviderError) as caught:
        await engine.chat(_request(HELLO))
    assert caught.value.reason == "model_not_found"


async def test_a_file_that_is_not_a_model_fails_the_job_clearly(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model")
    engine = EmbeddedProvider(str(bogus))
    with pytest.raises(ProviderError) as caught:
        await engine.chat(_request(HELLO))
    assert "is not a GGUF model file" in caught.value.message
    assert str(bogus) in caught.value.message


async def test_without_the_engine_installed_the_error_names_the_install_command(
        smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker's Python finds a llama_cpp that cannot be imported, as when the
    # package is missing; everything else is the real worker.
    (tmp_path / "llama_cpp").mkdir()
    (tmp_path / "llama_cpp" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'llama_cpp'\")\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    engine = EmbeddedProvider(str(smollm2_gguf))
    with pytest.raises(ProviderError) as caught:
        await engine.chat(_request(HELLO))
    assert INSTALL_COMMAND in caught.value.message


def test_amx_cpus_load_models_without_extra_buffer_types(tmp_path: Path) -> None:
    # llama.cpp's AMX matmul crashed on every multi-token prompt on an AMX machine: the
    # worker turns extra buffer types off there, and only there.
    import llama_cpp.llama_cpp as bindings

    from providers.embedded_worker import avoid_amx_matmul

    original = bindings.llama_model_default_params
    plain = tmp_path / "plain"
    plain.write_text("processor : 0\nflags : fpu sse avx2 avx512f\n")
    amx = tmp_path / "amx"
    amx.write_text("processor : 0\nflags : fpu avx2 amx_bf16 amx_tile amx_int8\n")
    try:
        assert avoid_amx_matmul(str(plain)) is False
        assert bindings.llama_model_default_params is original
        assert avoid_amx_matmul(str(tmp_path / "missing")) is False
        assert avoid_amx_matmul(str(amx)) is True
        assert bindings.llama_model_default_params().use_extra_bufts is False
        assert original().use_extra_bufts is True  # llama.cpp's own default, untouched
    finally:
        bindings.llama_model_default_params = original

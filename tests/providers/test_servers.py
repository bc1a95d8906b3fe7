"""The wire-format test servers themselves: exact shapes, control endpoint, process mode."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ControlClient, ServerHandle

REPO = Path(__file__).resolve().parents[2]
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
OPENAI_CHAT = {"model": "qwen2.5-7b-instruct", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        yield client


def ndjson_lines(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def sse_events(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]


# -- Ollama ---------------------------------------------------------------------------------

def test_ollama_discovery_endpoints(ollama_server: ServerHandle, http: httpx.Client) -> None:
    root = http.get(ollama_server.url + "/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert http.get(ollama_server.url + "/api/version").json() == {"version": "0.5.1"}
    tags = http.get(ollama_server.url + "/api/tags").json()["models"]
    assert [m["name"] for m in tags] == ["llama3.2:latest", "qwen2.5:7b"]
    assert {"model", "modified_at", "size", "digest", "details"} <= set(tags[0])
    ps = http.get(ollama_server.url + "/api/ps").json()["models"]
    assert {"expires_at", "size_vram", "context_length"} <= set(ps[0])


def test_ollama_streams_ndjson_by_default(ollama_server: ServerHandle,
                                          http: httpx.Client) -> None:
    response = http.post(ollama_server.url + "/api/chat", json=CHAT)  # no "stream" key
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["transfer-encoding"] == "chunked"
    lines = ndjson_lines(response)
    assert "".join(line["message"]["content"] for line in lines) == \
        "Hello from the test server!"
    assert all(not line["done"] for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"]["content"] == ""
    assert final["prompt_eval_count"] == 12 and final["eval_count"] == 5
    assert {"total_duration", "load_duration", "eval_duration"} <= set(final)
    assert final["created_at"].endswith("Z") and len(final["created_at"]) == 30


def test_ollama_stream_false_is_one_json_object(ollama_server: ServerHandle,
                                                http: httpx.Client) -> None:
    ollama_server.configure(thinking="hmm", prompt_tokens=None)
    body = http.post(ollama_server.url + "/api/chat", json={**CHAT, "stream": False}).json()
    assert body["message"] == {"role": "assistant", "content": "Hello from the test server!",
                               "thinking": "hmm"}
    assert body["done"] is True and body["eval_count"] == 5
    assert "prompt_eval_count" not in body  # omitempty: absent when served from cache


def test_ollama_tool_call_arrives_whole_with_object_arguments(
        ollama_server: ServerHandle, http: httpx.Client) -> None:
    ollama_server.configure(chunks=[], tool_calls=[{"name": "f", "arguments": {"a": 1}}])
    lines = ndjson_lines(http.post(ollama_server.url + "/api/chat", json=CHAT))
    call_line = next(line for line in lines if line["message"].get("tool_calls"))
    assert call_line["done"] is False
    assert call_line["message"]["tool_calls"] == [{"function": {"name": "f",
                                                                "arguments": {"a": 1}}}]
    assert lines[-1]["done"] is True


@pytest.mark.parametrize(("body", "status", "error"), [
    ({**CHAT, "model": "nope"}, 404, "model 'nope' not found"),
    ({"messages": []}, 400, "model is required"),
])
def test_ollama_error_bodies(ollama_server: ServerHandle, http: httpx.Client,
                             body: dict, status: int, error: str) -> None:
    response = http.post(ollama_server.url + "/api/chat", json=body)
    assert response.status_code == status and response.json() == {"error": error}


def test_ollama_injected_busy_and_stream_error_line(ollama_server: ServerHandle,
                                                    http: httpx.Client) -> None:
    ollama_server.configure(error="busy")
    busy = http.post(ollama_server.url + "/api/chat", json=CHAT)
    assert busy.status_code == 503 and "server busy" in busy.json()["error"]
    ollama_server.configure(error=None, stream_error_after=1)
    lines = ndjson_lines(http.post(ollama_server.url + "/api/chat", json=CHAT))
    assert lines[-1] == {"error": "an error was encountered while running the model"}
    assert len(lines) == 2


def test_ollama_empty_messages_loads_the_model(ollama_server: ServerHandle,
                                               http: httpx.Client) -> None:
    body = http.post(ollama_server.url + "/api/chat",
                     json={"model": "llama3.2", "messages": [], "stream": False}).json()
    assert body["done_reason"] == "load"


# -- LM Studio / OpenAI-compatible ----------------------------------------------------------

def test_openai_models_lm_studio_shape(openai_server: ServerHandle, http: httpx.Client
                                       ) -> None:
    body = http.get(openai_server.url + "/v1/models").json()
    assert body["object"] == "list"
    assert body["data"][0] == {"id": "qwen2.5-7b-instruct", "object": "model",
                               "owned_by": "organization_owner"}  # no "created"


def test_openai_json_completion(openai_server: ServerHandle, http: httpx.Client) -> None:
    body = http.post(openai_server.url + "/v1/chat/completions", json=OPENAI_CHAT).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Hello from the test server!"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


def test_openai_sse_exact_order(openai_server: ServerHandle, http: httpx.Client) -> None:
    openai_server.configure(chunks=["Hi", "!"], sse_comments=True)
    response = http.post(openai_server.url + "/v1/chat/completions",
                         json={**OPENAI_CHAT, "stream": True,
                               "stream_options": {"include_usage": True}})
    assert response.headers["content-type"] == "text/event-stream"
    assert ": keep-alive" in response.text
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [{"content": "Hi"},
                                                               {"content": "!"}]
    assert chunks[3]["choices"][0]["delta"] == {}
    assert chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 2
    assert all(c["usage"] is None for c in chunks[:4])
    assert len({(c["id"], c["created"]) for c in chunks}) == 1


def test_openai_error_shapes(openai_server: ServerHandle, http: httpx.Client) -> None:
    url = openai_server.url + "/v1/chat/completions"
    missing = http.post(url, json={**OPENAI_CHAT, "model": "nope"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert missing.json()["error"]["param"] == "model"
    openai_server.configure(error="bad_request")
    bad = http.post(url, json=OPENAI_CHAT)
    assert bad.status_code == 400
    assert bad.json() == {"error": "'response_format.type' must be 'json_schema' or 'text'"}


def test_openai_error_event_mid_stream(openai_server: ServerHandle, http: httpx.Client
                                       ) -> None:
    openai_server.configure(stream_error_after=1)
    events = sse_events(http.post(openai_server.url + "/v1/chat/completions",
                                  json={**OPENAI_CHAT, "stream": True}))
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["message"].startswith("The model has crashed")


# -- control endpoint and process mode ------------------------------------------------------

def test_control_endpoint_over_http(ollama_server: ServerHandle, http: httpx.Client) -> None:
    control = ControlClient(ollama_server.url)
    assert control.configure(reply="over http")["reply"] == "over http"
    body = http.post(ollama_server.url + "/api/chat", json={**CHAT, "stream": False}).json()
    assert body["message"]["content"] == "over http"
    stats = control.stats()
    assert stats["request_count"] == 1 and stats["completed"] == 1
    assert control.last_request()["body"]["stream"] is False
    with pytest.raises(ValueError, match="unknown behaviour key"):
        control.configure(replly="typo")
    control.reset()
    assert control.stats()["request_count"] == 0
    assert ollama_server.configure()["reply"] == "Hello from the test server!"
    control.close()


def test_unknown_behaviour_key_in_process_is_an_error(ollama_server: ServerHandle) -> None:
    with pytest.raises(ValueError, match="chunk_delay"):
        ollama_server.configure(chunk_dealy=1)


@pytest.mark.parametrize(("module", "path"), [("ollama_server", "/api/tags"),
                                              ("openai_server", "/v1/models")])
def test_runs_as_a_subprocess_and_prints_a_ready_line(module: str, path: str) -> None:
    process = subprocess.Popen([sys.executable, "-m", f"tests.servers.{module}",
                                "--port", "0"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().split()
        assert ready[0] == "READY", ready
        url = ready[1]
        control = ControlClient(url)
        control.configure(models=["from-another-process"])
        with httpx.Client(trust_env=False) as http:
            assert "from-another-process" in http.get(url + path).text
        assert control.stats()["request_count"] == 1
        control.close()
    finally:
        process.terminate()
        process.wait(5)
    assert "Traceback" not in (process.stderr.read() if process.stderr else "")


def test_ollama_head_root_has_no_body_and_keeps_the_connection_usable(
        ollama_server: ServerHandle, http: httpx.Client) -> None:
    head = http.head(ollama_server.url + "/")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len("Ollama is running"))
    assert http.get(ollama_server.url + "/api/version").json() == {"version": "0.5.1"}

"""The embedded engine's worker process: llama.cpp (llama-cpp-python) runs a GGUF model here.

Started and supervised by :class:`providers.embedded.EmbeddedProvider`
(``python -m providers.embedded_worker``), never imported by the daemon: llama.cpp's
memory lives and dies with this process, and a crash or an out-of-memory kill takes
down only this process.

Protocol: one JSON object per line (UTF-8) on stdin and on the process's original
stdout; llama.cpp's own prints go to stderr (fd 1 is pointed there so nothing C code
writes can corrupt a frame).

In:  ``{"op": "load", "path", "n_ctx", "n_threads"}`` (first), then
     ``{"op": "chat", "id", "request"}`` and ``{"op": "cancel", "id"}``; EOF: exit.
Out: ``{"ready": {"loadSeconds"}}`` or ``{"fatal": message}`` (then exit), then per job
     ``{"id", "delta": text}``..., ending in ``{"id", "done": {"finish", "usage"}}``,
     ``{"id", "error": {"reason", "message"}}`` or ``{"id", "cancelled": {...}}``.

Jobs run one at a time, in order (one llama.cpp context); a reader thread takes cancels
while a job generates, and the generation checks for one after every sampled token.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from typing import Any, BinaryIO

# The request fields llama.cpp's create_chat_completion takes as they are.
_PASSED_THROUGH = ("temperature", "top_p", "seed", "stop", "presence_penalty",
                   "frequency_penalty", "tools", "tool_choice")


class _Frames:
    """Writes frames to the protocol pipe; thread-safe (reader and generator both write)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, frame: dict[str, Any]) -> None:
        data = json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        with self._lock:
            self._out.write(data)
            self._out.flush()


class _Jobs:
    """Jobs waiting to run, and the cancels that arrive while one runs."""

    def __init__(self) -> None:
        self.waiting: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.cancelled: dict[int, int] = {}  # job id -> tokens sampled when the cancel came
        self.current: int | None = None
        self.sampled = 0  # tokens sampled so far by the current job

    def read(self, inbox: BinaryIO) -> None:
        """The reader thread: queue jobs, note cancels; None when the daemon hangs up."""
        for line in inbox:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("op") == "chat":
                self.waiting.put(message)
            elif message.get("op") == "cancel":
                job_id = message.get("id")
                self.cancelled[job_id] = self.sampled if job_id == self.current else 0
        # The daemon is gone (it exited, or was killed): stop generating for nobody.
        if self.current is not None:
            self.cancelled[self.current] = self.sampled
        self.waiting.put(None)


def _chat_arguments(request: dict[str, Any]) -> dict[str, Any]:
    """OpenAI request fields -> create_chat_completion keyword arguments."""
    arguments = {key: request[key] for key in _PASSED_THROUGH if request.get(key) is not None}
    if request.get("logit_bias"):  # OpenAI's keys are token ids as strings
        arguments["logit_bias"] = {int(k): v for k, v in request["logit_bias"].items()}
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    if max_tokens is not None:
        arguments["max_tokens"] = max_tokens
    response_format = request.get("response_format")
    if isinstance(response_format, dict):
        # llama-cpp-python takes {"type": "json_object", "schema": ...} and compiles the
        # schema (or plain JSON) into a grammar that constrains sampling.
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            arguments["response_format"] = {"type": "json_object", "schema": schema}
        elif response_format.get("type") == "json_object":
            arguments["response_format"] = {"type": "json_object"}
    return arguments


def _engine_class(llama_class: type) -> type:
    class Engine(llama_class):  # type: ignore[misc]
        """Llama whose token loop counts tokens and stops at once when its job is cancelled.

        ``generate`` is the one place every sampled token passes through, so stopping here
        stops llama.cpp within one token, whatever the text layer holds back.
        """

        jobs: _Jobs
        prompt_tokens = 0
        completion_tokens = 0

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Any:
            import llama_cpp

            self.prompt_tokens = len(tokens)
            self.completion_tokens = 0
            jobs = self.jobs
            for token in super().generate(tokens, *args, **kwargs):
                jobs.sampled += 1
                if jobs.current in jobs.cancelled:
                    return
                if not llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                    self.completion_tokens += 1
                yield token

    return Engine


def _run(engine: Any, jobs: _Jobs, frames: _Frames, message: dict[str, Any]) -> None:
    job_id = message["id"]
    jobs.current, jobs.sampled = job_id, 0
    if job_id in jobs.cancelled:  # cancelled while it waited
        frames.send({"id": job_id, "cancelled": {"tokens": 0, "tokensAfterCancel": 0}})
        return
    request = message["request"]
    finish = "stop"
    if request.get("seed") is not None:
        # Reusing the cached prompt re-evaluates only its end, which changes the logits
        # in their last bits: with a seed, evaluate it whole, so a seed repeats an answer.
        engine.reset()
    try:
        stream = engine.create_chat_completion(messages=request["messages"], stream=True,
                                               **_chat_arguments(request))
        for chunk in stream:
            if job_id in jobs.cancelled:
                break
            choice = (chunk.get("choices") or [{}])[0]
            text = (choice.get("delta") or {}).get("content")
            if text:
                frames.send({"id": job_id, "delta": text})
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    except ValueError as exc:  # the prompt does not fit n_ctx, a schema it cannot compile
        frames.send({"id": job_id, "error": {"reason": "bad_request", "message": str(exc)}})
        return
    except Exception as exc:
        frames.send({"id": job_id, "error": {"reason": "internal",
                                             "message": f"{type(exc).__name__}: {exc}"}})
        return
    finally:
        jobs.current = None
    if job_id in jobs.cancelled:
        at_cancel = jobs.cancelled.pop(job_id)
        frames.send({"id": job_id, "cancelled": {
            "tokens": jobs.sampled, "tokensAfterCancel": max(0, jobs.sampled - at_cancel)}})
        return
    frames.send({"id": job_id, "done": {"finish": finish, "usage": {
        "prompt_tokens": engine.prompt_tokens,
        "completion_tokens": engine.completion_tokens}}})


def _cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU advertises Intel AMX (Linux; elsewhere: no)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as file:
            for line in file:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


def avoid_amx_matmul(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """On a CPU with AMX, load models without llama.cpp's extra buffer types.

    llama.cpp's AMX matrix multiply (one of those buffer types) crashed the process with
    SIGSEGV on every prompt longer than one token on an AMX server (llama-cpp-python
    0.3.36 built for the machine itself). Without extra buffer types the model runs on
    the plain CPU kernels: the same answers, without the AMX and weight-repacking speed-ups.
    Returns whether it changed anything.
    """
    if not _cpu_has_amx(cpuinfo):
        return False
    import llama_cpp.llama_cpp as bindings

    defaults = bindings.llama_model_default_params
    if not hasattr(defaults(), "use_extra_bufts"):  # an older llama.cpp: nothing to turn off
        return False

    def without_extra_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = without_extra_buffers  # read by Llama()
    return True


def main() -> int:
    frames = _Frames(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # anything printed from here on (C code included) goes to stderr
    inbox = sys.stdin.buffer
    load = json.loads(inbox.readline() or b"{}")
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        frames.send({"fatal": f"llama-cpp-python is not installed ({exc})",
                     "reason": "not_installed"})
        return 1
    avoid_amx_matmul()
    started = time.perf_counter()
    try:
        engine = _engine_class(Llama)(model_path=load["path"], n_ctx=load["n_ctx"],
                                      n_threads=load.get("n_threads"), verbose=False)
    except Exception as exc:  # not a GGUF, truncated, an architecture llama.cpp lacks
        frames.send({"fatal": f"cannot load {load.get('path')}: {exc}"})
        return 1
    jobs = _Jobs()
    engine.jobs = jobs
    frames.send({"ready": {"loadSeconds": round(time.perf_counter() - started, 3)}})
    threading.Thread(target=jobs.read, args=(inbox,), daemon=True).start()
    while (message := jobs.waiting.get()) is not None:
        _run(engine, jobs, frames, message)
    return 0


if __name__ == "__main__":
    sys.exit(main())

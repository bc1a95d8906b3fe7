"""`lattice-ctl models` (provider models + GGUF files found here) and `models pull`
(progress, resume, checksum, atomic), run as the real command against real servers."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from lattice_ctl.model_download import DownloadError, parse_source
from tests.ctl.test_relay_connect_tty import Terminal
from tests.e2e.harness import CTL, ctl, ctl_env, home_paths, write_provider_config
from tests.servers import run_ollama_server
from tests.servers.file_server import run_file_server
from tests.support.model_stores import (
    gguf_bytes,
    hf_cached_model,
    lmstudio_model,
    ollama_model,
)
from tests.support.net import free_port

MODEL = gguf_bytes("smol", 1_000_000)
SHA = hashlib.sha256(MODEL).hexdigest()
HUB_PATH = "/HuggingFaceTB/SmolLM2-GGUF/resolve/main/smol-q8.gguf"


@pytest.fixture
def user_home(tmp_path: Path) -> Path:
    """The user's home directory, where Ollama, LM Studio and the HF cache live."""
    home = tmp_path / "user"
    home.mkdir()
    return home


def env_for(lattice_home: Path, user_home: Path, **extra: str) -> dict[str, str]:
    env = ctl_env(lattice_home, HOME=str(user_home), **extra)
    for variable in ("OLLAMA_MODELS", "HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME",
                     "HF_ENDPOINT", "LATTICE_HF_ENDPOINT"):
        env.pop(variable, None)
    env.update(extra)
    return env


def models_dir(lattice_home: Path) -> Path:
    return home_paths(lattice_home).data_dir / "models"


def run(lattice_home: Path, user_home: Path, *args: str, **env: str):
    return ctl(lattice_home, *args, env=env_for(lattice_home, user_home, **env), timeout=60)


def test_models_lists_the_providers_models_and_every_gguf_file(
        lattice_home: Path, user_home: Path) -> None:
    models_dir(lattice_home).mkdir(parents=True)
    (models_dir(lattice_home) / "pulled.gguf").write_bytes(gguf_bytes("p", 2_500_000))
    ollama_model(user_home / ".ollama" / "models", "llama3.2:3b", gguf_bytes("l", 3000))
    lmstudio_model(user_home / ".lmstudio" / "models", "lmstudio-community", "Qwen-GGUF",
                   "Qwen-Q4.gguf", gguf_bytes("q", 4000))
    hf_cached_model(user_home / ".cache" / "huggingface" / "hub", "org/repo", "hf-model.gguf",
                    gguf_bytes("h", 5000))
    with run_ollama_server(models=["llama3.2:latest"]) as ollama:
        write_provider_config(lattice_home, "ollama", ollama.url)
        data = json.loads(run(lattice_home, user_home, "--json", "models").stdout)
        human = run(lattice_home, user_home, "models")
    assert data["models"] == ["llama3.2:latest"] and data["via"] == "provider"
    assert data["modelsDir"] == str(models_dir(lattice_home))
    assert [(f["name"], f["size"], f["source"]) for f in data["gguf"]] == [
        ("pulled", 2_500_000, "lattice"), ("llama3.2:3b", 3000, "ollama"),
        ("Qwen-Q4", 4000, "lmstudio"), ("hf-model", 5000, "huggingface")]
    assert human.returncode == 0, human.stderr
    assert "llama3.2:latest" in human.stdout
    rows = {line.split()[0]: line.split()[1:4] for line in human.stdout.splitlines()
            if line.strip()}
    assert rows["pulled"] == ["2.5", "MB", "lattice"]
    assert rows["llama3.2:3b"] == ["3.0", "kB", "ollama"]


def test_models_still_lists_the_files_when_the_provider_is_down(
        lattice_home: Path, user_home: Path) -> None:
    ollama_model(user_home / ".ollama" / "models", "qwen3:8b", gguf_bytes("q"))
    url = f"http://127.0.0.1:{free_port()}"
    write_provider_config(lattice_home, "ollama", url)
    human = run(lattice_home, user_home, "models")
    assert human.returncode == 1
    assert "qwen3:8b" in human.stdout and url in human.stderr
    failed = json.loads(run(lattice_home, user_home, "--json", "models").stdout)
    assert failed["ok"] is False and [f["name"] for f in failed["gguf"]] == ["qwen3:8b"]


def test_no_gguf_files_says_how_to_get_one(lattice_home: Path, user_home: Path) -> None:
    with run_ollama_server() as ollama:
        write_provider_config(lattice_home, "ollama", ollama.url)
        human = run(lattice_home, user_home, "models")
    assert human.returncode == 0
    assert "No GGUF model files found" in human.stdout and "models pull" in human.stdout


def test_pull_from_the_hub_shows_progress_verifies_and_is_then_listed(
        lattice_home: Path, user_home: Path) -> None:
    with run_file_server(files={HUB_PATH: MODEL}) as hub:
        done = run(lattice_home, user_home, "--json", "models", "pull",
                   "hf:HuggingFaceTB/SmolLM2-GGUF/smol-q8.gguf", LATTICE_HF_ENDPOINT=hub.url)
        requests = [r["path"] for r in hub.stats()["requests"]]
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    target = models_dir(lattice_home) / "smol-q8.gguf"
    assert result == {"path": str(target), "size": len(MODEL), "sha256": SHA,
                      "verified": True, "resumedFrom": 0, "downloaded": True}
    assert target.read_bytes() == MODEL
    assert requests == [HUB_PATH, f"/cdn/{SHA}"]  # the hub's redirect to its CDN
    progress = [line for line in done.stderr.splitlines() if line.startswith("smol-q8.gguf:")]
    assert len(progress) >= 5 and progress[-1].startswith("smol-q8.gguf: 100% (1.0 MB of")
    assert list(models_dir(lattice_home).iterdir()) == [target]
    listed = json.loads(run(lattice_home, user_home, "--json", "models").stdout)
    assert {"name": "smol-q8", "path": str(target), "size": len(MODEL),
            "source": "lattice"} in listed["gguf"]


def test_an_interrupted_pull_resumes_where_it_stopped(lattice_home: Path,
                                                      user_home: Path) -> None:
    with run_file_server(files={HUB_PATH: MODEL}, cut_after=400_000) as hub:
        source = ["models", "pull", "hf:HuggingFaceTB/SmolLM2-GGUF/smol-q8.gguf"]
        first = run(lattice_home, user_home, *source, LATTICE_HF_ENDPOINT=hub.url)
        part = models_dir(lattice_home) / "smol-q8.gguf.part"
        assert first.returncode == 1
        assert "interrupted after 400000 of 1000000 bytes" in first.stderr
        assert "run the same command again to resume" in first.stderr
        assert part.stat().st_size == 400_000
        assert not (models_dir(lattice_home) / "smol-q8.gguf").exists()

        second = run(lattice_home, user_home, "--json", *source, LATTICE_HF_ENDPOINT=hub.url)
        last = hub.last_request()
    assert second.returncode == 0, second.stderr
    assert last["headers"]["range"] == "bytes=400000-"
    assert json.loads(second.stdout)["resumedFrom"] == 400_000
    assert (models_dir(lattice_home) / "smol-q8.gguf").read_bytes() == MODEL
    assert not part.exists()


@pytest.mark.parametrize("how", ["option", "hub"])
def test_a_checksum_mismatch_leaves_nothing_behind(lattice_home: Path, user_home: Path,
                                                   how: str) -> None:
    wrong = "0" * 64
    with run_file_server(files={HUB_PATH: MODEL}) as hub:
        if how == "hub":
            hub.configure(hub_sha256=wrong)  # the hub names another file's digest
        extra = ["--sha256", wrong] if how == "option" else []
        done = run(lattice_home, user_home, "models", "pull",
                   "hf:HuggingFaceTB/SmolLM2-GGUF/smol-q8.gguf", *extra,
                   LATTICE_HF_ENDPOINT=hub.url)
    assert done.returncode == 1
    assert f"checksum mismatch for smol-q8.gguf: expected sha256 {wrong}, got {SHA}" \
        in done.stderr
    assert list(models_dir(lattice_home).iterdir()) == []


def test_a_url_naming_its_digest_is_verified_and_a_non_gguf_file_is_refused(
        lattice_home: Path, user_home: Path) -> None:
    blob = f"/v2/library/smol/blobs/sha256:{SHA}"
    with run_file_server(files={blob: MODEL, "/page.gguf": b"<html>login</html>"}) as server:
        done = run(lattice_home, user_home, "--json", "models", "pull", server.url + blob,
                   "--name", "smol.gguf")
        page = run(lattice_home, user_home, "models", "pull", server.url + "/page.gguf")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verified"] is True
    assert page.returncode == 1 and "is not a GGUF model" in page.stderr
    assert "no checksum known" in page.stderr
    assert sorted(p.name for p in models_dir(lattice_home).iterdir()) == ["smol.gguf"]


def test_pull_at_a_terminal_draws_a_progress_bar(lattice_home: Path, user_home: Path) -> None:
    with run_file_server(files={HUB_PATH: MODEL}) as hub:
        terminal = Terminal([CTL, "models", "pull", "hf:HuggingFaceTB/SmolLM2-GGUF/smol-q8.gguf"],
                            env_for(lattice_home, user_home, LATTICE_HF_ENDPOINT=hub.url,
                                    COLUMNS="120"))
        try:
            terminal.expect(b"1.0/1.0 MB")  # rich's DownloadColumn, complete
            terminal.expect(b"verified")
        finally:
            assert terminal.close() == 0
    assert b"\xe2\x94\x81" in terminal.screen  # the bar itself


@pytest.mark.parametrize(("spec", "url", "filename"), [
    ("hf:org/repo/model-Q4.gguf", "https://huggingface.co/org/repo/resolve/main/model-Q4.gguf",
     "model-Q4.gguf"),
    ("hf:org/repo/sub/dir/m.gguf", "https://huggingface.co/org/repo/resolve/main/sub/dir/m.gguf",
     "m.gguf"),
    ("https://example.test/x/blobs/sha256-" + "a" * 64, None, "sha256-" + "a" * 64 + ".gguf"),
])
def test_sources_map_to_urls_and_file_names(spec: str, url: str | None,
                                            filename: str, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    for variable in ("LATTICE_HF_ENDPOINT", "HF_ENDPOINT"):
        monkeypatch.delenv(variable, raising=False)
    source = parse_source(spec)
    assert source.url == (url or spec) and source.filename == filename
    if not url:
        assert source.sha256 == "a" * 64


@pytest.mark.parametrize(("spec", "sha256", "message"), [
    ("hf:org/model.gguf", None, "is not hf:ORG/REPO/FILE.gguf"),
    ("ftp://x/y.gguf", None, "neither an http(s) URL"),
    ("https://x.test/", None, "pass --name"),
    ("hf:o/r/m.gguf", "abc", "--sha256 must be 64 hex digits"),
])
def test_bad_sources_are_refused_saying_why(spec: str, sha256: str | None,
                                            message: str) -> None:
    with pytest.raises(DownloadError, match=re.escape(message)):
        parse_source(spec, sha256)

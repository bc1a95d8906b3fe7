"""GGUF discovery over fake Ollama / LM Studio / Hugging Face / Lattice trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from providers.gguf_catalog import (
    GGUFModel,
    ModelNotFoundError,
    default_hf_cache,
    default_ollama_dir,
    discover_models,
    resolve_model,
)
from tests.support.model_stores import (
    ModelStores,
    gguf_bytes,
    hf_cached_model,
    lmstudio_model,
    ollama_model,
)


@pytest.fixture
def stores(tmp_path: Path) -> ModelStores:
    return ModelStores.under(tmp_path)


def test_every_source_is_found_with_name_size_and_source(stores: ModelStores) -> None:
    (stores.lattice / "mine.gguf").parent.mkdir(parents=True)
    (stores.lattice / "mine.gguf").write_bytes(gguf_bytes("mine", 100))
    blob = ollama_model(stores.ollama, "llama3.2:3b", gguf_bytes("llama", 200))
    ns_blob = ollama_model(stores.ollama, "bob/tiny:q4", gguf_bytes("tiny", 50))
    hf_blob = ollama_model(stores.ollama, "bartowski/Qwen:Q4_K_M", gguf_bytes("hfq", 60),
                           registry="hf.co")
    lms = lmstudio_model(stores.lmstudio, "lmstudio-community", "Qwen-GGUF",
                         "Qwen-Q4_K_M.gguf", gguf_bytes("qwen", 300))
    link = hf_cached_model(stores.hf, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
                           "smollm2-135m-instruct-q8_0.gguf", gguf_bytes("smol", 400))

    models = discover_models(**stores.dirs())

    assert models == [
        GGUFModel("mine", stores.lattice / "mine.gguf", 100, "lattice"),
        GGUFModel("hf.co/bartowski/Qwen:Q4_K_M", hf_blob, 60, "ollama"),
        GGUFModel("bob/tiny:q4", ns_blob, 50, "ollama"),
        GGUFModel("llama3.2:3b", blob, 200, "ollama"),
        GGUFModel("Qwen-Q4_K_M", lms, 300, "lmstudio"),
        GGUFModel("smollm2-135m-instruct-q8_0", link, 400, "huggingface"),
    ]


def test_files_without_the_gguf_magic_are_not_models(stores: ModelStores) -> None:
    lmstudio_model(stores.lmstudio, "p", "r", "fake.gguf", b"<html>not a model</html>")
    lmstudio_model(stores.lmstudio, "p", "r", "real.gguf", gguf_bytes("real"))
    # Ollama's other layers (license, template) are blobs too; only the model layer counts.
    ollama_model(stores.ollama, "broken:latest", b"PK\x03\x04 a zip, not gguf")
    assert [m.name for m in discover_models(**stores.dirs())] == ["real"]


def test_unreadable_entries_are_skipped(stores: ModelStores) -> None:
    good = ollama_model(stores.ollama, "good:latest", gguf_bytes("good"))
    bad_manifest = stores.ollama / "manifests" / "registry.ollama.ai" / "library" / "bad" / "x"
    bad_manifest.parent.mkdir(parents=True)
    bad_manifest.write_text("{not json")
    gone = ollama_model(stores.ollama, "gone:latest", gguf_bytes("gone"))
    gone.unlink()  # manifest left pointing at a missing blob
    dangling = stores.lmstudio / "p" / "r" / "dangling.gguf"
    dangling.parent.mkdir(parents=True)
    dangling.symlink_to(stores.lmstudio / "nowhere.gguf")
    locked = lmstudio_model(stores.lmstudio, "p", "r", "locked.gguf", gguf_bytes("locked"))
    locked.chmod(0)
    try:
        models = discover_models(**stores.dirs())
    finally:
        locked.chmod(0o600)
    names = [m.name for m in models]
    assert "good:latest" in names and models[names.index("good:latest")].path == good
    assert "gone:latest" not in names and "dangling" not in names
    if os.geteuid() != 0:  # root reads any file
        assert "locked" not in names


def test_missing_directories_give_an_empty_list(tmp_path: Path) -> None:
    assert discover_models(**ModelStores.under(tmp_path / "none").dirs()) == []


def test_the_same_file_through_two_sources_is_listed_once(stores: ModelStores) -> None:
    link = hf_cached_model(stores.hf, "org/repo", "m.gguf", gguf_bytes("m"))
    second = hf_cached_model(stores.hf, "org/repo", "m.gguf", gguf_bytes("m"), revision="b" * 40)
    assert second != link
    stores.lattice.mkdir()
    (stores.lattice / "m.gguf").symlink_to(link)
    models = discover_models(**stores.dirs())
    assert [(m.name, m.source) for m in models] == [("m", "lattice")]


def test_split_models_are_one_model_of_all_parts_and_projectors_are_skipped(
        stores: ModelStores) -> None:
    for part in (1, 2):
        lmstudio_model(stores.lmstudio, "p", "big", f"Big-Q4-0000{part}-of-00002.gguf",
                       gguf_bytes(f"part{part}", 1000))
    lmstudio_model(stores.lmstudio, "p", "big", "mmproj-Big-f16.gguf", gguf_bytes("proj"))
    (model,) = discover_models(**stores.dirs())
    assert (model.name, model.size) == ("Big-Q4", 2000)
    assert model.path.name == "Big-Q4-00001-of-00002.gguf"


def test_resolve_by_ollama_name_latest_default_stem_and_path(stores: ModelStores,
                                                            tmp_path: Path) -> None:
    blob = ollama_model(stores.ollama, "qwen3:latest", gguf_bytes("q"))
    lms = lmstudio_model(stores.lmstudio, "p", "r", "Phi-4.gguf", gguf_bytes("phi"))
    assert resolve_model("qwen3", **stores.dirs()).path == blob
    assert resolve_model("qwen3:latest", **stores.dirs()).path == blob
    assert resolve_model("Phi-4", **stores.dirs()).path == lms
    assert resolve_model("Phi-4.gguf", **stores.dirs()).path == lms
    loose = tmp_path / "elsewhere" / "loose.gguf"
    loose.parent.mkdir()
    loose.write_bytes(gguf_bytes("loose", 77))
    assert resolve_model(str(loose), **stores.dirs()) == GGUFModel("loose", loose, 77, "path")


def test_resolve_unknown_lists_what_exists(stores: ModelStores, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no GGUF models were found"):
        resolve_model("llama3.2", **stores.dirs())
    ollama_model(stores.ollama, "qwen3:8b", gguf_bytes("q"))
    lmstudio_model(stores.lmstudio, "p", "r", "Phi-4.gguf", gguf_bytes("phi"))
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("llama3.2", **stores.dirs())
    assert str(info.value) == ("no GGUF model named 'llama3.2'; found: qwen3:8b (ollama), "
                               "Phi-4 (lmstudio)")
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(ModelNotFoundError, match="not a GGUF model file"):
        resolve_model(str(text), **stores.dirs())


def test_default_locations_follow_the_tools_environment_variables(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("OLLAMA_MODELS", "HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert default_ollama_dir() == tmp_path / ".ollama" / "models"
    assert default_hf_cache() == tmp_path / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert default_hf_cache() == tmp_path / "hfhome" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    assert default_hf_cache() == tmp_path / "hubcache"
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "om"))
    assert default_ollama_dir() == tmp_path / "om"
    ollama_model(tmp_path / "om", "x:1", gguf_bytes("x"))
    lmstudio_model(tmp_path / ".cache" / "lm-studio" / "models", "p", "r", "old.gguf",
                   gguf_bytes("old"))
    assert [(m.name, m.source) for m in discover_models()] == [("x:1", "ollama"),
                                                               ("old", "lmstudio")]

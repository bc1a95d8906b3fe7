"""GGUF model files already on this machine, so nobody downloads a model twice.

Four places are searched, in this order (a file reachable from two of them is listed
once, under the first):

* the Lattice models directory (``lattice-ctl models pull`` writes there); the caller
  passes it, as only the daemon's side knows the user data dir;
* Ollama's store (``OLLAMA_MODELS`` or ``~/.ollama/models``): each manifest under
  ``manifests/<registry>/<namespace>/<name>/<tag>`` names its model layer, a GGUF blob
  under ``blobs/sha256-<hex>``; the model is called as in Ollama, ``llama3.2:3b``;
* LM Studio's folder (``~/.lmstudio/models/<publisher>/<repo>/*.gguf``, and the older
  ``~/.cache/lm-studio/models``);
* the Hugging Face hub cache (``HF_HUB_CACHE``, ``HF_HOME/hub`` or
  ``~/.cache/huggingface/hub``): ``models--ORG--REPO/snapshots/<rev>/**/*.gguf``, which
  are symlinks into the repo's blobs.

A file counts only if it starts with the GGUF magic; nothing is ever loaded. Entries that
cannot be read (permissions, broken symlinks, bad manifests) are skipped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

GGUF_MAGIC = b"GGUF"
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
_OLLAMA_REGISTRY = "registry.ollama.ai"
# llama.cpp loads a split model from its first part; the others are not models alone.
_SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})$")

Source = Literal["lattice", "ollama", "lmstudio", "huggingface", "path"]


@dataclass(frozen=True)
class GGUFModel:
    name: str  # how users refer to it: Ollama "llama3.2:3b", else the file stem
    path: Path
    size: int  # bytes (all parts of a split model)
    source: Source


class ModelNotFoundError(LookupError):
    """No GGUF model by that name or path; the message lists the ones that exist."""


def is_gguf(path: Path) -> bool:
    """True if ``path`` is a readable file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def default_ollama_dir() -> Path:
    override = os.environ.get("OLLAMA_MODELS")
    return Path(override).expanduser() if override else Path.home() / ".ollama" / "models"


def default_lmstudio_dirs() -> list[Path]:
    return [Path.home() / ".lmstudio" / "models", Path.home() / ".cache" / "lm-studio" / "models"]


def default_hf_cache() -> Path:
    """Where huggingface_hub keeps downloads, by its own rules."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "huggingface" / "hub"


def discover_models(*, lattice_models_dir: Path | None = None,
                    ollama_dir: Path | None = None,
                    lmstudio_dir: Path | None = None,
                    hf_cache: Path | None = None) -> list[GGUFModel]:
    """Every GGUF model found, by source then name. A ``None`` directory means the
    source's usual location (the Lattice directory is searched only when given)."""
    lmstudio_dirs = [lmstudio_dir] if lmstudio_dir is not None else default_lmstudio_dirs()
    found: list[GGUFModel] = []
    if lattice_models_dir is not None:
        found += _files(_glob(lattice_models_dir, "*.gguf"), "lattice")
    found += _ollama_models(ollama_dir if ollama_dir is not None else default_ollama_dir())
    found += _files((p for d in lmstudio_dirs for p in _glob(d, "*/*/*.gguf")), "lmstudio")
    hub = hf_cache if hf_cache is not None else default_hf_cache()
    found += _files(_glob(hub, "models--*/snapshots/*/**/*.gguf"), "huggingface")
    seen: set[Path] = set()
    unique = []
    for model in found:
        real = model.path.resolve()
        if real not in seen:
            seen.add(real)
            unique.append(model)
    return unique


def resolve_model(name_or_path: str, *, lattice_models_dir: Path | None = None,
                  ollama_dir: Path | None = None, lmstudio_dir: Path | None = None,
                  hf_cache: Path | None = None) -> GGUFModel:
    """The model a user means: a GGUF file path, or a discovered model's name (an Ollama
    name without a tag means ``:latest``; ``name.gguf`` matches the file stem ``name``).

    Raises ModelNotFoundError listing what exists.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        if not is_gguf(candidate):
            raise ModelNotFoundError(f"{candidate} is not a GGUF model file (it does not "
                                     "start with the GGUF magic bytes)")
        return GGUFModel(_stem(candidate), candidate, _size(candidate), "path")
    models = discover_models(lattice_models_dir=lattice_models_dir, ollama_dir=ollama_dir,
                             lmstudio_dir=lmstudio_dir, hf_cache=hf_cache)
    wanted = {name_or_path, name_or_path.removesuffix(".gguf")}
    if ":" not in name_or_path.rpartition("/")[2]:
        wanted.add(name_or_path + ":latest")
    for model in models:
        if model.name in wanted:
            return model
    if models:
        listing = ", ".join(f"{m.name} ({m.source})" for m in models)
        raise ModelNotFoundError(f"no GGUF model named {name_or_path!r}; found: {listing}")
    raise ModelNotFoundError(f"no GGUF model named {name_or_path!r}, and no GGUF models were "
                             "found on this machine (Lattice models directory, Ollama, "
                             "LM Studio, Hugging Face cache)")


# ----------------------------------------------------------------------------- sources


def _glob(directory: Path, pattern: str) -> list[Path]:
    try:
        return sorted(directory.glob(pattern)) if directory.is_dir() else []
    except OSError:
        return []


def _files(paths: Iterable[Path], source: Source) -> list[GGUFModel]:
    models = []
    for path in paths:
        split = _SPLIT_PART.search(path.stem)
        if split and split.group(1) != "00001":
            continue  # counted with its first part
        if path.name.startswith("mmproj") or not is_gguf(path):
            continue  # a vision projector is GGUF but not a model of its own
        size = _split_size(path, split) if split else _size(path)
        if size >= 0:
            models.append(GGUFModel(_stem(path), path, size, source))
    return models


def _ollama_models(root: Path) -> list[GGUFModel]:
    models = []
    for manifest in _glob(root / "manifests", "*/*/*/*"):
        registry, namespace, name, tag = manifest.relative_to(root / "manifests").parts
        blob = _ollama_model_blob(root, manifest)
        if blob is None or not is_gguf(blob):
            continue
        size = _size(blob)
        if size < 0:
            continue
        if registry == _OLLAMA_REGISTRY:
            prefix = "" if namespace == "library" else f"{namespace}/"
        else:
            prefix = f"{registry}/{namespace}/"
        models.append(GGUFModel(f"{prefix}{name}:{tag}", blob, size, "ollama"))
    return models


def _ollama_model_blob(root: Path, manifest: Path) -> Path | None:
    try:
        layers = json.loads(manifest.read_bytes()).get("layers") or []
        for layer in layers:
            if layer.get("mediaType") == OLLAMA_MODEL_LAYER:
                algorithm, _, digest = str(layer["digest"]).partition(":")
                if algorithm == "sha256" and re.fullmatch(r"[0-9a-f]{64}", digest):
                    return root / "blobs" / f"sha256-{digest}"
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass  # unreadable or not a manifest we know: skipped
    return None


def _stem(path: Path) -> str:
    return _SPLIT_PART.sub("", path.stem)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _split_size(path: Path, split: re.Match[str]) -> int:
    base = path.stem[:split.start()]
    parts = [path.with_name(f"{base}-{i:05d}-of-{split.group(2)}.gguf")
             for i in range(1, int(split.group(2)) + 1)]
    sizes = [_size(part) for part in parts]
    return -1 if min(sizes) < 0 else sum(sizes)

"""Fake model stores on disk (Ollama, LM Studio, Hugging Face cache) laid out as the real
tools lay them out, holding tiny GGUF files (or a real one, copied or linked)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from providers.gguf_catalog import GGUF_MAGIC, OLLAMA_MODEL_LAYER


def gguf_bytes(label: str, size: int = 64) -> bytes:
    """A file that starts like a GGUF model (magic + version 3); ``label`` makes it unique."""
    head = GGUF_MAGIC + (3).to_bytes(4, "little") + label.encode()
    return head + b"\0" * max(0, size - len(head))


def _place(path: Path, content: bytes | Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, Path):
        shutil.copyfile(content, path)
    else:
        path.write_bytes(content)
    return path


def ollama_model(root: Path, name: str, content: bytes | Path, *,
                 registry: str = "registry.ollama.ai") -> Path:
    """Store a model as Ollama does: a ``sha256-<hex>`` blob plus a manifest naming it.

    ``name`` is ``model:tag`` (library) or ``namespace/model:tag``. Returns the blob.
    """
    data = content.read_bytes() if isinstance(content, Path) else content
    digest = hashlib.sha256(data).hexdigest()
    blob = _place(root / "blobs" / f"sha256-{digest}", data)
    repo, _, tag = name.partition(":")
    namespace, _, model = repo.rpartition("/")
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": "sha256:" + "0" * 64, "size": 2},
                "layers": [{"mediaType": "application/vnd.ollama.image.license",
                            "digest": "sha256:" + "0" * 64, "size": 2},
                           {"mediaType": OLLAMA_MODEL_LAYER, "digest": f"sha256:{digest}",
                            "size": len(data)}]}
    _place(root / "manifests" / registry / (namespace or "library") / model / (tag or "latest"),
           json.dumps(manifest).encode())
    return blob


def lmstudio_model(root: Path, publisher: str, repo: str, filename: str,
                   content: bytes | Path) -> Path:
    return _place(root / publisher / repo / filename, content)


def hf_cached_model(hub: Path, repo_id: str, filename: str, content: bytes | Path,
                    revision: str = "a" * 40) -> Path:
    """Store a file as huggingface_hub does: the blob by hash, a snapshot symlink to it."""
    data = content.read_bytes() if isinstance(content, Path) else content
    repo_dir = hub / ("models--" + repo_id.replace("/", "--"))
    blob = _place(repo_dir / "blobs" / hashlib.sha256(data).hexdigest(), data)
    link = repo_dir / "snapshots" / revision / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return link


@dataclass(frozen=True)
class ModelStores:
    """One directory per source, all under a test's temporary directory."""

    lattice: Path
    ollama: Path
    lmstudio: Path
    hf: Path

    @classmethod
    def under(cls, base: Path) -> ModelStores:
        return cls(base / "lattice-models", base / "ollama", base / "lmstudio", base / "hub")

    def dirs(self) -> dict[str, Path]:
        """Keyword arguments for discover_models / resolve_model."""
        return {"lattice_models_dir": self.lattice, "ollama_dir": self.ollama,
                "lmstudio_dir": self.lmstudio, "hf_cache": self.hf}

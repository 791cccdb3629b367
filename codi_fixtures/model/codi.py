"""The CODI module (backbone + projection) and its loader.

``CodiModel.state_dict()`` *is* the published checkpoint layout: the backbone
lives under ``codi`` (a peft model when LoRA is used) and the projection under
``prj``. Loading builds the module from the base config, then accounts for
every key in the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from codi_fixtures.config import BUNDLED_CHECKPOINT, ModelConfig
from codi_fixtures.errors import CheckpointError
from codi_fixtures.model.architecture import decoder_layers, unwrap_peft
from codi_fixtures.model.attention import use_grouped_eager
from codi_fixtures.model.checkpoint import (
    CodiSpec,
    KeyReport,
    account_keys,
    find_weights_file,
    read_shapes,
    read_spec,
    read_state_dict,
)
from codi_fixtures.model.devices import resolve_device, resolve_dtype

__all__ = [
    "CodiModel",
    "build_projection",
    "load_codi",
    "probe_layout",
    "wrap_lora",
]

log = logging.getLogger(__name__)

N_SPECIAL = 3  # pad, bot, eot appended to the base vocabulary


def build_projection(dim: int, prj_dim: int) -> nn.Sequential:
    """CODI's projection: Dropout(0) - Linear - GELU - Linear - LayerNorm (keys prj.1/3/ln)."""
    prj = nn.Sequential(
        nn.Dropout(0.0), nn.Linear(dim, prj_dim), nn.GELU(), nn.Linear(prj_dim, dim)
    )
    prj.add_module("ln", nn.LayerNorm(dim))
    return prj


class CodiModel(nn.Module):
    """A CODI model: a causal LM (``codi``) plus the latent projection (``prj``).

    Read-only during analysis: fixtures share one instance, so never mutate it. An eager
    grouped-query backbone is switched to :mod:`codi_fixtures.model.attention` (the same
    attention without a copy of the keys/values per query head).
    """

    codi: Any  # a transformers causal LM, possibly peft-wrapped (dynamic attributes)
    prj: nn.Sequential
    tokenizer: Any

    def __init__(self, backbone: nn.Module, prj: nn.Sequential, spec: CodiSpec, tokenizer: object):
        super().__init__()
        use_grouped_eager(unwrap_peft(backbone))
        self.codi = backbone
        self.prj = prj
        self.spec = spec
        self.tokenizer = tokenizer
        rows = self.embeddings.weight.shape[0]
        self.base_vocab_size = rows - N_SPECIAL
        self.fingerprint = ""

    # --- special tokens -------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        """CODI pad id (= base vocabulary size V)."""
        return self.base_vocab_size

    @property
    def bot_id(self) -> int:
        """``<bot>``: begin of thoughts (V+1)."""
        return self.base_vocab_size + 1

    @property
    def eot_id(self) -> int:
        """``<eot>``: end of thoughts (V+2)."""
        return self.base_vocab_size + 2

    @property
    def eos_id(self) -> int:
        """The tokenizer's end-of-text id."""
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is None:
            raise CheckpointError("the tokenizer defines no eos token; CODI answers end with one")
        return int(eos)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Token ids that end an answer."""
        return tuple(sorted({self.eos_id, *self.spec.stop_token_ids}))

    # --- structure ------------------------------------------------------------------------
    @property
    def embeddings(self) -> nn.Embedding:
        """The token embedding (V+3 rows)."""
        emb = self.codi.get_input_embeddings()
        assert isinstance(emb, nn.Embedding)
        return emb

    @property
    def layers(self) -> nn.ModuleList:
        """Decoder blocks, in order."""
        return decoder_layers(self.codi)

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        """Residual width d."""
        return int(self.embeddings.weight.shape[1])

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return self.embeddings.weight.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids: (..., ) -> (..., d)."""
        return self.embeddings(ids)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden state -> next thought's input embedding."""
        return self.prj(hidden)


def _resolve_base(cfg: ModelConfig, ckpt_dir: Path) -> str:
    if cfg.base is not None:
        return cfg.base
    if (ckpt_dir / "config.json").exists():
        return str(ckpt_dir)
    raise CheckpointError(
        f"{ckpt_dir} has no config.json, so the base model is unknown; pass --codi-base "
        "(a local directory or a cached Hugging Face name such as meta-llama/Llama-3.2-1B "
        "or gpt2)"
    )


def _load_base_config(base: str, allow_download: bool) -> object:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base, local_files_only=not allow_download)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read the base model config from {base!r}: not a local directory with "
            "config.json and not in the local Hugging Face cache. Pass --codi-base DIR, or "
            "--codi-allow-download to fetch it."
        ) from err


def probe_layout(cfg: ModelConfig) -> None:
    """The loader's key and shape checks, on a module built without memory (meta device).

    So a checkpoint that does not fit its base (missing keys, a wrong ``prj_dim`` or
    vocabulary) is a :class:`CheckpointError` before any test runs, not a failed study.
    """
    ckpt_dir = Path(cfg.ckpt) if cfg.ckpt is not None else BUNDLED_CHECKPOINT
    weights = find_weights_file(ckpt_dir)
    found = read_shapes(weights)  # also the readability check: a CheckpointError if not
    with torch.device("meta"):
        module, _, base_config = _build_module(cfg, ckpt_dir)
    _check_layout(module, found, weights, base_config)


def _build_module(cfg: ModelConfig, ckpt_dir: Path) -> tuple[CodiModel, str, Any]:
    """The CODI module its base and ``codi.json`` describe, the base and its config.

    No weights are loaded (build it under ``torch.device("meta")`` to allocate nothing).
    """
    base = _resolve_base(cfg, ckpt_dir)
    base_config = _load_base_config(base, cfg.allow_download)
    spec = read_spec(ckpt_dir, str(getattr(base_config, "model_type", "")))
    tokenizer = _load_tokenizer(base, cfg.allow_download)
    backbone = _build_backbone(base_config, spec)
    prj = build_projection(backbone.config.hidden_size, spec.prj_dim)
    return CodiModel(backbone, prj, spec, tokenizer), base, base_config


def _check_layout(
    module: CodiModel, found: dict[str, Any], weights: Path, base_config: Any
) -> dict[str, torch.Tensor]:
    """Raise :class:`CheckpointError` unless ``found``'s keys and shapes fit ``module``.

    Returns the module's expected state dict (a tied ``lm_head`` may be absent from the file).
    """
    _check_shapes(module, found, module.spec)
    expected = module.state_dict()
    tied = bool(getattr(base_config, "tie_word_embeddings", False))
    report = account_keys(
        expected, found, [k for k in expected if tied and k.endswith("lm_head.weight")]
    )
    if not report.ok:
        raise CheckpointError(_key_message(weights, report, module.spec))
    return expected


def _load_tokenizer(base: str, allow_download: bool) -> object:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base, local_files_only=not allow_download)
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"no tokenizer found for base {base!r} (expected tokenizer.json or tokenizer "
            "files next to config.json); pass --codi-base pointing at the base model directory"
        ) from err
    tok.padding_side = "left"
    return tok


def _build_backbone(base_config: Any, spec: CodiSpec) -> Any:
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = base_config.__class__.from_dict(base_config.to_dict())
    config.vocab_size = base_config.vocab_size + N_SPECIAL
    with no_init_weights():
        backbone = AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, attn_implementation="eager"
        )
    if spec.lora_r:
        backbone = wrap_lora(backbone, spec)
    return backbone


def wrap_lora(backbone: nn.Module, spec: CodiSpec) -> Any:
    """Wrap a causal LM in peft LoRA as the published CODI models are (dropout off)."""
    from peft import LoraConfig, get_peft_model

    model_type = getattr(getattr(backbone, "config", None), "model_type", "")
    lora = LoraConfig(
        r=int(spec.lora_r or 0),
        lora_alpha=int(spec.lora_alpha or spec.lora_r or 0),
        lora_dropout=0.0,
        target_modules=list(spec.lora_targets),
        fan_in_fan_out=model_type == "gpt2",  # GPT-2 Conv1D stores weights [in, out]
        init_lora_weights=True,
    )
    with warnings.catch_warnings():
        # peft probes a transformers attribute that is deprecated in v5.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return get_peft_model(backbone, lora)


def _check_shapes(module: CodiModel, found: dict[str, torch.Tensor], spec: CodiSpec) -> None:
    expected = module.state_dict()
    emb_key = next(k for k in expected if k.endswith(("embed_tokens.weight", "wte.weight")))
    if emb_key in found and found[emb_key].shape[0] != expected[emb_key].shape[0]:
        rows = found[emb_key].shape[0]
        raise CheckpointError(
            f"vocabulary size mismatch: the checkpoint embedding has {rows} rows, but the base "
            f"vocabulary is {module.base_vocab_size} + 3 CODI tokens = "
            f"{expected[emb_key].shape[0]}. "
            "Is --codi-base the model this checkpoint was trained from?"
        )
    if "prj.1.weight" in found and tuple(found["prj.1.weight"].shape) != tuple(
        expected["prj.1.weight"].shape
    ):
        got = tuple(found["prj.1.weight"].shape)
        raise CheckpointError(
            f"projection shape mismatch: prj.1.weight is {got} in the file, expected "
            f"(prj_dim={spec.prj_dim}, d={module.hidden_size}); set prj_dim in codi.json"
        )


def _numerics(
    cfg: ModelConfig,
    base: str,
    base_config: Any,
    tokenizer: Any,
    dtype: torch.dtype,
    device: Any,
    attention: str,
) -> dict[str, object]:
    """Everything besides the weights that changes a run's numbers (part of the cache key)."""
    import transformers

    base_path = Path(base)
    return {
        "dtype": str(dtype),
        "device_type": torch.device(device).type,
        "base": str(base_path.resolve()) if base_path.exists() else base,
        "base_config": hashlib.sha256(base_config.to_json_string().encode()).hexdigest()[:16],
        "tokenizer": [
            type(tokenizer).__name__,
            len(tokenizer),
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
        ],
        "merge_lora": cfg.merge_lora,
        "attention": attention,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _fingerprint(weights: Path, spec: CodiSpec, numerics: dict[str, object]) -> str:
    """Cheap, stable content hash: whole file when small, sampled blocks when large.

    ``numerics`` (dtype, device type, base and tokenizer, LoRA merging, attention
    implementation, library versions) is hashed too, so a run that would compute other
    numbers never reuses a cached study.
    """
    digest = hashlib.sha256(spec.to_json().encode())
    digest.update(json.dumps(numerics, sort_keys=True, default=str).encode())
    size = weights.stat().st_size
    digest.update(str(size).encode())
    block = 1 << 20
    with weights.open("rb") as handle:
        if size <= 64 * block:
            digest.update(handle.read())
        else:
            for offset in (0, size // 2, size - block):
                handle.seek(offset)
                digest.update(handle.read(block))
    return digest.hexdigest()[:16]


def load_codi(cfg: ModelConfig | None = None) -> CodiModel:
    """Load a CODI checkpoint strictly (published layout), ready for inference."""
    cfg = cfg or ModelConfig()
    ckpt_dir = Path(cfg.ckpt) if cfg.ckpt is not None else BUNDLED_CHECKPOINT
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    weights = find_weights_file(ckpt_dir)
    module, base, base_config = _build_module(cfg, ckpt_dir)
    spec, tokenizer = module.spec, module.tokenizer
    found = read_state_dict(weights)
    expected = _check_layout(module, found, weights, base_config)
    tied = bool(getattr(base_config, "tie_word_embeddings", False))
    module.load_state_dict({k: v for k, v in found.items() if k in expected}, strict=False)
    if tied:
        module.codi.tie_weights()
    if spec.lora_r and cfg.merge_lora:
        module.codi = module.codi.merge_and_unload()
    module.fingerprint = _fingerprint(
        weights,
        spec,
        _numerics(
            cfg,
            base,
            base_config,
            tokenizer,
            dtype,
            device,
            module.codi.config._attn_implementation,
        ),
    )
    module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    log.info("loaded CODI %s (%s, %s on %s)", ckpt_dir, base, dtype, device)
    return module


def _key_message(weights: Path, report: KeyReport, spec: CodiSpec) -> str:
    def head(keys: tuple[str, ...]) -> str:
        shown = "\n    ".join(keys[:12])
        more = f"\n    ... and {len(keys) - 12} more" if len(keys) > 12 else ""
        return shown + more

    parts = [f"{weights} does not match the CODI module built from the base model:"]
    for label, keys in (
        ("missing keys", report.missing),
        ("unexpected keys", report.unexpected),
        ("shape mismatches", report.shape_mismatches),
    ):
        if keys:
            parts.append(f"  {label} ({len(keys)}):\n    {head(keys)}")
    lora = f"LoRA r={spec.lora_r} on {list(spec.lora_targets)}" if spec.lora_r else "no LoRA"
    parts.append(
        f"  expected layout: codi.base_model.model.<HF key> with {lora} (or codi.<HF key> "
        "without LoRA) and prj.1/prj.3/prj.ln. Check --codi-base (architecture) and codi.json."
    )
    return "\n".join(parts)

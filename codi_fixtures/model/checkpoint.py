"""Reading and writing CODI checkpoints in the published (zhenyi4/codi) layout.

The file holds the state dict of the whole CODI module:

- ``codi.base_model.model.<HF key>`` for a LoRA-wrapped backbone, with
  ``.base_layer.`` inside the adapted linears and ``.lora_A/B.default.weight``;
  ``codi.<HF key>`` for a backbone trained without LoRA;
- ``prj.1`` Linear(d, prj_dim), GELU, ``prj.3`` Linear(prj_dim, d), ``prj.ln`` LayerNorm(d);
- an embedding with ``V + 3`` rows (pad, bot, eot appended).

Only safetensors or ``torch.load(weights_only=True)`` are used: no pickled code runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from codi_fixtures.atomic import atomic_write_bytes, atomic_write_text
from codi_fixtures.errors import CheckpointError

__all__ = [
    "SPEC_FILE",
    "WEIGHT_FILES",
    "CodiSpec",
    "KeyReport",
    "account_keys",
    "find_weights_file",
    "probe_weights",
    "read_shapes",
    "read_spec",
    "read_state_dict",
    "write_checkpoint",
]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SPEC_FILE = "codi.json"

# Buffers older transformers saved in state dicts; harmless when present, never required.
_IGNORABLE_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")

_LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_GPT2_LORA_TARGETS = ("c_attn", "c_proj", "c_fc")


@dataclass(frozen=True)
class CodiSpec:
    """What a CODI checkpoint's weights alone do not say (stored as ``codi.json``)."""

    n_thoughts: int = 6
    """Number of continuous thoughts fed at inference (``inf_latent_iterations``)."""
    prj_dim: int = 2048
    """Hidden width of the projection MLP."""
    lora_r: int | None = None
    """LoRA rank, or None for a backbone trained without LoRA."""
    lora_alpha: int | None = None
    """LoRA alpha (scaling = alpha / r)."""
    lora_targets: tuple[str, ...] = ()
    """Module names LoRA adapts."""
    eos_before_bot: bool = False
    """True when an eos token separates question and ``<bot>`` (``remove_eos=False``)."""
    answer_prompt: str = "The answer is:"
    """Text the model writes before the answer number."""
    stop_token_ids: tuple[int, ...] = ()
    """Extra token ids that end an answer, besides the tokenizer's eos."""
    task: str | None = None
    """Problem source the model was trained on (``"organism"`` for the bundled model)."""
    extra: dict[str, object] = field(default_factory=dict)
    """Free-form provenance (training recipe, accuracy)."""

    @classmethod
    def published_default(cls, model_type: str) -> CodiSpec:
        """Built-in spec of the published LLaMA-3.2-1B / GPT-2 CODI checkpoints."""
        if model_type == "llama":
            # Base and Instruct LLaMA-3 tokenizers end text with different ids.
            return cls(
                prj_dim=2048,
                lora_r=128,
                lora_alpha=32,
                lora_targets=_LLAMA_LORA_TARGETS,
                stop_token_ids=(128001, 128009),
            )
        if model_type == "gpt2":
            return cls(prj_dim=768, lora_r=128, lora_alpha=32, lora_targets=_GPT2_LORA_TARGETS)
        raise CheckpointError(
            f"no built-in CODI settings for model type {model_type!r}; add a {SPEC_FILE} "
            "to the checkpoint directory (see README, 'Checkpoint format')"
        )

    def to_json(self) -> str:
        """Serialise to the ``codi.json`` text."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], source: str) -> CodiSpec:
        """Build from a parsed ``codi.json``; unknown fields are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{source}: unknown field(s) {unknown}; allowed: {sorted(known)}")
        kwargs: dict[str, Any] = dict(data)
        for name in ("lora_targets", "stop_token_ids"):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)


def read_spec(ckpt_dir: Path, model_type: str) -> CodiSpec:
    """``codi.json`` from the checkpoint directory, else the published defaults."""
    path = ckpt_dir / SPEC_FILE
    if not path.exists():
        return CodiSpec.published_default(model_type)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid JSON ({err}); fix or delete the file") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return CodiSpec.from_mapping(data, str(path))


def find_weights_file(ckpt_dir: Path) -> Path:
    """The weights file in a checkpoint directory: safetensors first, then ``.bin``."""
    if not ckpt_dir.exists():
        raise CheckpointError(
            f"checkpoint directory {ckpt_dir} does not exist; pass an existing directory "
            "with --codi-ckpt (or omit it to use the bundled model)"
        )
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"--codi-ckpt must be a directory, got the file {ckpt_dir}")
    for name in WEIGHT_FILES:
        candidate = ckpt_dir / name
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in ckpt_dir.iterdir())[:10]
    raise CheckpointError(
        f"{ckpt_dir} holds neither {' nor '.join(WEIGHT_FILES)} (found: {present or 'nothing'}); "
        "point --codi-ckpt at the directory that contains the CODI weights"
    )


def probe_weights(path: Path) -> None:
    """Check cheaply that a weights file can be read (safetensors header; weights-only pickle)."""
    read_shapes(path)


def read_shapes(path: Path) -> dict[str, Any]:
    """Key -> an object with the tensor's ``shape``, without reading the weights themselves.

    safetensors: the header only; a weights-only pickle: memory-mapped, so only its index is
    read. An unreadable file is a :class:`CheckpointError`.
    """
    if path.suffix != ".safetensors":
        return dict(read_state_dict(path))
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {
                k: SimpleNamespace(shape=torch.Size(handle.get_slice(k).get_shape()))
                for k in handle.keys()
            }
    except Exception as err:
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    text = str(err)
    if "Weights only load failed" in text:  # torch's text advises weights_only=False: never
        what = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), "")
        return CheckpointError(
            f"cannot read weights from {path}: the pickle holds more than tensors "
            f"({what or 'refused by weights_only loading'}). It is never loaded with "
            "weights_only=False, which can run the code it holds; re-export the weights as "
            "model.safetensors from a trusted copy."
        )
    return CheckpointError(
        f"cannot read weights from {path}: {type(err).__name__}: {str(err)[:300]}. "
        "The file is truncated, corrupted, or a pickle that holds more than tensors "
        "(refused: only weights_only loading is allowed). Re-download or re-export it."
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load tensors safely: safetensors, or a weights-only torch pickle."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # corrupted, truncated or code-carrying files all land here
        raise _unreadable(path, err) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    return state


@dataclass(frozen=True)
class KeyReport:
    """Result of comparing a file's keys with the module's keys."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatches: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when nothing is missing, unexpected or mis-shaped."""
        return not (self.missing or self.unexpected or self.shape_mismatches)


def account_keys(
    expected: Mapping[str, torch.Tensor],
    found: Mapping[str, torch.Tensor],
    optional: Iterable[str] = (),
) -> KeyReport:
    """Strict key accounting; ``optional`` keys (a tied lm_head) may be absent."""
    optional_set = set(optional)
    missing = sorted(k for k in expected if k not in found and k not in optional_set)
    unexpected = sorted(
        k for k in found if k not in expected and not k.endswith(_IGNORABLE_SUFFIXES)
    )
    shapes = sorted(
        f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    )
    return KeyReport(tuple(missing), tuple(unexpected), tuple(shapes))


def write_checkpoint(ckpt_dir: Path, state: Mapping[str, torch.Tensor], spec: CodiSpec) -> Path:
    """Write ``model.safetensors`` and ``codi.json`` atomically (temp file + rename)."""
    from safetensors.torch import save

    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    # A tied lm_head shares the embedding's storage; safetensors refuses shared tensors,
    # and the loader accepts a missing tied lm_head.
    for key in sorted(state, key=lambda k: k.endswith("lm_head.weight")):
        value = state[key]
        if key.endswith("lm_head.weight") and value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        tensors[key] = value.detach().contiguous().cpu()
    target = ckpt_dir / WEIGHT_FILES[0]
    atomic_write_bytes(target, save(tensors, metadata={"format": "pt"}))
    atomic_write_text(ckpt_dir / SPEC_FILE, spec.to_json())
    return target

"""A real-size GPT-2 CODI replica (benchmarks/real_size.py) loads strictly and runs.

The replica has the published zen-E/CODI-gpt2 layout and shapes with random weights and a
stand-in tokenizer of the real vocabulary size (the real weights and tokenizer are not
available offline).
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from codi_fixtures.config import BUNDLED_CHECKPOINT, ModelConfig
from codi_fixtures.engine import build_prompt, run_latent
from codi_fixtures.model.architecture import unwrap_peft
from codi_fixtures.model.codi import load_codi

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_size.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("real_size", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("real_size", module)
    spec.loader.exec_module(module)
    return module


def _header(path: Path) -> dict[str, dict[str, object]]:
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, dict[str, object]] = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return header


@pytest.mark.slow
def test_gpt2_replica_loads_strictly_and_runs(tmp_path: Path) -> None:
    """Published keys and shapes, strict load via load_codi (LoRA unmerged), finite run."""
    real_size = _script()
    summary = real_size.build(
        "gpt2", tmp_path, dtype="bfloat16", corpus=BUNDLED_CHECKPOINT / "eval.jsonl"
    )
    keys = _header(Path(summary["weights_file"]))
    prefix = "codi.base_model.model.transformer."
    assert keys[prefix + "wte.weight"]["shape"] == [50257 + 3, 768]
    assert keys[prefix + "h.11.attn.c_attn.base_layer.weight"]["shape"] == [768, 2304]  # Conv1D
    assert keys[prefix + "h.0.mlp.c_fc.lora_A.default.weight"]["shape"] == [128, 768]
    assert keys[prefix + "h.0.mlp.c_proj.lora_B.default.weight"]["shape"] == [768, 128]
    assert keys["prj.1.weight"]["shape"] == [768, 768] and "prj.ln.bias" in keys
    assert not any(k.endswith("lm_head.weight") for k in keys)  # tied: left out
    assert not (tmp_path / "ckpt" / "codi.json").exists()  # the published defaults apply
    # 124,439,808 (GPT-2) + 3 rows + projection + LoRA r=128 on c_attn, c_proj, c_fc
    assert summary["parameters"] == 124_439_808 + 3 * 768 + 1_182_720 + 12 * 128 * 12_288

    # Strict accounting happens inside load_codi: any missing / unexpected / mis-shaped key
    # raises. Unmerged, so the LoRA modules stay visible.
    model = load_codi(
        ModelConfig(
            ckpt=tmp_path / "ckpt",
            base=str(tmp_path / "base"),
            device="cpu",
            dtype="float32",
            merge_lora=False,
        )
    )
    assert model.embeddings.weight.shape == (50260, 768)
    assert model.n_layers == 12 and model.spec.lora_r == 128 and model.spec.prj_dim == 768
    assert (model.pad_id, model.bot_id, model.eot_id, model.eos_id) == (50257, 50258, 50259, 50256)
    lora_a = model.layers[0].attn.c_attn.lora_A["default"].weight
    assert lora_a.shape == (128, 768)
    assert model.layers[0].attn.c_attn.scaling["default"] == pytest.approx(32 / 128)
    head = unwrap_peft(model.codi).get_output_embeddings()
    assert head.weight.data_ptr() == model.embeddings.weight.data_ptr()
    assert float(model.embeddings.weight[:10].abs().sum()) > 0  # the file's weights landed

    question = "Tom has 3 apples and buys 4 more. How many apples does Tom have?"
    run = run_latent(model, build_prompt(model, [question]), attention_layers=[6])
    assert run.thoughts.shape == (1, 6, 768)
    assert run.attentions is not None and run.attentions.shape == (1, 1, 12, 6)
    assert torch.isfinite(run.thoughts).all() and torch.isfinite(run.first_logits[:, :50257]).all()
    assert torch.isfinite(run.attentions).all() and not bool(run.nonfinite.any())
    assert len(run.answer_ids[0]) >= 1

"""The CODI loader: published key layout, faithful round trips, strict key accounting.

Also pins the transformers-5 behaviour the loader and engine rely on.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from codi_fixtures.config import ModelConfig
from codi_fixtures.engine import build_prompt, encode_prompt, forward_step
from codi_fixtures.errors import CheckpointError
from codi_fixtures.model.architecture import hidden_state_index, unwrap_peft
from codi_fixtures.model.attention import GROUPED_EAGER
from codi_fixtures.model.checkpoint import SPEC_FILE, WEIGHT_FILES
from codi_fixtures.model.codi import N_SPECIAL, CodiModel, load_codi
from codi_fixtures.model.hooks import count_forward_hooks
from codi_fixtures.testing import save_tiny_checkpoint, tiny_codi

PROMPT = "Tom has 3 apples. Then Tom gets 4 more. How many apples does Tom have?"
SAFETENSORS, BIN = WEIGHT_FILES
MARKER = "pwned.txt"


def _probability_attention(model: CodiModel) -> str:
    """The attention a loaded model must run: eager, or grouped eager for a GQA backbone."""
    config = unwrap_peft(model.codi).config
    heads = config.num_attention_heads
    grouped = (getattr(config, "num_key_value_heads", None) or heads) < heads
    return GROUPED_EAGER if grouped else "eager"


def _load(directory: Path, **kwargs: object) -> CodiModel:
    return load_codi(ModelConfig(ckpt=directory, device="cpu", dtype="float32", **kwargs))


def _logits(model: CodiModel, text: str = PROMPT) -> torch.Tensor:
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model.codi(input_ids=ids).logits


def _source(request: pytest.FixtureRequest, arch: str, lora: bool) -> CodiModel:
    return request.getfixturevalue(f"tiny_{arch}") if lora else tiny_codi(arch, lora=False)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_weights(directory: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    path = directory / SAFETENSORS
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def _edit_spec(directory: Path, **changes: object) -> None:
    path = directory / SPEC_FILE
    spec = json.loads(path.read_text())
    spec.update(changes)
    path.write_text(json.dumps(spec))


def _embedding_key(keys: object) -> str:
    return next(k for k in keys if k.endswith(("embed_tokens.weight", "wte.weight")))  # type: ignore[attr-defined]


# --- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("merge_lora", [True, False], ids=["merged", "unmerged"])
@pytest.mark.parametrize(
    ("arch", "lora"),
    [("llama", True), ("gpt2", True), ("llama", False), ("gpt2", False)],
    ids=["llama-lora", "gpt2-lora", "llama-full", "gpt2-full"],
)
def test_save_load_reproduces_logits(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    arch: str,
    lora: bool,
    merge_lora: bool,
    fmt: str,
) -> None:
    """A saved tiny CODI loads back to the same function (LoRA active, unmerged source)."""
    source = _source(request, arch, lora)
    save_tiny_checkpoint(source, tmp_path, fmt=fmt)  # type: ignore[arg-type]
    loaded = _load(tmp_path, merge_lora=merge_lora)

    torch.testing.assert_close(_logits(loaded), _logits(source), atol=1e-5, rtol=0)
    hidden = torch.randn(3, source.hidden_size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.project(hidden), source.project(hidden), atol=1e-6, rtol=0)
    assert loaded.spec == source.spec
    assert loaded.base_vocab_size == source.base_vocab_size == len(source.tokenizer)
    assert (loaded.pad_id, loaded.bot_id, loaded.eot_id) == (
        source.pad_id,
        source.bot_id,
        source.eot_id,
    )
    assert loaded.eos_id == source.eos_id
    is_peft = type(loaded.codi).__name__.startswith("Peft")
    assert is_peft == (lora and not merge_lora)
    assert unwrap_peft(loaded.codi).config._attn_implementation == _probability_attention(loaded)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.fingerprint


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_lora_changes_the_function(request: pytest.FixtureRequest, arch: str) -> None:
    """LoRA B is non-zero in tiny models, so a LoRA that is lost on loading is detectable."""
    with_lora = request.getfixturevalue(f"tiny_{arch}")
    without = tiny_codi(arch, lora=False)  # same seed: same base weights, no adapters
    assert (_logits(with_lora) - _logits(without)).abs().max() > 0.1


def test_tiny_models_are_shaped_as_requested(tiny_llama: CodiModel, tiny_gpt2: CodiModel) -> None:
    """Grouped-query LLaMA, Conv1D GPT-2, V+3 rows, tied head, eval mode, non-zero LoRA B."""
    from transformers.pytorch_utils import Conv1D

    for model in (tiny_llama, tiny_gpt2):
        config = unwrap_peft(model.codi).config
        assert model.embeddings.weight.shape == (len(model.tokenizer) + N_SPECIAL, 32)
        assert model.n_layers == 4 and model.spec.n_thoughts == 6 and model.spec.prj_dim == 48
        assert config.tie_word_embeddings
        head = model.codi.get_output_embeddings()
        assert head.weight.data_ptr() == model.embeddings.weight.data_ptr()
        assert config._attn_implementation == _probability_attention(model)
        assert not any(m.training for m in model.modules())
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    attn = tiny_llama.layers[0].self_attn
    assert (attn.config.num_attention_heads, attn.config.num_key_value_heads) == (4, 2)
    assert attn.k_proj.base_layer.weight.shape == (16, 32)  # 2 kv heads x head_dim 8
    assert isinstance(tiny_gpt2.layers[0].attn.c_attn.base_layer, Conv1D)
    assert tiny_llama.tokenizer("Tom")["input_ids"][0] == tiny_llama.tokenizer.bos_token_id
    assert tiny_gpt2.tokenizer("Tom")["input_ids"][0] != tiny_gpt2.tokenizer.bos_token_id


def test_tiny_codi_is_seeded_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = tiny_codi("gpt2", seed=5)
    assert torch.equal(torch.rand(3), expected)
    second, other = tiny_codi("gpt2", seed=5), tiny_codi("gpt2", seed=6)
    key = "codi.base_model.model.transformer.h.1.mlp.c_fc.lora_B.default.weight"
    assert torch.equal(first.state_dict()[key], second.state_dict()[key])
    assert not torch.equal(first.state_dict()[key], other.state_dict()[key])


@pytest.mark.parametrize(("arch", "module"), [("llama", "q_proj"), ("gpt2", "c_attn")])
def test_lora_layers_compute_the_published_function(
    request: pytest.FixtureRequest, arch: str, module: str
) -> None:
    """A LoRA layer computes base(x) + (alpha / r) * B A x (GPT-2's Conv1D stores [in, out])."""
    model = request.getfixturevalue(f"tiny_{arch}")
    layer = next(m for name, m in model.codi.named_modules() if name.endswith(module))
    weight, a, b = (
        layer.base_layer.weight,
        layer.lora_A["default"].weight,
        layer.lora_B["default"].weight,
    )
    x = torch.randn(5, model.hidden_size, generator=torch.Generator().manual_seed(2))
    base = x @ weight if arch == "gpt2" else x @ weight.T
    if layer.base_layer.bias is not None:
        base = base + layer.base_layer.bias
    scaling = model.spec.lora_alpha / model.spec.lora_r
    assert scaling == 2.0
    with torch.no_grad():
        torch.testing.assert_close(layer(x), base + scaling * (x @ a.T @ b.T), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_published_key_layout(request: pytest.FixtureRequest, arch: str) -> None:
    """Keys follow zhenyi4/codi: codi.base_model.model.<HF key>, LoRA, prj.1/3/ln, V+3 rows."""
    directory = request.getfixturevalue(f"tiny_{arch}_dir")
    model = request.getfixturevalue(f"tiny_{arch}")
    state = load_file(str(directory / SAFETENSORS))
    backbone = [k for k in state if not k.startswith("prj.")]
    assert backbone
    assert all(k.startswith("codi.base_model.model.") for k in backbone)
    assert any(".base_layer." in k for k in backbone)
    assert any(k.endswith("lora_A.default.weight") for k in backbone)
    assert any(k.endswith("lora_B.default.weight") for k in backbone)
    assert {"prj.1.weight", "prj.1.bias", "prj.3.weight", "prj.3.bias", "prj.ln.weight"} <= set(
        state
    )
    assert not any(k.endswith("lm_head.weight") for k in state)  # tied: not stored
    vocab = len(model.tokenizer)
    assert state[_embedding_key(state)].shape == (vocab + N_SPECIAL, model.hidden_size)
    assert json.loads((directory / "config.json").read_text())["vocab_size"] == vocab
    assert state["prj.1.weight"].shape == (model.spec.prj_dim, model.hidden_size)


def test_full_finetune_key_layout(tmp_path: Path) -> None:
    """A backbone trained without LoRA is stored as codi.<HF key>."""
    save_tiny_checkpoint(tiny_codi("llama", lora=False), tmp_path)
    keys = [k for k in load_file(str(tmp_path / SAFETENSORS)) if not k.startswith("prj.")]
    assert all(k.startswith("codi.model.") for k in keys)
    assert not any("lora" in k or "base_layer" in k for k in keys)


def test_bin_with_tied_lm_head_present_loads(tiny_llama: CodiModel, tmp_path: Path) -> None:
    """A .bin that stores the tied lm_head (as torch.save does) loads too."""
    save_tiny_checkpoint(tiny_llama, tmp_path, fmt="bin")
    state = torch.load(tmp_path / BIN, weights_only=True)
    assert any(k.endswith("lm_head.weight") for k in state)
    torch.testing.assert_close(_logits(_load(tmp_path)), _logits(tiny_llama), atol=1e-5, rtol=0)


# --- strict key accounting -----------------------------------------------------------------
def test_unexpected_key_is_refused(tiny_llama_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_llama_dir, tmp_path / "ckpt")
    extra = "codi.base_model.model.model.extra_head.weight"
    _edit_weights(directory, lambda s: s.update({extra: torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match="unexpected keys") as err:
        _load(directory)
    assert extra in str(err.value)
    assert "missing keys" not in str(err.value)


def test_missing_key_is_listed(tiny_llama_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_llama_dir, tmp_path / "ckpt")
    state = load_file(str(directory / SAFETENSORS))
    victim = sorted(k for k in state if k.endswith("lora_B.default.weight"))[3]
    _edit_weights(directory, lambda s: s.pop(victim))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\)") as err:
        _load(directory)
    assert victim in str(err.value)


def test_ignorable_legacy_buffers_are_accepted(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    """Old transformers stored GPT-2's causal mask as attn.bias; it is not a weight."""
    directory = _copy(tiny_gpt2_dir, tmp_path / "ckpt")
    legacy = "codi.base_model.model.transformer.h.0.attn.bias"
    _edit_weights(directory, lambda s: s.update({legacy: torch.ones(1, 1, 4, 4)}))
    _load(directory)


def test_vocabulary_size_mismatch(tiny_llama_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_llama_dir, tmp_path / "ckpt")

    def grow(state: dict[str, torch.Tensor]) -> None:
        key = _embedding_key(state)
        state[key] = torch.cat([state[key], torch.zeros(2, state[key].shape[1])])  # V + 5 rows

    _edit_weights(directory, grow)
    with pytest.raises(CheckpointError, match="vocabulary size mismatch"):
        _load(directory)


def test_projection_dim_mismatch(tiny_llama_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_llama_dir, tmp_path / "ckpt")
    _edit_spec(directory, prj_dim=64)
    with pytest.raises(CheckpointError, match="projection shape mismatch"):
        _load(directory)


def test_wrong_lora_rank_is_a_shape_mismatch(tiny_llama_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_llama_dir, tmp_path / "ckpt")
    _edit_spec(directory, lora_r=4)
    with pytest.raises(CheckpointError, match="shape mismatches") as err:
        _load(directory)
    assert "lora_A.default.weight" in str(err.value)


def test_lora_checkpoint_with_no_lora_spec(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Saved with LoRA, declared without: the LoRA keys are reported as unexpected."""
    directory = _copy(tiny_llama_dir, tmp_path / "ckpt")
    _edit_spec(directory, lora_r=None, lora_alpha=None, lora_targets=[])
    with pytest.raises(CheckpointError, match="unexpected keys") as err:
        _load(directory)
    message = str(err.value)
    assert "lora_A.default.weight" in message
    assert "no LoRA" in message


def test_unknown_spec_field(tiny_llama_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_llama_dir, tmp_path / "ckpt")
    _edit_spec(directory, n_latents=6)
    with pytest.raises(CheckpointError, match=r"unknown field\(s\) \['n_latents'\]"):
        _load(directory)


def test_invalid_spec_json(tiny_llama_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_llama_dir, tmp_path / "ckpt")
    (directory / SPEC_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        _load(directory)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("unexpected", "unexpected keys"),
        ("missing", r"missing keys \(1\)"),
        ("vocabulary", "vocabulary size mismatch"),
        ("prj_dim", "projection shape mismatch"),
        ("lora_r", "shape mismatches"),
        ("legacy", None),  # an ignorable buffer: accepted by both
    ],
)
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_probe_layout_refuses_what_the_loader_refuses_without_loading_weights(
    tiny_llama_dir: Path, tmp_path: Path, edit: str, message: str | None, fmt: str
) -> None:
    """So the plugin reports it as a usage error before any test runs (not a failed study)."""
    from codi_fixtures.model.codi import probe_layout

    directory = _copy(tiny_llama_dir, tmp_path / "ckpt")
    state = load_file(str(directory / SAFETENSORS))
    if edit == "unexpected":
        state["codi.base_model.model.model.extra_head.weight"] = torch.zeros(2, 2)
    elif edit == "missing":
        state.pop(sorted(k for k in state if k.endswith("lora_B.default.weight"))[3])
    elif edit == "vocabulary":
        key = _embedding_key(state)
        state[key] = torch.cat([state[key], torch.zeros(2, state[key].shape[1])])
    elif edit == "legacy":
        state["codi.base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(2)
    else:
        _edit_spec(directory, **{edit: 4 if edit == "lora_r" else 64})
    (directory / SAFETENSORS).unlink()
    if fmt == "bin":
        torch.save(state, directory / BIN)
    else:
        save_file(state, str(directory / SAFETENSORS))
    cfg = ModelConfig(ckpt=directory, device="cpu", dtype="float32")
    if message is None:
        probe_layout(cfg)
        load_codi(cfg)
        return
    with pytest.raises(CheckpointError, match=message) as probed:
        probe_layout(cfg)
    with pytest.raises(CheckpointError) as loaded:
        load_codi(cfg)
    assert str(probed.value) == str(loaded.value)


# --- unusable directories and files ----------------------------------------------------------
def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        _load(tmp_path / "nowhere")


def test_file_instead_of_directory(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="must be a directory"):
        _load(path)


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"holds neither .* \(found: nothing\)"):
        _load(tmp_path)


def test_directory_without_weights(tiny_llama_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_llama_dir, tmp_path / "ckpt")
    (directory / SAFETENSORS).unlink()
    with pytest.raises(CheckpointError, match="holds neither") as err:
        _load(directory)
    assert "config.json" in str(err.value)  # says what it found instead


def test_directory_without_config_needs_base(tiny_llama_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_llama_dir, tmp_path / "ckpt")
    (directory / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config.json.*--codi-base"):
        _load(directory)


def test_base_without_tokenizer(tiny_llama_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_llama_dir, tmp_path / "ckpt")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).unlink()
    with pytest.raises(CheckpointError, match="no tokenizer found"):
        _load(directory)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_truncated_weights(tiny_llama: CodiModel, tmp_path: Path, fmt: str) -> None:
    weights = save_tiny_checkpoint(tiny_llama, tmp_path, fmt=fmt)  # type: ignore[arg-type]
    os.truncate(weights, weights.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=r"cannot read weights.*truncated"):
        _load(tmp_path)


class _Exploit:
    """Unpickling this object would create a marker file (stand-in for os.system)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_malicious_pickle_is_refused(tiny_llama: CodiModel, tmp_path: Path) -> None:
    """A .bin carrying code is refused by weights-only loading, and the code never runs."""
    save_tiny_checkpoint(tiny_llama, tmp_path, fmt="bin")
    marker = tmp_path / MARKER
    state = torch.load(tmp_path / BIN, weights_only=True)
    state["codi.payload"] = _Exploit(marker)
    torch.save(state, tmp_path / BIN)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="weights_only") as err:
        _load(tmp_path)
    assert not marker.exists()
    message = str(err.value)  # names what the pickle holds; never advises unsafe loading
    assert "holds more than tensors (" in message and "GLOBAL" in message
    assert "will likely succeed" not in message and "safetensors" in message


def test_non_tensor_state_is_refused(tiny_llama: CodiModel, tmp_path: Path) -> None:
    save_tiny_checkpoint(tiny_llama, tmp_path, fmt="bin")
    torch.save({"codi.step": 3}, tmp_path / BIN)
    with pytest.raises(CheckpointError, match="flat state dict of tensors"):
        _load(tmp_path)


# --- transformers 5 facts the code relies on -------------------------------------------------
def test_from_config_accepts_dtype(tiny_llama: CodiModel) -> None:
    """Transformers 5 takes ``dtype=`` (``torch_dtype`` is deprecated)."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(unwrap_peft(tiny_llama.codi).config)  # from_config keeps the object
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_cache_branch_matches_recompute(tiny_model: CodiModel, questions: list[str]) -> None:
    """A DynamicCache branch (LoopState.select) continues exactly like a fresh encode."""
    prompt = build_prompt(tiny_model, questions[:3])
    rows = torch.tensor([2, 0, 2, 1])
    state, _ = encode_prompt(tiny_model, prompt)
    length = state.cache.get_seq_length()
    branch = state.select(rows)
    step = torch.randn(
        len(rows), 2, tiny_model.hidden_size, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        branched = forward_step(tiny_model, branch, embeds=step, logits=True)
        sub = type(prompt)(prompt.input_ids[rows], prompt.attention_mask[rows], prompt.q_lens[rows])
        fresh_state, _ = encode_prompt(tiny_model, sub)
        fresh = forward_step(tiny_model, fresh_state, embeds=step, logits=True)
    torch.testing.assert_close(branched.logits, fresh.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(branched.hidden, fresh.hidden, atol=1e-5, rtol=0)
    assert state.cache.get_seq_length() == length  # the parent is untouched by the branch
    assert state.length == prompt.width
    assert branch.length == prompt.width + 2


def test_decoder_layer_hooks_receive_a_bare_tensor(tiny_model: CodiModel) -> None:
    seen: list[object] = []
    handles = [
        layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
        for layer in tiny_model.layers
    ]
    try:
        _logits(tiny_model)
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == tiny_model.n_layers
    assert all(type(out) is torch.Tensor for out in seen)


def test_sdpa_returns_no_attentions_so_loader_uses_eager(
    tiny_llama: CodiModel, tiny_llama_dir: Path
) -> None:
    """With sdpa, ``output_attentions`` silently yields nothing; eager yields them all."""
    from transformers import AutoModelForCausalLM

    # from_config keeps (and edits) the config object it is given: one copy per model.
    config = unwrap_peft(tiny_llama.codi).config
    ids = torch.tensor([tiny_llama.tokenizer(PROMPT)["input_ids"]])
    sdpa = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa")
    eager = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    assert sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert not sdpa(input_ids=ids, output_attentions=True).attentions
        attentions = eager(input_ids=ids, output_attentions=True).attentions
    assert len(attentions) == tiny_llama.n_layers
    assert attentions[0].shape == (1, config.num_attention_heads, ids.shape[1], ids.shape[1])
    loaded = _load(tiny_llama_dir)
    assert unwrap_peft(loaded.codi).config._attn_implementation == _probability_attention(loaded)


def test_transformers_keeps_its_output_capturing_hooks() -> None:
    """Transformers 5 keeps the capturing hooks it installs for ``output_attentions``.

    A hook count is 0 only on a fresh model, so hook tests compare before/after.
    """
    model = tiny_codi("llama", lora=False)
    ids = torch.tensor([model.tokenizer(PROMPT)["input_ids"]])
    assert count_forward_hooks(model) == 0
    with torch.no_grad():
        model.codi(input_ids=ids, output_attentions=True)
    installed = count_forward_hooks(model)
    assert installed > 0
    with torch.no_grad():
        model.codi(input_ids=ids, output_attentions=True, output_hidden_states=True)
    assert count_forward_hooks(model) == installed  # installed once, not per call


def test_hidden_states_index_is_block_output(tiny_model: CodiModel) -> None:
    """hidden_states[L+1] is block L's output, except the last entry, which is post-norm."""
    outputs: list[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(lambda _m, _i, out: outputs.append(out))
        for layer in tiny_model.layers
    ]
    ids = torch.tensor([tiny_model.tokenizer(PROMPT)["input_ids"]])
    inner = unwrap_peft(tiny_model.codi)
    try:
        with torch.no_grad():
            hidden_states = inner(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    n = tiny_model.n_layers
    assert len(hidden_states) == n + 1
    for layer in range(n - 1):
        assert torch.equal(hidden_states[hidden_state_index(layer)], outputs[layer])
    last = hidden_states[hidden_state_index(n - 1)]
    assert not torch.allclose(last, outputs[-1], atol=1e-3)
    final_norm = (
        inner.base_model.norm if hasattr(inner.base_model, "norm") else inner.base_model.ln_f
    )
    with torch.no_grad():
        torch.testing.assert_close(last, final_norm(outputs[-1]), atol=1e-6, rtol=0)

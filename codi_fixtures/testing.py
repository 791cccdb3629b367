"""Tiny random CODI models and checkpoints, for tests and for researchers.

Everything here builds *real* transformers models (``LlamaForCausalLM`` /
``GPT2LMHeadModel``) from small configs and stores them in exactly the
published checkpoint layout (see :mod:`codi_fixtures.model.checkpoint`), so the same
loader, engine and interventions run on them as on the published checkpoints:

>>> model = tiny_codi("gpt2")  # doctest: +SKIP
>>> save_tiny_checkpoint(model, tmp_dir)  # doctest: +SKIP
>>> load_codi(ModelConfig(ckpt=tmp_dir, device="cpu", dtype="float32"))  # doctest: +SKIP

The weights are random (seeded), so answers are gibberish; what these models
are for is mechanics: indexing, batching, caching, hooks and checkpoint I/O.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from codi_fixtures.atomic import atomic_write_text
from codi_fixtures.model.architecture import unwrap_peft
from codi_fixtures.model.checkpoint import SPEC_FILE, WEIGHT_FILES, CodiSpec, write_checkpoint
from codi_fixtures.model.codi import N_SPECIAL, CodiModel, build_projection, wrap_lora
from codi_fixtures.study.problems import DIFFICULTY_BINS
from codi_fixtures.study.runs import StudyResults

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "GPT2_LORA_TARGETS",
    "LLAMA_LORA_TARGETS",
    "TINY_ANSWER_PROMPT",
    "save_tiny_checkpoint",
    "synthetic_study",
    "tiny_codi",
    "tiny_tokenizer",
]

LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Modules LoRA adapts in the published LLaMA CODI checkpoint."""
GPT2_LORA_TARGETS = ("c_attn", "c_proj", "c_fc")
"""Modules LoRA adapts in the published GPT-2 CODI checkpoint (Conv1D layers)."""
TINY_ANSWER_PROMPT = "The answer is:"
"""Answer prompt of the tiny models (the organism's, which the tokenizer knows)."""

_TOKENIZER_PROBLEMS = 300
_INIT_STD = 0.1  # 5x HF's 0.02: attention far from uniform, yet float error stays ~1e-6
_LORA_B_STD = 0.05  # non-zero LoRA B: a LoRA load that goes wrong changes the outputs


@functools.lru_cache(maxsize=2)
def tiny_tokenizer(add_bos: bool = True) -> PreTrainedTokenizerFast:
    """The organism word-level tokenizer trained on a few hundred organism problems.

    ``add_bos`` True gives a LLaMA-like tokenizer (prepends ``<s>``), False a
    GPT-2-like one (adds nothing). Deterministic, so cached per process: the
    returned object is shared and must not be mutated.
    """
    from codi_fixtures.answers import format_number
    from codi_fixtures.organism.task import make_splits
    from codi_fixtures.organism.tokenizer import build_tokenizer

    train, _ = make_splits(_TOKENIZER_PROBLEMS, 1, seed=0)
    texts = [
        text
        for p in train
        for text in (p.question, p.cot, f"{TINY_ANSWER_PROMPT} {format_number(p.answer)}")
    ]
    return build_tokenizer(texts, add_bos=add_bos)  # type: ignore[return-value]


def _backbone(
    arch: Literal["llama", "gpt2"],
    vocab: int,
    tokenizer: PreTrainedTokenizerFast,
    n_layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
) -> torch.nn.Module:
    """A randomly initialised causal LM with ``vocab`` rows (base vocabulary + 3)."""
    common = {
        "vocab_size": vocab,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "initializer_range": _INIT_STD,
        "attn_implementation": "eager",
    }
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(
            LlamaConfig(
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_hidden_layers=n_layers,
                num_attention_heads=heads,
                num_key_value_heads=kv_heads,
                max_position_embeddings=256,
                **common,
            )
        )
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(
            GPT2Config(n_embd=hidden, n_layer=n_layers, n_head=heads, n_positions=256, **common)
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; use 'llama' or 'gpt2'")


def tiny_codi(
    arch: Literal["llama", "gpt2"],
    *,
    lora: bool = True,
    n_layers: int = 4,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    prj_dim: int = 48,
    n_thoughts: int = 6,
    seed: int = 0,
) -> CodiModel:
    """A tiny random CODI model shaped like the published LLaMA / GPT-2 ones, in eval mode.

    ``kv_heads`` (LLaMA only) below ``heads`` exercises grouped-query attention.
    With ``lora`` the backbone is peft-wrapped as published (LLaMA: q,k,v,o,gate,
    up,down_proj; GPT-2: c_attn,c_proj,c_fc; r=8, alpha=16) and LoRA B is random,
    so the adapters change the function. Seeded; the global RNG is left untouched.
    """
    tokenizer = tiny_tokenizer(add_bos=arch == "llama")
    vocab = len(tokenizer) + N_SPECIAL
    targets = LLAMA_LORA_TARGETS if arch == "llama" else GPT2_LORA_TARGETS
    spec = CodiSpec(
        n_thoughts=n_thoughts,
        prj_dim=prj_dim,
        lora_r=8 if lora else None,
        lora_alpha=16 if lora else None,
        lora_targets=targets if lora else (),
        answer_prompt=TINY_ANSWER_PROMPT,
        task="tiny-random",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = _backbone(arch, vocab, tokenizer, n_layers, hidden, heads, kv_heads)
        if lora:
            backbone = wrap_lora(backbone, spec)
            with torch.no_grad():
                for name, param in backbone.named_parameters():
                    if "lora_B" in name:
                        param.normal_(0.0, _LORA_B_STD)
        prj = build_projection(hidden, prj_dim)
    model = CodiModel(backbone, prj, spec, tokenizer)
    return model.eval().requires_grad_(False)


def save_tiny_checkpoint(
    model: CodiModel, directory: Path, *, fmt: Literal["safetensors", "bin"] = "safetensors"
) -> Path:
    """Write ``model`` as a published-layout CODI checkpoint that ``load_codi`` reads.

    The directory gets the weights (``model.safetensors`` via
    :func:`~codi_fixtures.model.checkpoint.write_checkpoint`, or a ``torch.save``d state
    dict in ``pytorch_model.bin``), ``codi.json``, the *base* ``config.json``
    (``vocab_size`` = rows - 3, as a published base config has) and the tokenizer
    files. Returns the weights file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if fmt == "safetensors":
        weights = write_checkpoint(directory, state, model.spec)
    elif fmt == "bin":
        weights = directory / WEIGHT_FILES[1]
        torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, weights)
        atomic_write_text(directory / SPEC_FILE, model.spec.to_json())
    else:
        raise ValueError(f"unknown checkpoint format {fmt!r}; use 'safetensors' or 'bin'")
    hf_config: Any = unwrap_peft(model.codi).config
    base_config = hf_config.__class__.from_dict(hf_config.to_dict())
    base_config.vocab_size = model.base_vocab_size  # the published base vocabulary, without +3
    base_config.save_pretrained(str(directory))
    model.tokenizer.save_pretrained(str(directory))
    return weights


def synthetic_study(
    n: int,
    *,
    n_thoughts: int = 6,
    n_layers: int = 16,
    n_heads: int = 4,
    planted_layer: int = 8,
    zero_importance: bool = False,
    bins: tuple[str, ...] = DIFFICULTY_BINS,
    n_nonfinite: int = 0,
    kinds: tuple[str, ...] = ("zero", "mean"),
    seed: int = 0,
) -> StudyResults:
    """A synthetic study with planted effects, for tests of statistics, figures and reports.

    The last thought matters most; attention tracks importance at ``planted_layer``.
    """
    rng = np.random.default_rng(seed)
    conditions = [c for k in kinds for c in [*(f"t{t}-{k}" for t in range(n_thoughts)), f"all-{k}"]]
    n_cond = len(conditions)
    profile = np.full(n_thoughts, 0.2)
    profile[-1] = 3.0
    importance = profile + rng.normal(0.0, 0.5, (n, n_thoughts))
    if zero_importance:
        importance[:] = 0.0
    clean_logp = -0.3 - rng.random(n)
    clean_correct = rng.random(n) < 0.85
    logp = np.empty((n, n_cond))
    correct = np.empty((n, n_cond), dtype=bool)
    for k in kinds:
        for t in range(n_thoughts):
            col = conditions.index(f"t{t}-{k}")
            logp[:, col] = clean_logp - importance[:, t]
            correct[:, col] = clean_correct & (importance[:, t] < 1.0)
        col = conditions.index(f"all-{k}")
        logp[:, col] = clean_logp - (0.0 if zero_importance else 6.0)
        correct[:, col] = clean_correct & zero_importance
    # The thoughts share the <eot> query's attention with the other positions (last column).
    attention = rng.dirichlet(np.ones(n_thoughts + 1), (n, n_layers, n_heads))[..., :-1]
    if n_layers > planted_layer:
        signal = np.exp(importance - importance.max(axis=1, keepdims=True))
        signal /= signal.sum(axis=1, keepdims=True)
        attention[:, planted_layer] = 0.5 * signal[:, None] + 0.3 * attention[:, planted_layer]
    nonfinite = np.zeros((n, n_cond), dtype=bool)
    bad = conditions.index("t0-mean")  # the default importance kind: these rows turn grey
    nonfinite[:n_nonfinite, bad] = True
    logp[:n_nonfinite, bad] = np.nan
    return StudyResults(
        problem_ids=[f"synthetic-{i}" for i in range(n)],
        difficulty=[bins[i % len(bins)] for i in range(n)],
        gold=np.arange(n, dtype=np.float64),
        conditions=conditions,
        clean_answer=np.arange(n, dtype=np.float64),
        clean_correct=clean_correct,
        clean_logp=clean_logp,
        clean_text=[str(i) for i in range(n)],
        clean_nonfinite=np.zeros(n, dtype=bool),
        answer=np.zeros((n, n_cond)),
        correct=correct,
        logp=logp,
        clean_logp_first=clean_logp / 2,
        logp_first=logp / 2,
        kl=np.zeros((n, n_cond)),
        nonfinite=nonfinite,
        attention=attention,
    )

r"""Real-size replicas of the published CODI checkpoints, and the study measured on them.

The loader claims to read zen-E/CODI-llama3.2-1b-Instruct and zen-E/CODI-gpt2. Their
weights cannot be fetched offline, so ``build`` writes *replicas*: random (seeded)
weights in exactly the published layout, shapes and base configs, and ``measure``
runs the study on one through the project's own code (``load_codi``,
``compute_study``, ``StudyAnalysis.from_settings``), next to the cost model's
prediction (:mod:`codi_fixtures.budget`) for the same settings.

``build --model {llama1b,gpt2} --out DIR`` writes:

- ``DIR/ckpt/model.safetensors``: the CODI module's state dict with the published keys
  (``codi.base_model.model.<HF key>``, ``.base_layer.`` inside the LoRA-adapted linears,
  ``lora_A/B.default.weight`` with r=128, ``prj.1`` / ``prj.3`` / ``prj.ln``; V + 3
  embedding rows; the tied ``lm_head`` left out). No ``codi.json``, like the published
  directories, so the loader's built-in published defaults apply.
- ``DIR/base/``: the real base model's ``config.json`` (Llama-3.2-1B-Instruct / gpt2)
  and a *stand-in* tokenizer. The real tokenizers are not available offline, so the
  stand-in is a byte-level BPE trained on a local corpus (GSM8K train when present,
  else the bundled model's problems), padded with unreachable filler tokens to exactly
  the real vocabulary size (128,256 / 50,257), with the real special-token ids: LLaMA
  ``<|begin_of_text|>`` = 128000 (prepended as BOS) and ``<|eot_id|>`` = 128009 (eos,
  as the Instruct tokenizer); GPT-2 ``<|endoftext|>`` = 50256 (bos = eos, no BOS added).
  Token counts are GPT-2-like, not the real ones.
- ``DIR/replica.json``: what was built (seed, dtype, corpus, parameter count).

The module skeleton comes from the loader's own builder on the meta device, so the keys
and shapes are by construction what ``load_codi`` expects; the tensors are then drawn one
at a time on ``--device`` and streamed into the safetensors file (peak memory: the
largest tensor, about 1 GB for LLaMA's embedding in float32), since
:func:`codi_fixtures.checkpoint.write_checkpoint` serialises the whole state in memory.
Initialisation follows Hugging Face's (normal 0.02, zero biases, unit norms); LoRA B is
non-zero, so a LoRA that is lost on loading changes the function.

``measure --ckpt DIR --base DIR`` prints one JSON object: sizes, wall time (load /
engine / analysis / total), decoder forward calls, peak memory, achieved TFLOP/s, and
beside them the budget's prediction for the same study shape, with ``flags`` naming
every quantity where measurement and prediction differ by more than 2x. The random
weights never emit eos, so every row decodes to the 24-token cap: the answer length is
taken from the run, not the budget's default of 8. With ``--split-rows N`` the study is
run a second time with ``max_rows=N`` (the simulated out-of-memory split path), and with
``--memory-limit-mb M`` under a genuine limit (the process's address space capped at its
size plus M MiB, so batches really fail to allocate and are split); each time the
per-problem results are compared with the unlimited run.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/real_size.py build --model gpt2 --out /tmp/rs/gpt2
    OMP_NUM_THREADS=1 python benchmarks/real_size.py measure --ckpt /tmp/rs/gpt2/ckpt \
        --base /tmp/rs/gpt2/base --device cpu --dtype float32 --tier quick
    python benchmarks/real_size.py build --model llama1b --out /tmp/rs/llama1b \
        --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from codi_fixtures.config import (
    BUNDLED_CHECKPOINT,
    TIERS,
    ModelConfig,
    RunConfig,
    Settings,
    parse_batch_rows,
)
from codi_fixtures.model import budget
from codi_fixtures.model.checkpoint import WEIGHT_FILES, CodiSpec
from codi_fixtures.model.codi import CodiModel

log = logging.getLogger("real_size")

REPO = Path(__file__).resolve().parents[1]
GSM8K_DIRS = (REPO.parent / "shared" / "data" / "gsm8k", REPO / "shared" / "data" / "gsm8k")
BUNDLED_EVAL = BUNDLED_CHECKPOINT / "eval.jsonl"
BPE_VOCAB = 16_000  # learned byte-level BPE tokens; the rest up to V are unreachable fillers
RATIO_FLAG = 2.0  # measured / predicted outside [1/2, 2] is flagged

# The real base configs (config.json of meta-llama/Llama-3.2-1B-Instruct and of gpt2).
LLAMA_3_2_1B_INSTRUCT_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
GPT2_CONFIG: dict[str, Any] = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}


def _llama3_special_tokens() -> dict[int, str]:
    """The 256 LLaMA-3 special tokens (ids 128000..128255) with their real names."""
    named = {
        128000: "<|begin_of_text|>",
        128001: "<|end_of_text|>",
        128004: "<|finetune_right_pad_id|>",
        128006: "<|start_header_id|>",
        128007: "<|end_header_id|>",
        128008: "<|eom_id|>",
        128009: "<|eot_id|>",
        128010: "<|python_tag|>",
    }
    out: dict[int, str] = {}
    reserved = 0
    for token_id in range(128000, 128256):
        if token_id in named:
            out[token_id] = named[token_id]
        else:
            out[token_id] = f"<|reserved_special_token_{reserved}|>"
            reserved += 1
    return out


@dataclass(frozen=True)
class Replica:
    """What a published CODI checkpoint's replica must reproduce."""

    name: str
    base_name: str
    base_config: dict[str, Any]
    special_tokens: dict[int, str]
    bos: str
    eos: str
    add_bos: bool
    published: budget.ModelShape
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        """``llama`` or ``gpt2``."""
        return str(self.base_config["model_type"])

    @property
    def vocab_size(self) -> int:
        """Base vocabulary V (the checkpoint has V + 3 rows)."""
        return int(self.base_config["vocab_size"])

    @property
    def spec(self) -> CodiSpec:
        """The loader's built-in settings for this published checkpoint."""
        return CodiSpec.published_default(self.model_type)


REPLICAS: dict[str, Replica] = {
    "llama1b": Replica(
        name="CODI-llama3.2-1b-Instruct",
        base_name="meta-llama/Llama-3.2-1B-Instruct",
        base_config=LLAMA_3_2_1B_INSTRUCT_CONFIG,
        special_tokens=_llama3_special_tokens(),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        add_bos=True,
        published=budget.LLAMA_3_2_1B,
    ),
    "gpt2": Replica(
        name="CODI-gpt2",
        base_name="gpt2",
        base_config=GPT2_CONFIG,
        special_tokens={50256: "<|endoftext|>"},
        bos="<|endoftext|>",
        eos="<|endoftext|>",
        add_bos=False,
        published=budget.GPT2_SMALL,
    ),
}


# --- corpus and stand-in tokenizer ----------------------------------------------------------
def default_corpus() -> Path:
    """GSM8K train when present (``../shared/data``), else the bundled model's problems."""
    for folder in GSM8K_DIRS:
        if (folder / "train.jsonl").is_file():
            return folder / "train.jsonl"
    return BUNDLED_EVAL


def default_problems() -> Path:
    """GSM8K test when present (``../shared/data``), else the bundled model's eval set."""
    for folder in GSM8K_DIRS:
        if (folder / "test.jsonl").is_file():
            return folder / "test.jsonl"
    return BUNDLED_EVAL


def read_corpus(path: Path) -> list[str]:
    """Every string value of every record of a JSONL file (questions, solutions)."""
    texts: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                texts += [v for v in record.values() if isinstance(v, str)]
    if not texts:
        raise ValueError(f"{path}: no text to train the stand-in tokenizer on")
    return texts


def build_tokenizer(replica: Replica, texts: Sequence[str], bpe_vocab: int = BPE_VOCAB) -> Any:
    """A byte-level BPE stand-in tokenizer with exactly the replica's vocabulary size.

    Learned tokens come first (at most ``bpe_vocab``), then unreachable fillers up to
    the first special id, then the special tokens at their real ids. Any text encodes.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers import trainers as tok_trainers
    from transformers import PreTrainedTokenizerFast

    first_special = min(replica.special_tokens)
    specials = [replica.special_tokens[i] for i in sorted(replica.special_tokens)]
    if sorted(replica.special_tokens) != list(range(first_special, replica.vocab_size)):
        raise ValueError(f"{replica.name}: special tokens must fill ids {first_special}..V-1")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = tok_trainers.BpeTrainer(
        vocab_size=min(bpe_vocab, first_special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    data = json.loads(tok.to_str())
    table: dict[str, int] = data["model"]["vocab"]
    for token_id in range(len(table), first_special):
        table[f"<|filler_{token_id}|>"] = token_id
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if replica.add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{replica.bos} $A",
            pair=f"{replica.bos} $A $B",
            special_tokens=[(replica.bos, tok.token_to_id(replica.bos))],
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=replica.bos, eos_token=replica.eos, padding_side="left"
    )
    if len(fast) != replica.vocab_size:
        raise AssertionError(f"stand-in tokenizer has {len(fast)} tokens, not {replica.vocab_size}")
    return fast


# --- weights ---------------------------------------------------------------------------------
def codi_skeleton(replica: Replica) -> CodiModel:
    """The CODI module ``load_codi`` builds for this base, on the meta device (no memory)."""
    from transformers import AutoConfig

    from codi_fixtures.model.codi import _build_backbone, build_projection

    config_class = type(AutoConfig.for_model(replica.model_type))
    base_config = config_class.from_dict(dict(replica.base_config))
    with torch.device("meta"):
        backbone = _build_backbone(base_config, replica.spec)
        prj = build_projection(int(backbone.config.hidden_size), replica.spec.prj_dim)
        if base_config.tie_word_embeddings:
            backbone.tie_weights()  # as load_codi does after loading
    return CodiModel(backbone, prj, replica.spec, tokenizer=None)


def init_plan(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, init) for every tensor the file must hold, in state-dict order.

    ``init`` is ``normal``, ``zeros`` (biases) or ``ones`` (norm weights). A state-dict
    key that is no unique parameter is a tied alias (the LM head) and is left out.
    """
    kinds: dict[str, str] = {}
    for prefix, sub in module.named_modules():
        norm = "norm" in type(sub).__name__.lower()
        for name, _ in sub.named_parameters(recurse=False):
            key = f"{prefix}.{name}" if prefix else name
            kinds[key] = "zeros" if name == "bias" else "ones" if norm else "normal"
    unique = {k for k, _ in module.named_parameters()}
    plan = []
    for key, value in module.state_dict().items():
        if key not in unique:
            if not key.endswith("lm_head.weight"):
                raise AssertionError(f"{key} is neither a parameter nor a tied LM head")
            continue
        plan.append((key, tuple(value.shape), kinds[key]))
    return plan


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def write_safetensors_streaming(
    path: Path,
    entries: Sequence[tuple[str, tuple[int, ...]]],
    dtype: torch.dtype,
    make: Callable[[str, tuple[int, ...]], torch.Tensor],
) -> int:
    """Write a safetensors file one tensor at a time (``make`` draws each); returns bytes.

    The header (8-byte length, JSON with dtype / shape / offsets, space-padded to 8
    bytes) is known from the shapes, so no more than one tensor is ever held.
    """
    item = torch.empty((), dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in entries:
        size = math.prod(shape) * item
        header[key] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for key, shape in tqdm(entries, desc=f"writing {path.name}", unit="tensor"):
            tensor = make(key, shape).to(dtype).contiguous().cpu()
            if tuple(tensor.shape) != shape:
                raise AssertionError(f"{key}: drew {tuple(tensor.shape)}, header says {shape}")
            handle.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
            del tensor
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return 8 + len(blob) + offset


def build(
    model: str,
    out: Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    corpus: Path | None = None,
    bpe_vocab: int = BPE_VOCAB,
) -> dict[str, Any]:
    """Write the replica of ``model`` (``llama1b`` / ``gpt2``) under ``out``; returns its summary.

    ``out/ckpt`` and ``out/base`` are the ``ModelConfig(ckpt=..., base=...)`` pair.
    """
    replica = REPLICAS[model]
    torch_dtype = getattr(torch, dtype)
    ckpt_dir, base_dir = out / "ckpt", out / "base"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    base_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    corpus = corpus or default_corpus()
    tokenizer = build_tokenizer(replica, read_corpus(corpus), bpe_vocab)
    tokenizer.save_pretrained(str(base_dir))
    (base_dir / "config.json").write_text(json.dumps(replica.base_config, indent=2) + "\n")
    log.info("%s: base config and stand-in tokenizer (%d tokens) written", base_dir, len(tokenizer))

    plan = init_plan(codi_skeleton(replica))
    std = float(replica.base_config["initializer_range"])
    generator = torch.Generator(device=device).manual_seed(seed)

    kinds = {key: kind for key, _, kind in plan}

    def draw(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        init = kinds[key]
        if init == "zeros":
            return torch.zeros(shape, device=device)
        if init == "ones":
            return torch.ones(shape, device=device)
        return torch.empty(shape, device=device).normal_(0.0, std, generator=generator)

    weights = ckpt_dir / WEIGHT_FILES[0]
    size = write_safetensors_streaming(weights, [(k, s) for k, s, _ in plan], torch_dtype, draw)
    summary = {
        "model": model,
        "replica_of": replica.name,
        "base_of": replica.base_name,
        "ckpt": str(ckpt_dir),
        "base": str(base_dir),
        "weights_file": str(weights),
        "weights_bytes": size,
        "tensors": len(plan),
        "parameters": sum(math.prod(s) for _, s, _ in plan),
        "dtype": dtype,
        "device": device,
        "seed": seed,
        "tokenizer_corpus": str(corpus),
        "tokenizer": "stand-in byte-level BPE (real tokenizer not available offline)",
        "build_s": round(time.perf_counter() - start, 2),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    (out / "replica.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --- measuring -------------------------------------------------------------------------------
def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``getrusage``), bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _status_bytes(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux ``clear_refs`` 5), if allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class ForwardCounter:
    """Counts decoder forward calls, token rows, attended keys and LM-head positions."""

    def __init__(self, shape: budget.ModelShape) -> None:
        self.shape = shape
        self.calls = 0
        self.tokens = 0
        self.head_positions = 0
        self.flops = 0.0

    def decoder_pre(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Pre-hook on the decoder stack: one call of ``B x n`` tokens over ``S`` keys."""
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        x = ids if ids is not None else embeds if embeds is not None else args[0]
        batch, n = int(x.shape[0]), int(x.shape[1])
        mask = kwargs.get("attention_mask")
        keys = int(mask.shape[-1]) if mask is not None else n
        self.calls += 1
        self.tokens += batch * n
        self.flops += batch * n * budget.token_flops(self.shape, keys, logits=False)

    def head(self, _module: Any, args: tuple[Any, ...], _output: Any) -> None:
        """Forward hook on the LM head: every position through it costs ``2 V d``."""
        positions = int(math.prod(args[0].shape[:-1]))
        self.head_positions += positions
        self.flops += positions * 2.0 * self.shape.vocab * self.shape.hidden

    @contextmanager
    def attached(self, model: CodiModel) -> Iterator[ForwardCounter]:
        """Hooks on ``model``'s decoder and head while the context is open."""
        from codi_fixtures.model.architecture import unwrap_peft

        handles = [
            unwrap_peft(model.codi).base_model.register_forward_pre_hook(
                self.decoder_pre, with_kwargs=True
            ),
            model.codi.get_output_embeddings().register_forward_hook(self.head),
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def address_space_limit(extra_bytes: int) -> Iterator[int]:
    """Cap this process's address space at its current size plus ``extra_bytes`` (Linux).

    A genuine limit: an allocation past it fails in the OS, and torch's CPU allocator
    raises its "can't allocate memory" error. Only the soft limit is lowered, so it is
    restored on exit.
    """
    size = _status_bytes("VmSize")
    if size is None:
        raise SystemExit("--memory-limit-mb needs Linux (/proc/self/status)")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class _SplitCounter(logging.Handler):
    """Counts the runner's "out of memory on N rows; retrying" records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.splits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("out of memory on"):
            self.splits.append(message)


def _limited_run(
    model: CodiModel, problems: Any, cfg: RunConfig, cache: Path, extra_mb: int
) -> tuple[Any, dict[str, Any]]:
    """``compute_study`` under a genuine address-space limit; the study and what happened."""
    from codi_fixtures.study.runs import compute_study

    runner_log = logging.getLogger("codi_fixtures.study.runs")
    counter = _SplitCounter()
    level = runner_log.level
    runner_log.addHandler(counter)
    runner_log.setLevel(logging.INFO)
    t_start = time.perf_counter()
    try:
        with address_space_limit(extra_mb * 2**20) as limit:
            study = compute_study(model, problems, cfg, cache)
    finally:
        runner_log.removeHandler(counter)
        runner_log.setLevel(level)
    return study, {
        "extra_mb": extra_mb,
        "address_space_limit_bytes": limit,
        "wall_s": round(time.perf_counter() - t_start, 2),
        "splits": len(counter.splits),
        "first_splits": counter.splits[:3],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ratio(measured: float | None, predicted: float | None) -> float | None:
    if measured is None or predicted is None or predicted <= 0:
        return None
    return measured / predicted


def _compare_studies(a: Any, b: Any) -> dict[str, Any]:
    """Per-problem equality of two studies of the same problems (exact, and max differences)."""
    arrays = ("clean_answer", "clean_logp", "answer", "logp", "logp_first", "kl", "attention")
    diffs: dict[str, float] = {}
    identical = list(a.clean_text) == list(b.clean_text)
    for name in arrays:
        x, y = np.asarray(getattr(a, name), float), np.asarray(getattr(b, name), float)
        same = np.array_equal(x, y, equal_nan=True)
        identical &= same
        finite = np.isfinite(x) & np.isfinite(y)
        diffs[name] = float(np.max(np.abs(x[finite] - y[finite]), initial=0.0))
    answers_equal = int(
        np.sum(
            (a.answer == b.answer) | (np.isnan(a.answer) & np.isnan(b.answer)),
        )
    )
    return {
        "identical": bool(identical),
        "answers_equal": f"{answers_equal}/{a.answer.size}",
        "clean_texts_equal": list(a.clean_text) == list(b.clean_text),
        "max_abs_diff": diffs,
    }


def _replica_name(ckpt: Path) -> str:
    """``llama1b`` / ``gpt2`` from the replica's ``replica.json``, else the folder name."""
    info = ckpt.parent / "replica.json"
    if info.is_file():
        return str(json.loads(info.read_text()).get("model", ckpt.parent.name))
    return ckpt.name


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Load the replica, run the study through the project's runner, measure and predict."""
    from codi_fixtures.analyses import StudyAnalysis
    from codi_fixtures.answers import format_number
    from codi_fixtures.config import parse_kinds
    from codi_fixtures.engine import answer_targets
    from codi_fixtures.model.codi import load_codi
    from codi_fixtures.study.batching import resolve_batch_rows
    from codi_fixtures.study.conditions import default_requirements
    from codi_fixtures.study.data import load_problems, stratified_sample
    from codi_fixtures.study.runs import compute_study, dimensions_of

    t_start = time.perf_counter()
    kinds = parse_kinds(args.kinds)
    problems_path = args.problems or default_problems()
    cache = Path(tempfile.mkdtemp(prefix="codi-real-size-"))
    settings = Settings(
        model=ModelConfig(
            ckpt=args.ckpt, base=str(args.base), device=args.device, dtype=args.dtype
        ),
        problems=problems_path,
        run=RunConfig(kinds=kinds, batch_rows=args.batch_rows, seed=args.seed),
        importance_kind="mean" if "mean" in kinds else kinds[0],
        cache_dir=cache,
    )
    model = load_codi(settings.model)
    _sync(model.device)
    load_s = time.perf_counter() - t_start
    rss_after_load = peak_rss_bytes()
    problems = stratified_sample(
        load_problems(problems_path), settings.tiers[args.tier], seed=settings.run.seed
    )
    shape = budget.shape_of(model)
    batch_rows_used = resolve_batch_rows(
        settings.run.batch_rows, model, problems, settings.run.max_new_tokens
    )
    counter = ForwardCounter(shape)
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(model.device)
    rss_before = _status_bytes("VmRSS")
    hwm_reset = _reset_rss_peak()
    _sync(model.device)
    t_engine = time.perf_counter()
    with counter.attached(model):
        results = compute_study(model, problems, settings.run, settings.cache_dir)
    _sync(model.device)
    engine_s = time.perf_counter() - t_engine
    engine_hwm = _status_bytes("VmHWM") if hwm_reset else None
    gpu_peak = int(torch.cuda.max_memory_allocated(model.device)) if cuda else None
    t_analysis = time.perf_counter()
    analysis = StudyAnalysis.from_settings(results, settings)
    importance = analysis.importance()
    analysis_s = time.perf_counter() - t_analysis

    split: dict[str, Any] | None = None
    if args.split_rows:
        split_cfg = RunConfig(
            kinds=kinds, batch_rows=args.batch_rows, seed=args.seed, max_rows=args.split_rows
        )
        t_split = time.perf_counter()
        again = compute_study(model, problems, split_cfg, cache / "split")
        split = {
            "max_rows": args.split_rows,
            "wall_s": round(time.perf_counter() - t_split, 2),
            **_compare_studies(results, again),
        }

    limited: dict[str, Any] | None = None
    if args.memory_limit_mb:
        again, limited = _limited_run(
            model, problems, settings.run, cache / "limited", args.memory_limit_mb
        )
        limited.update(_compare_studies(results, again))

    # The cost model for exactly this study (token counts taken from this run).
    n = len(problems)
    conditions = len(default_requirements(settings.run, dimensions_of(model)).conditions)
    rows = 1 + conditions
    q_lens = [int(q) for q in results.meta["q_len"]]  # type: ignore[union-attr]
    tok = model.tokenizer
    answer_lens = [
        len(tok(text, add_special_tokens=False)["input_ids"]) + 1 for text in results.clean_text
    ]
    targets, _ = answer_targets(model, [format_number(p.answer) for p in problems])
    study = budget.StudyShape(
        question_tokens=round(float(np.mean(q_lens))),
        answer_tokens=min(settings.run.max_new_tokens, max(answer_lens)),
        scored_tokens=max(len(t) for t in targets),
        n_thoughts=model.spec.n_thoughts,
        conditions=conditions,
    )
    dtype_bytes = model.dtype.itemsize
    per_batch = max(1, batch_rows_used // rows)
    batch_rows = min(n, per_batch) * rows
    flops_pred = budget.study_flops(shape, study).total * n
    memory = budget.memory_estimate(
        shape, batch_rows, study.seq_len, dtype_bytes, scored_tokens=study.scored_tokens
    )
    compute_s = budget.study_seconds(flops_pred)
    stream_s = budget.streaming_seconds(shape, study, n, batch_rows_used, dtype_bytes)
    clean_batches = math.ceil(n / max(1, batch_rows_used))
    ablation_batches = math.ceil(n / per_batch)
    t = study.n_thoughts
    calls_pred = clean_batches * (t + 2) + ablation_batches * (t + 3 + study.answer_tokens - 1)
    if cuda:
        mem_measured, mem_pred, mem_what = gpu_peak, memory.total, "torch.cuda.max_memory_allocated"
    else:
        delta = None if engine_hwm is None or rss_before is None else engine_hwm - rss_before
        mem_measured, mem_pred = delta, memory.total - memory.weights
        mem_what = "RSS high-water mark during the engine minus RSS before it (weights excluded)"
    ratios = {
        "flops_counted_vs_predicted": _ratio(counter.flops, flops_pred),
        "decoder_calls": _ratio(counter.calls, calls_pred),
        "memory": _ratio(mem_measured, mem_pred),
        "engine_time_vs_h100_prediction": _ratio(engine_s, max(compute_s, stream_s)),
    }
    flags = [
        f"{name}: measured/predicted = {r:.3g}"
        for name, r in ratios.items()
        if r is not None and not 1 / RATIO_FLAG <= r <= RATIO_FLAG
    ]
    return {
        "model": _replica_name(args.ckpt),
        "ckpt": str(args.ckpt),
        "base": str(args.base),
        "device": str(model.device),
        "device_name": (
            torch.cuda.get_device_name(model.device) if cuda else f"{platform.machine()} CPU"
        ),
        "dtype": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tier": args.tier,
        "problems_file": str(problems_path),
        "n_problems": n,
        "kinds": list(kinds),
        "conditions": conditions,
        "rows_per_problem": rows,
        "rows_total": rows * n,
        "batch_rows": batch_rows_used,
        "batch_rows_option": "auto" if settings.run.batch_rows is None else settings.run.batch_rows,
        "rows_per_ablation_batch": batch_rows,
        "parameters": shape.n_params,
        "parameters_published_estimate": REPLICAS_BY_TYPE_PARAMS.get(shape.vocab),
        "study_shape": {
            "question_tokens_mean": float(np.mean(q_lens)),
            "question_tokens_max": max(q_lens),
            "answer_tokens": study.answer_tokens,
            "scored_tokens": study.scored_tokens,
            "seq_len": study.seq_len,
        },
        "measured": {
            "decoder_forward_calls": counter.calls,
            "decoder_token_rows": counter.tokens,
            "lm_head_positions": counter.head_positions,
            "flops_counted": counter.flops,
            "load_s": round(load_s, 3),
            "engine_s": round(engine_s, 3),
            "analysis_s": round(analysis_s, 3),
            "total_s": round(time.perf_counter() - t_start, 3),
            "peak_rss_bytes": peak_rss_bytes(),
            "rss_after_load_bytes": rss_after_load,
            "engine_rss_delta_bytes": None if cuda else mem_measured,
            "cuda_max_memory_allocated_bytes": gpu_peak,
            "achieved_tflops_budget_estimate": flops_pred / engine_s / 1e12,
            "achieved_tflops_counted": counter.flops / engine_s / 1e12,
            "clean_accuracy": float(np.mean(results.clean_correct)),
            "nonfinite_rows": int(results.nonfinite.sum() + results.clean_nonfinite.sum()),
            "importance_finite": bool(np.isfinite(importance).all()),
        },
        "predicted": {
            "flops": flops_pred,
            "flops_per_problem": flops_pred / n,
            "decoder_forward_calls": calls_pred,
            "memory_bytes": memory.total,
            "memory_weights_bytes": memory.weights,
            "memory_kv_bytes": memory.kv_cache,
            "memory_transient_bytes": memory.transient,
            "memory_compared": mem_what,
            "memory_compared_bytes": mem_pred,
            "time_s_h100": max(compute_s, stream_s),
            "time_compute_bound_s_h100": compute_s,
            "time_streaming_bound_s_h100": stream_s,
        },
        "ratios_measured_over_predicted": ratios,
        "flags": flags,
        "split_check": split,
        "memory_limit_check": limited,
    }


REPLICAS_BY_TYPE_PARAMS = {r.published.vocab: r.published.n_params for r in REPLICAS.values()}


# --- command line ----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``build`` or ``measure`` (see the module docstring)."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write a random replica in the published layout")
    b.add_argument("--model", choices=sorted(REPLICAS), required=True)
    b.add_argument("--out", type=Path, required=True, help="folder for ckpt/, base/, replica.json")
    b.add_argument("--device", default="cpu", help="where the weights are drawn (cpu, cuda)")
    b.add_argument("--dtype", choices=sorted(k for k in ("float32", "bfloat16", "float16")))
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--corpus", type=Path, default=None, help="JSONL to train the tokenizer on")
    b.add_argument("--bpe-vocab", type=int, default=BPE_VOCAB, help="learned BPE tokens")
    m = sub.add_parser("measure", help="run the study on a replica; print one JSON object")
    m.add_argument("--ckpt", type=Path, required=True)
    m.add_argument("--base", type=Path, required=True)
    m.add_argument("--device", default="cpu")
    m.add_argument("--dtype", default="float32")
    m.add_argument("--tier", choices=sorted(TIERS), default="quick")
    m.add_argument("--kinds", default="zero,mean,noise,resample")
    m.add_argument("--problems", type=Path, default=None, help="default: GSM8K test or bundled")
    m.add_argument("--batch-rows", type=parse_batch_rows, default=None, help="rows, or auto")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--split-rows", type=int, default=0, help="rerun with max_rows=N; compare")
    m.add_argument(
        "--memory-limit-mb",
        type=int,
        default=0,
        help="rerun under a real address-space limit of (size now + N MiB); compare",
    )
    m.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.command == "build" and args.dtype is None:
        args.dtype = "float32"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints the build summary or the measurement as JSON on stdout."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    torch.set_num_threads(args.threads)
    if args.command == "build":
        result = build(
            args.model,
            args.out,
            device=args.device,
            dtype=args.dtype,
            seed=args.seed,
            corpus=args.corpus,
            bpe_vocab=args.bpe_vocab,
        )
    else:
        result = measure(args)
    text = json.dumps(result, indent=2, default=str)
    print(text, flush=True)
    if getattr(args, "json", None):
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

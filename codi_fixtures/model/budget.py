"""An analytic cost model for a CODI study on a decoder: FLOPs, memory, batch size.

Estimates, not measurements. For one problem with ``Q`` question tokens (``<bot>``
adds one), ``T`` thoughts, ``A`` generated answer tokens, ``K`` teacher-forced
(scored) tokens and ``C`` conditions, the engine (:mod:`codi_fixtures.study.runs`)
does:

- prefix: the question + ``<bot>`` encoded twice (clean pass, ablation pass; a study that is
  one chunk per pass encodes it once and shares it: counted twice here, an upper bound);
- rows: ``1 + C`` rows branch from the prefix; each feeds T thoughts (no
  logits), then ``<eot>``, A answer tokens and K scored tokens (with logits);
- the clean pass adds one row of T thoughts + ``<eot>``.

FLOPs per token = ``2 * body`` (every non-embedding weight once, multiply-add)
``+ 2 * V * d`` when logits are computed (LM head) ``+ 4 * L * H * hd * keys``
(scores and weighted values). ``keys`` is an upper bound: Q + 1 for prefix
tokens, the final length S = Q + 1 + T + 1 + A for row tokens.

Memory = weights + per-row bytes x rows, per row:

- KV cache ``2 * L * kv_heads * hd * S * bytes``, counted twice: the question prefix the
  rows branch from stays alive beside them, and dropping finished rows moves one layer's
  tensor at a time through a temporary (:meth:`codi_fixtures.engine.LoopState.keep`): an
  upper bound on the transient;
- logits of the K scored positions: ``V * K * (bytes + 3 * 4)`` (head output,
  float32 copy, concatenation and log-softmax), at least one float32 row of
  ``V * 4`` for the last-position logits;
- one token's activations ``(4 * d + 3 * ffn + H * S) * bytes`` (small).

Time = max(FLOPs / sustained throughput, streaming floor). The default
throughput, 40% of the H100 SXM's 989 TFLOP/s dense bf16, is an assumption. The
streaming floor: each of the engine's sequential forward steps per batch reads
the weights and the batch's KV cache once, at 3.35 TB/s (H100 HBM3). Python and
kernel-launch overhead are not modelled: both are lower bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GPT2_SMALL",
    "H100_BF16_PEAK",
    "H100_HBM_BANDWIDTH",
    "LLAMA_3_2_1B",
    "SUSTAINED_FRACTION",
    "FlopEstimate",
    "MemoryEstimate",
    "ModelShape",
    "StudyShape",
    "attention_flops_per_token",
    "format_published_estimates",
    "kv_cache_bytes",
    "logits_bytes_per_row",
    "memory_estimate",
    "per_row_bytes",
    "sequential_steps",
    "shape_of",
    "streaming_seconds",
    "study_flops",
    "study_seconds",
    "suggest_batch_rows",
    "token_flops",
    "weights_bytes",
]

H100_BF16_PEAK = 989e12
"""Dense bf16 tensor-core peak of one H100 SXM, FLOP/s."""
H100_HBM_BANDWIDTH = 3.35e12
"""HBM3 bandwidth of one H100 SXM, bytes/s."""
SUSTAINED_FRACTION = 0.4
"""Assumed fraction of peak a study sustains (an assumption, not a measurement)."""
GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    """What the cost model needs to know about a CODI decoder."""

    name: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int  # embedding rows: base vocabulary + 3 CODI tokens
    n_params: int  # unique parameters, projection included
    tied_embeddings: bool = True

    @property
    def body_params(self) -> int:
        """Parameters that every token multiplies (all but the embedding / LM head)."""
        return self.n_params - self.vocab * self.hidden * (1 if self.tied_embeddings else 2)


# LLaMA-3.2-1B: 1,235,814,400 parameters; +3 rows x 2048; + projection (2048 -> 2048 -> 2048, LN).
LLAMA_3_2_1B = ModelShape(
    name="LLaMA-3.2-1B CODI",
    n_layers=16,
    hidden=2048,
    n_heads=32,
    n_kv_heads=8,
    head_dim=64,
    ffn=8192,
    vocab=128256 + 3,
    n_params=1_235_814_400 + 3 * 2048 + 2 * (2048 * 2048 + 2048) + 2 * 2048,
)
# GPT-2 small: 124,439,808 parameters; +3 rows x 768; + projection (768 -> 768 -> 768, LN).
GPT2_SMALL = ModelShape(
    name="GPT-2 small CODI",
    n_layers=12,
    hidden=768,
    n_heads=12,
    n_kv_heads=12,
    head_dim=64,
    ffn=3072,
    vocab=50257 + 3,
    n_params=124_439_808 + 3 * 768 + 2 * (768 * 768 + 768) + 2 * 768,
)


@dataclass(frozen=True)
class StudyShape:
    """Token counts of one problem in a study (defaults: GSM8K-like, all four kinds)."""

    question_tokens: int = 100  # Q, BOS included, <bot> not
    answer_tokens: int = 8  # A, generated ("The answer is: 18" + eos)
    scored_tokens: int = 8  # K, teacher-forced target width
    n_thoughts: int = 6  # T
    conditions: int = 28  # C: 4 kinds x (6 single thoughts + all)
    prefix_passes: int = 2  # clean and ablation pass each encode it (one chunk each: shared)
    clean_pass_rows: int = 1  # latent-only rows of the clean pass

    @property
    def rows(self) -> int:
        """Rows per problem in the ablation pass: clean + one per condition."""
        return 1 + self.conditions

    @property
    def prefix_len(self) -> int:
        """Question + ``<bot>``."""
        return self.question_tokens + 1

    @property
    def seq_len(self) -> int:
        """S: cached length at the end of decoding."""
        return self.prefix_len + self.n_thoughts + 1 + self.answer_tokens


def attention_flops_per_token(shape: ModelShape, keys: float) -> float:
    """QK^T and attention-weighted V over ``keys`` keys, all layers: 4 * L * H * hd * keys."""
    return 4.0 * shape.n_layers * shape.n_heads * shape.head_dim * keys


def token_flops(shape: ModelShape, keys: float, logits: bool) -> float:
    """FLOPs of one token through the decoder (and the LM head when ``logits``)."""
    dense = 2.0 * shape.body_params
    head = 2.0 * shape.vocab * shape.hidden if logits else 0.0
    return dense + head + attention_flops_per_token(shape, keys)


@dataclass(frozen=True)
class FlopEstimate:
    """FLOPs per problem, by phase."""

    prefix: float
    latent: float  # thoughts of every row (clean-pass rows included)
    answer: float  # <eot> + generated + scored tokens of every row
    total: float


def study_flops(shape: ModelShape, study: StudyShape) -> FlopEstimate:
    """FLOPs per problem for the whole study (see the module docstring)."""
    p, s, t = study.prefix_len, study.seq_len, study.n_thoughts
    prefix = study.prefix_passes * p * token_flops(shape, p, logits=False)
    latent_rows = study.rows + study.clean_pass_rows
    latent = latent_rows * t * token_flops(shape, s, logits=False)
    with_logits = study.rows * (1 + study.answer_tokens + study.scored_tokens)
    with_logits += study.clean_pass_rows  # the clean pass's <eot>
    answer = with_logits * token_flops(shape, s, logits=True)
    return FlopEstimate(prefix, latent, answer, prefix + latent + answer)


def study_seconds(flops: float, throughput: float = SUSTAINED_FRACTION * H100_BF16_PEAK) -> float:
    """Seconds at a sustained ``throughput`` (FLOP/s): a lower bound, see the docstring."""
    return flops / throughput


def sequential_steps(study: StudyShape) -> int:
    """Forward calls per batch: clean pass (prefix, T, <eot>) + ablation pass (+ score, decode)."""
    clean = 1 + study.n_thoughts + 1
    ablation = 1 + study.n_thoughts + 1 + 1 + (study.answer_tokens - 1)
    return clean + ablation


def streaming_seconds(
    shape: ModelShape,
    study: StudyShape,
    n_problems: int,
    batch_rows: int,
    dtype_bytes: int,
    bandwidth: float = H100_HBM_BANDWIDTH,
) -> float:
    """Memory-bound floor: every sequential step reads the weights and the batch's KV cache."""
    per_batch = max(1, batch_rows // study.rows)  # problems per batch, as runs.py chunks them
    batches = math.ceil(n_problems / per_batch)
    rows = per_batch * study.rows
    step_bytes = weights_bytes(shape, dtype_bytes) + kv_cache_bytes(
        shape, study.seq_len, dtype_bytes, rows
    )
    return batches * sequential_steps(study) * step_bytes / bandwidth


def weights_bytes(shape: ModelShape, dtype_bytes: int) -> int:
    """Bytes of the weights."""
    return shape.n_params * dtype_bytes


def kv_cache_bytes(shape: ModelShape, seq_len: int, dtype_bytes: int, rows: int = 1) -> int:
    """Keys + values of ``rows`` sequences of ``seq_len``: 2 * L * kv * hd * S * bytes each."""
    return 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * seq_len * dtype_bytes * rows


def logits_bytes_per_row(shape: ModelShape, positions: int, dtype_bytes: int) -> int:
    """Transient logits of one row: ``positions`` scored positions, at least one float32 row."""
    scored = shape.vocab * positions * (dtype_bytes + 3 * 4)
    return max(scored, shape.vocab * 4)


def per_row_bytes(
    shape: ModelShape,
    seq_len: int,
    dtype_bytes: int,
    *,
    scored_tokens: int = StudyShape.scored_tokens,
    kv_copies: int = 2,
) -> int:
    """Memory one row adds at the engine's peak (KV copies, logits, activations)."""
    kv = kv_copies * kv_cache_bytes(shape, seq_len, dtype_bytes)
    logits = logits_bytes_per_row(shape, scored_tokens, dtype_bytes)
    act = (4 * shape.hidden + 3 * shape.ffn + shape.n_heads * seq_len) * dtype_bytes
    return kv + logits + act


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes at the peak of a batch of ``rows`` rows."""

    weights: int
    kv_cache: int
    transient: int  # logits + activations
    total: int


def memory_estimate(
    shape: ModelShape, rows: int, seq_len: int, dtype_bytes: int, *, scored_tokens: int = 8
) -> MemoryEstimate:
    """Weights + ``rows`` x per-row bytes, itemised."""
    weights = weights_bytes(shape, dtype_bytes)
    kv = 2 * kv_cache_bytes(shape, seq_len, dtype_bytes, rows)
    per_row = per_row_bytes(shape, seq_len, dtype_bytes, scored_tokens=scored_tokens)
    transient = rows * per_row - kv
    return MemoryEstimate(weights, kv, transient, weights + kv + transient)


def suggest_batch_rows(
    shape: ModelShape,
    memory_bytes: float,
    seq_len: int,
    dtype_bytes: int,
    safety: float = 0.8,
    *,
    scored_tokens: int = StudyShape.scored_tokens,
) -> int:
    """The largest ``batch_rows`` whose estimated peak fits in ``safety * memory_bytes``.

    Raises ValueError when the weights alone, or the weights and one row, do not fit.
    """
    if not 0 < safety <= 1:
        raise ValueError(f"safety must be in (0, 1], got {safety}")
    usable = safety * memory_bytes
    weights = weights_bytes(shape, dtype_bytes)
    if weights >= usable:
        raise ValueError(
            f"memory budget too small for {shape.name}: its weights take "
            f"{weights / GIB:.2f} GiB ({dtype_bytes} bytes/parameter) but the budget is "
            f"{memory_bytes / GIB:.2f} GiB x safety {safety} = {usable / GIB:.2f} GiB; use a "
            "smaller dtype or a larger device"
        )
    per_row = per_row_bytes(shape, seq_len, dtype_bytes, scored_tokens=scored_tokens)
    rows = math.floor((usable - weights) / per_row)
    if rows < 1:
        raise ValueError(
            f"memory budget too small for {shape.name}: after {weights / GIB:.2f} GiB of "
            f"weights, {(usable - weights) / GIB:.3f} GiB remain, less than one row "
            f"({per_row / GIB:.3f} GiB at sequence length {seq_len})"
        )
    return rows


def shape_of(model: object) -> ModelShape:
    """The :class:`ModelShape` of a loaded :class:`~codi_fixtures.model.CodiModel`."""
    from codi_fixtures.model.architecture import unwrap_peft
    from codi_fixtures.model.codi import CodiModel

    if not isinstance(model, CodiModel):
        raise TypeError(f"shape_of needs a CodiModel, got {type(model).__name__}")
    inner: Any = unwrap_peft(model.codi)
    config = inner.config
    heads = int(config.num_attention_heads)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or model.hidden_size // heads
    ffn = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    out = model.codi.get_output_embeddings()
    tied = out is not None and out.weight is model.embeddings.weight
    return ModelShape(
        name=f"CODI {getattr(config, 'model_type', '?')} ({model.n_layers} layers)",
        n_layers=model.n_layers,
        hidden=model.hidden_size,
        n_heads=heads,
        n_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        ffn=int(ffn or 4 * model.hidden_size),
        vocab=int(model.embeddings.weight.shape[0]),
        n_params=sum(p.numel() for p in model.parameters()),
        tied_embeddings=tied,
    )


def format_published_estimates(
    n_problems: tuple[int, ...] = (100, 1319),
    budgets_gb: tuple[int, ...] = (80, 24),
    dtype_bytes: int = 2,
    throughput: float = SUSTAINED_FRACTION * H100_BF16_PEAK,
    study: StudyShape | None = None,
) -> str:
    """A text table: both published models, suggested batch rows and estimated time.

    Time is ``max(compute, streaming)`` with the H100 assumptions (FLOPs at
    ``throughput``; weights + KV read per sequential step at HBM bandwidth).
    """
    study = study or StudyShape()
    lines = [
        f"ESTIMATES (analytic, codi_fixtures.model.budget), bf16: Q={study.question_tokens} "
        f"question tokens, A={study.answer_tokens} answer, K={study.scored_tokens} scored, "
        f"{study.rows} rows/problem (clean + {study.conditions} conditions), S={study.seq_len}.",
        f"Time ASSUMES an H100: {throughput / 1e12:.0f} TFLOP/s sustained "
        f"({SUSTAINED_FRACTION:.0%} of {H100_BF16_PEAK / 1e12:.0f} dense bf16) and "
        f"{H100_HBM_BANDWIDTH / 1e12:.2f} TB/s per weight+KV read of each of the "
        f"{sequential_steps(study)} sequential steps per batch; a lower bound (no Python or "
        "launch overhead). The 24 GB rows use the same speed: only the batch size differs.",
        f"{'model':<18} {'GB':>3} {'weights':>8} {'MB/row':>7} {'rows':>6} {'pb/batch':>8} "
        f"{'GFLOP/pb':>9} " + " ".join(f"{'t(N=' + str(n) + ')':>10}" for n in n_problems),
    ]
    for shape in (LLAMA_3_2_1B, GPT2_SMALL):
        flops = study_flops(shape, study).total
        per_row = per_row_bytes(shape, study.seq_len, dtype_bytes)
        for gb in budgets_gb:
            rows = suggest_batch_rows(shape, gb * 1e9, study.seq_len, dtype_bytes)
            times = []
            for n in n_problems:
                compute = study_seconds(flops * n, throughput)
                stream = streaming_seconds(shape, study, n, rows, dtype_bytes)
                times.append(f"{max(compute, stream):>9.2f}s")
            lines.append(
                f"{shape.name:<18} {gb:>3} {weights_bytes(shape, dtype_bytes) / 1e9:>6.2f}GB "
                f"{per_row / 1e6:>7.1f} {rows:>6} {rows // study.rows:>8} "
                f"{flops / 1e9:>9.0f} {' '.join(times)}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m codi_fixtures.model.budget [--conditions C]``: the published estimates."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m codi_fixtures.model.budget")
    parser.add_argument(
        "--conditions",
        type=int,
        default=StudyShape.conditions,
        help="conditions per problem besides the clean row (default 28 = RQ1 + RQ2; "
        "175 = RQ1, RQ2, RQ5, RQ6)",
    )
    args = parser.parse_args(argv)
    print(format_published_estimates(study=StudyShape(conditions=args.conditions)))


if __name__ == "__main__":
    main()

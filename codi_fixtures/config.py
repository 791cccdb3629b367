"""Typed configuration (model, run, settings), built once from pytest options or by hand.

Pure dataclasses with no heavy imports, so the pytest plugin can load them at start-up.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

from codi_fixtures.errors import ConfigError

__all__ = [
    "ABLATION_KINDS",
    "BUNDLED_CHECKPOINT",
    "TIERS",
    "AblationKind",
    "ModelConfig",
    "RunConfig",
    "Settings",
    "parse_batch_rows",
    "parse_kinds",
    "parse_layers",
    "parse_subset_kinds",
    "tier_of_markexpr",
]

BUNDLED_CHECKPOINT = Path(__file__).parent / "bundled"
"""The tiny CODI organism shipped with the package (default model)."""

AblationKind = Literal["zero", "mean", "noise", "resample"]
ABLATION_KINDS: tuple[str, ...] = get_args(AblationKind)

TIERS: dict[str, int] = {"quick": 10, "full": 100}
"""Problems per tier (stratified over the difficulty bins)."""


@dataclass(frozen=True)
class ModelConfig:
    """Which CODI checkpoint to load, and where to run it."""

    ckpt: Path | None = None
    """Checkpoint directory; None loads the bundled organism."""
    base: str | None = None
    """Base model directory or HF name (config + tokenizer); default: the checkpoint dir."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    dtype: str = "auto"
    """``auto`` (float32 on CPU, bfloat16 on CUDA), ``float32``, ``bfloat16``, ``float16``."""
    allow_download: bool = False
    """Permit fetching the base config/tokenizer from the Hugging Face hub."""
    merge_lora: bool = True
    """Fold LoRA into the base weights after loading (faster; same function)."""


@dataclass(frozen=True)
class RunConfig:
    """What the study computes; part of the cache fingerprint."""

    kinds: tuple[str, ...] = ABLATION_KINDS
    """Ablation kinds to run (each for every thought, plus all thoughts at once)."""
    site: str = "embedding"
    """``embedding`` (thought input) or ``block<L>`` (output of decoder block L)."""
    seed: int = 0
    """Seed for noise draws and resample donors."""
    max_new_tokens: int = 24
    """Cap on generated answer tokens (decoding stops at eos before that)."""
    batch_rows: int | None = None
    """Sequences per forward pass (None: ``auto``, what memory allows); a chunk holds
    batch_rows // (1 + conditions) problems."""
    max_rows: int | None = None
    """Simulated device budget: a batch above it raises OutOfMemoryError (then split)."""
    value_domain: tuple[float, float, bool] | None = None
    """The values the task's step chains take (low, high, integers only): RQ4's counterfactual
    chains must stay inside them. None: the run's problem set's own. The plugin passes the
    whole problem source's, so that every tier sample uses the same rule."""

    def __post_init__(self) -> None:
        if self.batch_rows is not None and self.batch_rows < 1:
            raise ConfigError(f"--batch-rows must be at least 1, got {self.batch_rows}")
        if self.max_rows is not None and self.max_rows < 0:  # 0: not even one row fits
            raise ConfigError(f"--max-batch-rows must be >= 0, got {self.max_rows}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")

    def fingerprint_dict(self) -> dict[str, object]:
        """Fields that change results (batch sizes do not)."""
        data = asdict(self)
        data.pop("batch_rows")
        data.pop("max_rows")
        return data


def parse_batch_rows(text: str) -> int | None:
    """``--batch-rows``: ``auto`` (None: what memory allows) or a positive number of rows."""
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--batch-rows {text!r}: give a number of rows or auto") from None


def parse_kinds(text: str) -> tuple[str, ...]:
    """``zero,mean`` -> ("zero", "mean"); unknown kinds are an error naming the allowed ones."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in ABLATION_KINDS]
    if unknown or not kinds:
        raise ConfigError(
            f"--kinds {text!r}: unknown ablation kind {unknown[0] if unknown else '(none)'!r}; "
            f"allowed: {','.join(ABLATION_KINDS)}"
        )
    return kinds


def parse_subset_kinds(text: str) -> tuple[str, ...]:
    """``--subset-kinds``: ``none`` (no subset ablations) or kinds like ``mean,zero``."""
    if text.strip().lower() == "none":
        return ()
    try:
        return parse_kinds(text)
    except ConfigError as err:
        raise ConfigError(str(err).replace("--kinds", "--subset-kinds")) from None


def parse_layers(text: str | None) -> tuple[int, int, int] | None:
    """``4,8,14`` -> (4, 8, 14): the early / middle / late layers."""
    if not text:
        return None
    try:
        layers = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--layers {text!r}: expected three integers like 4,8,14") from None
    if len(layers) != 3:
        raise ConfigError(f"--layers {text!r}: give exactly three layers (early,middle,late)")
    if min(layers) < 0:
        raise ConfigError(f"--layers {text!r}: layers are 0-based block indices, not negative")
    if len(set(layers)) != 3:
        raise ConfigError(f"--layers {text!r}: the three layers must differ, e.g. 1,3,5")
    return layers[0], layers[1], layers[2]


def tier_of_markexpr(markexpr: str) -> str:
    """The report folder for a ``-m`` expression: ``quick``, ``full`` or ``all``."""
    expr = markexpr.strip()
    return expr if expr in TIERS else "all"


@dataclass(frozen=True)
class Settings:
    """Everything a study run depends on; the run part is also the cache fingerprint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Which checkpoint, device and dtype."""
    problems: Path | None = None
    """Problem file; None uses the bundled model's held-out set (only for the organism)."""
    run: RunConfig = field(default_factory=RunConfig)
    """Ablation kinds, site, seed, batch sizes."""
    importance_kind: str = "mean"
    """Ablation kind whose delta log p is the importance in RQ2."""
    layers: tuple[int, int, int] | None = None
    """Early / middle / late layers; None derives them from depth (n/4, n/2, 7n/8)."""
    alpha: float = 0.05
    """Significance level for every claim (after Holm correction)."""
    min_correct: int = 3
    """Fewest correct clean answers for a claim to be judged (else it is skipped)."""
    min_effect_logp: float = 0.1
    """SESOI for a mean delta log p(gold), in nats (RQ1)."""
    min_effect_acc: float = 0.05
    """SESOI for an accuracy drop, as a fraction of problems (RQ1)."""
    min_effect_r: float = 0.1
    """SESOI for a correlation (RQ2)."""
    subset_kinds: tuple[str, ...] = ("mean",)
    """RQ5: ablation kinds whose every subset of thoughts is run (those among ``run.kinds``)."""
    knockout_heads: bool = False
    """RQ6: also knock out each (layer, head, thought) edge on its own."""
    max_step: int = 3
    """RQ3, RQ4 and routing: claims for reasoning steps 1..max_step."""
    rq3_all_layers: bool = False
    """RQ3: probe every layer (``--rq3-all-layers``), which widens each probe cell's family."""
    tiers: dict[str, int] = field(default_factory=lambda: dict(TIERS))
    """Problems per tier."""
    cache_dir: Path = Path(".codi_cache")
    """Where computed studies are stored (keyed by fingerprint)."""
    report_dir: Path = Path("reports")
    """Where report.html, figures/ and summary_statistics.json go."""

    def __post_init__(self) -> None:
        if self.max_step < 1:
            raise ConfigError(f"--max-step must be at least 1, got {self.max_step}")
        for tier, n in self.tiers.items():
            if n < 1:
                raise ConfigError(f"--{tier}-n must be at least 1 problem, got {n}")
        if not 0 < self.alpha < 0.5:
            raise ConfigError(
                f"--alpha must be between 0 and 0.5 (verdicts use 1-2*alpha CIs), got {self.alpha}"
            )
        for name, value, top in (
            ("--min-effect-logp", self.min_effect_logp, float("inf")),
            ("--min-effect-acc", self.min_effect_acc, 1.0),
            ("--min-effect-r", self.min_effect_r, 1.0),
        ):
            if not 0 <= value < top:
                raise ConfigError(f"{name} must be >= 0 (and < {top}), got {value}")
        if self.importance_kind not in self.run.kinds:
            raise ConfigError(
                f"--importance-kind {self.importance_kind!r} is not among the ablation kinds "
                f"run ({','.join(self.run.kinds)}); add it to --kinds"
            )

    @property
    def model_label(self) -> str:
        """``bundled`` for the organism, else the checkpoint directory's name."""
        ckpt = self.model.ckpt
        if ckpt is None or Path(ckpt).resolve() == BUNDLED_CHECKPOINT.resolve():
            return "bundled"
        return Path(ckpt).name

    @property
    def problems_label(self) -> str:
        """The ``--problems`` file, or which checkpoint's own held-out set is used."""
        if self.problems is not None:
            return str(self.problems)
        return f"{self.model_label} held-out set (eval.jsonl)"

    def describe(self) -> dict[str, object]:
        """Plain-JSON view for reports."""
        data = asdict(self)
        return json.loads(json.dumps(data, default=str))

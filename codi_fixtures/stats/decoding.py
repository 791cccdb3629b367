"""RQ3 / RQ4 statistics on readout arrays: lens rates, probes, IIA, the link to RQ1.

numpy / scipy / scikit-learn only (no torch): inputs are the arrays of
:class:`codi_fixtures.study.readouts.Readouts` and :mod:`codi_fixtures.study.interchange`,
outputs are :class:`~codi_fixtures.stats.StatResult` (statistic, CI, p, n) or small dataclasses.

- Lens decoding rate of target k at (position, site): fraction of problems with a
  decodable target k whose lens top-``topk`` holds the target's first token. Baseline: the
  *value-distribution rate*, the share of the commonest first token among those problems
  (what a reader that ignores the problem and always names that token scores; the best
  any problem-blind reader can do). The lens and that reader are compared paired over the
  same problems (Tango's score test and CI, :func:`paired_effect`): the baseline is estimated
  on those problems too, so it is not a known constant.
- Probes: multinomial logistic regression (standardised features) per (target, position,
  site), ``n_folds``-fold cross-validation over problems (every row is one problem, so the
  folds are problem-disjoint); per-problem out-of-fold correctness. Baselines: the same
  probe on labels permuted across problems, and the same probe at the question's own
  positions (``q_last``, ``bot``; the best of them over the probed sites). Accuracy minus a
  baseline: a paired difference of proportions over problems, Tango's score test and CI
  (:func:`paired_effect`).
- Interchange accuracy (IIA) and its baselines, paired per recipient, the same way.
- :func:`rq1_link_test`: is the thought that best encodes step k among the thoughts whose
  ablation hurts most (thoughts ranked by RQ1's 20% trimmed mean of Δ log p)? Percentile
  bootstrap over problems (CI, p, verdict); the exact p over thought relabelings is reported.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from codi_fixtures.stats.equivalence import decide
from codi_fixtures.stats.inference import (
    TRIM_FRACTION,
    DegenerateData,
    StatResult,
    accuracy_drop_effect,
    holm,
    inconclusive_verdict,
    mean_effect,
    pvalue_or_one,
)

__all__ = [
    "IiaSummary",
    "InterchangeRows",
    "LinkResult",
    "ProbeGrid",
    "RateResult",
    "cv_probe",
    "equivalence_effect",
    "equivalence_verdicts",
    "iia_summary",
    "iia_summary_of",
    "lens_rate",
    "lens_rate_table",
    "paired_effect",
    "probe_effects",
    "probe_grid",
    "rq1_link_test",
    "value_baseline",
]

FloatArray = NDArray[np.float64]
QUESTION_POSITIONS = ("q_last", "bot")
_BOOT_CHUNK = 1 << 21  # elements per batch of bootstrap resamples (~16 MiB of float64)


# --------------------------------------------------------------------------- logit lens


def value_baseline(tokens: NDArray[np.int64]) -> tuple[float, int]:
    """(share of the commonest first token, that token) among ``tokens`` >= 0; nan if none."""
    valid = tokens[tokens >= 0]
    if valid.size == 0:
        return math.nan, -1
    ids, counts = np.unique(valid, return_counts=True)
    return float(counts.max() / valid.size), int(ids[counts.argmax()])


@dataclass(frozen=True)
class RateResult:
    """A lens decoding rate, its value-distribution baseline and the test of rate > baseline."""

    rate: float
    baseline: float
    result: StatResult
    """statistic = rate - baseline, the paired difference between the lens and the reader that
    always names the commonest first token; Tango's score CI and tests of it; SESOI verdict."""
    n_undecodable: int
    """Problems with this target whose first token is not a token (left out)."""


def lens_rate(
    ranks: NDArray[np.integer],
    tokens: NDArray[np.int64],
    *,
    topk: int = 1,
    sesoi: float = 0.1,
    alpha: float = 0.05,
) -> RateResult:
    """Rate at which the lens's top-``topk`` holds the target, over problems with a target.

    ``ranks`` (N,) lens ranks (-1 = no target), ``tokens`` (N,) first tokens (-1 = none).
    The claim judged is "rate - baseline > ``sesoi``". The baseline is the reader that always
    names the commonest first token of these problems; both readers are scored on the same
    problems, so the difference is a paired difference of proportions: Tango's score tests
    (``p_value``, ``p_sesoi``, ``p_equivalence``) and its two-sided ``1 - 2 alpha`` CI
    (:func:`~codi_fixtures.stats.accuracy_drop_effect`). The baseline is an estimate, not a
    known constant: exact binomial tests against it as if it were (the earlier rule)
    rejected in 0.09-0.13 of null datasets and said "supported" / "refuted" in 0.11-0.13 at
    the SESOI boundary on the bundled model's first tokens (``tests/test_stats_calibration.py``).

    "Supported" must beat every token's reader; the commonest in the sample is the hardest, so
    its test decides (intersection-union). "Refuted" holds when the lens falls short of *any*
    token's reader, a union over the J distinct first tokens, and the in-sample commonest is
    chosen for being high: its ``p_equivalence`` is multiplied by J (Bonferroni). Without it,
    with values spread over many tokens (numbers as single tokens) "refuted" came 0.12-0.17 of
    the time at the SESOI boundary.
    """
    valid = (tokens >= 0) & (ranks >= 0)
    n = int(valid.sum())
    if n == 0:  # a verdict, not a crash: the claim is skipped with this reason
        reason = "no problem has a target whose first token the lens can read"
        return RateResult(math.nan, math.nan, inconclusive_verdict(reason), 0)
    hit = ranks[valid] < topk
    base, common = value_baseline(tokens[valid])
    res = accuracy_drop_effect(hit, tokens[valid] == common, sesoi=sesoi, alpha=alpha)
    rate = float(hit.mean())
    n_tokens = int(np.unique(tokens[valid]).size)
    p_equivalence = min(1.0, n_tokens * pvalue_or_one(res.p_equivalence))
    res = replace(
        res,
        p_equivalence=p_equivalence,
        p_equivalence_corrected=p_equivalence,  # the reason marks it adjusted, the CI not
        method=(
            f"lens top-{topk} rate {int(hit.sum())}/{n} minus the commonest-first-token share "
            f"{base:.3f}, paired over problems; Tango score tests and CI; p_equivalence x "
            f"{n_tokens} (the distinct first tokens: any may be the best problem-blind reader)"
        ),
    ).with_verdict(alpha)
    return RateResult(rate, base, res, 0)


def lens_rate_table(
    lens_rank: NDArray[np.integer],
    target_tokens: NDArray[np.int64],
    target_values: FloatArray,
    *,
    topk: int = 1,
) -> tuple[FloatArray, FloatArray, NDArray[np.int64], NDArray[np.int64]]:
    """Rates (P, S, K), baselines (K,), n (K,), undecodable counts (K,) from readout arrays."""
    _, n_pos, n_sites, n_k = lens_rank.shape
    rates = np.full((n_pos, n_sites, n_k), np.nan)
    base = np.full(n_k, np.nan)
    n = np.zeros(n_k, dtype=np.int64)
    bad = np.zeros(n_k, dtype=np.int64)
    for k in range(n_k):
        valid = target_tokens[:, k] >= 0
        bad[k] = int((np.isfinite(target_values[:, k]) & ~valid).sum())
        n[k] = int(valid.sum())
        if n[k]:
            base[k] = value_baseline(target_tokens[valid, k])[0]
            rates[:, :, k] = (lens_rank[valid, :, :, k] < topk).mean(axis=0)
    return rates, base, n, bad


# --------------------------------------------------------------------------- probes


def cv_probe(
    features: NDArray[np.floating],
    labels: NDArray[np.int64],
    *,
    n_folds: int = 5,
    seed: int = 0,
    permute: bool = False,
    c: float = 1.0,
    max_iter: int = 500,
    tol: float = 1e-4,
) -> NDArray[np.bool_]:
    """Out-of-fold correctness (N,) of a logistic-regression probe, folds over problems.

    ``permute`` shuffles the labels across problems first (the permuted-label baseline;
    correctness is then against the permuted labels). ``max_iter`` / ``tol``: the solver's
    budget (a probe stopped early is still a fixed classifier: its out-of-fold accuracy is
    honest; convergence warnings are silenced).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).copy()
    rng = np.random.default_rng(seed)
    if permute:
        y = y[rng.permutation(y.size)]
    correct = np.zeros(y.size, dtype=bool)
    folds = KFold(n_splits=min(n_folds, y.size), shuffle=True, random_state=seed)
    for train, test in folds.split(x):
        classes = np.unique(y[train])
        if classes.size < 2:
            correct[test] = y[test] == classes[0]
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, tol=tol))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(x[train], y[train])
        correct[test] = probe.predict(x[test]) == y[test]
    return correct


@dataclass(frozen=True)
class ProbeGrid:
    """Out-of-fold correctness per problem; nan where a problem has no target k."""

    positions: tuple[str, ...]
    sites: tuple[str, ...]
    correct: FloatArray  # (K, P, S, N) 1.0 / 0.0 / nan
    permuted: FloatArray  # (K, P, S, N) the permuted-label probe


def probe_grid(
    hidden: NDArray[np.floating],
    target_values: FloatArray,
    positions: Sequence[str],
    sites: Sequence[str],
    *,
    targets: Sequence[int] | None = None,
    use_positions: Sequence[str] | None = None,
    use_sites: Sequence[str] | None = None,
    n_folds: int = 5,
    seed: int = 0,
    min_problems: int = 20,
    permuted: bool = True,
    max_iter: int = 500,
    tol: float = 1e-4,
) -> ProbeGrid:
    """One probe per (target k, position, site), label = the target's value.

    ``hidden`` (N, P, S, d); ``target_values`` (N, K) (nan = none). Cells left out by
    ``targets`` / ``use_positions`` / ``use_sites``, or with fewer than ``min_problems``
    problems, stay nan; so does every permuted-label cell with ``permuted=False``.
    """
    n, n_pos, n_sites, _ = hidden.shape
    n_k = target_values.shape[1]
    correct = np.full((n_k, n_pos, n_sites, n), np.nan)
    shuffled = np.full_like(correct, np.nan)
    fit = {"n_folds": n_folds, "seed": seed, "max_iter": max_iter, "tol": tol}
    pos_idx = [positions.index(p) for p in (use_positions or positions)]
    site_idx = [sites.index(s) for s in (use_sites or sites)]
    for k in targets if targets is not None else range(n_k):
        rows = np.flatnonzero(np.isfinite(target_values[:, k]))
        if rows.size < min_problems:
            continue
        _, labels = np.unique(target_values[rows, k], return_inverse=True)
        for p, s in itertools.product(pos_idx, site_idx):
            x = hidden[rows, p, s]
            correct[k, p, s, rows] = cv_probe(x, labels, **fit)  # type: ignore[arg-type]
            if permuted:
                shuffled[k, p, s, rows] = cv_probe(x, labels, permute=True, **fit)  # type: ignore[arg-type]
    return ProbeGrid(tuple(positions), tuple(sites), correct, shuffled)


def paired_effect(
    a: FloatArray, b: FloatArray, *, sesoi: float = 0.1, alpha: float = 0.05, seed: int = 0
) -> StatResult:
    """The paired difference a - b over problems where both are finite, with a SESOI verdict.

    0/1 outcomes (probe correctness, IIA hits) are a paired difference of proportions:
    Tango's score test and CI (:func:`codi_fixtures.stats.accuracy_drop_effect`, finite even
    when hits are rare); other values: the 20% trimmed mean of a - b, studentized bootstrap
    over problems (:func:`codi_fixtures.stats.mean_effect`).
    """
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        nan = math.nan
        return StatResult(nan, 1.0, nan, nan, int(ok.sum()), "fewer than 2 paired problems")
    x, y = a[ok], b[ok]
    if np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all():
        return accuracy_drop_effect(x.astype(bool), y.astype(bool), sesoi=sesoi, alpha=alpha)
    return mean_effect(x - y, sesoi=sesoi, alpha=alpha, n_boot=1999, seed=seed)


def probe_effects(
    grid: ProbeGrid,
    k: int,
    position: str,
    site: str,
    *,
    rows: NDArray[np.bool_] | None = None,
    sesoi: float = 0.1,
    alpha: float = 0.05,
) -> dict[str, StatResult]:
    """Accuracy minus each baseline at one cell: ``permuted`` and ``question`` positions.

    ``rows`` restricts the problems (e.g. one difficulty bin, or step k as the answer).
    The question baseline is the best (by accuracy over ``rows``) of ``q_last`` and ``bot``
    at any probed site: what the question's own positions already hold.
    """
    p, s = grid.positions.index(position), grid.sites.index(site)
    keep = np.ones(grid.correct.shape[-1], dtype=bool) if rows is None else rows
    acc = np.where(keep, grid.correct[k, p, s], np.nan)
    perm = np.where(keep, grid.permuted[k, p, s], np.nan)
    question = [
        np.where(keep, grid.correct[k, grid.positions.index(q), j], np.nan)
        for q in QUESTION_POSITIONS
        if q in grid.positions
        for j in range(len(grid.sites))
    ]
    best_q = max(question, key=lambda v: np.nanmean(v) if np.isfinite(v).any() else -1.0)
    return {
        "accuracy": StatResult(
            float(np.nanmean(acc)) if np.isfinite(acc).any() else math.nan,
            1.0,
            math.nan,
            math.nan,
            int(np.isfinite(acc).sum()),
            "out-of-fold probe accuracy",
        ),
        "minus_permuted": paired_effect(acc, perm, sesoi=sesoi, alpha=alpha),
        "minus_question": paired_effect(acc, best_q, sesoi=sesoi, alpha=alpha),
    }


# --------------------------------------------------------------------------- interchange


@dataclass(frozen=True)
class IiaSummary:
    """One (thought, step) cell of the interchange experiment (rates over recipients)."""

    thought: int
    step: int
    n: int
    iia: float
    """Different-value donor: the patched answer is the counterfactual answer."""
    random_baseline: float
    """A random donor's patch gives that same counterfactual answer."""
    unpatched_baseline: float
    """The clean answer is the counterfactual answer."""
    same_unchanged: float
    """Same-value donor: the patched answer equals the clean answer."""
    same_delta_logp: float
    """Same-value donor: mean log p(gold | clean) - log p(gold | patched)."""
    different_delta_logp: float
    """Different-value donor: the same, for contrast."""
    iia_minus_random: StatResult
    iia_minus_unpatched: StatResult


def _eq(a: FloatArray, b: FloatArray) -> FloatArray:
    """1.0 where equal (1e-6), 0.0 where not, nan where either is nan."""
    out = (np.abs(a - b) <= 1e-6).astype(np.float64)
    out[~(np.isfinite(a) & np.isfinite(b))] = np.nan
    return out


class InterchangeRows(Protocol):
    """Per-row arrays of an interchange run (``study.interchange.InterchangeRun`` has them)."""

    @property
    def recipient(self) -> NDArray[np.int64]:
        """(R,) recipient problem per row."""
        ...

    @property
    def thought(self) -> NDArray[np.int64]:
        """(R,) patched thought, 0-based."""
        ...

    @property
    def step(self) -> NDArray[np.int64]:
        """(R,) step, 1-based."""
        ...

    @property
    def kind(self) -> list[str]:
        """(R,) donor kind: same, different or random."""
        ...

    @property
    def answer(self) -> FloatArray:
        """(R,) patched answer (nan: none parsed)."""
        ...

    @property
    def delta_logp(self) -> FloatArray:
        """(R,) log p(gold | clean) - log p(gold | patched)."""
        ...

    @property
    def counterfactual(self) -> FloatArray:
        """(R,) the different donor's counterfactual answer."""
        ...

    @property
    def clean_answer(self) -> FloatArray:
        """(N,) clean answer per problem."""
        ...


def iia_summary_of(
    run: InterchangeRows, *, sesoi: float = 0.1, alpha: float = 0.05
) -> list[IiaSummary]:
    """:func:`iia_summary` of an interchange run's rows."""
    return iia_summary(
        recipient=run.recipient,
        thought=run.thought,
        step=run.step,
        kind=run.kind,
        answer=run.answer,
        delta_logp=run.delta_logp,
        counterfactual=run.counterfactual,
        clean_answer=run.clean_answer,
        sesoi=sesoi,
        alpha=alpha,
    )


def iia_summary(
    *,
    recipient: NDArray[np.int64],
    thought: NDArray[np.int64],
    step: NDArray[np.int64],
    kind: Sequence[str],
    answer: FloatArray,
    delta_logp: FloatArray,
    counterfactual: FloatArray,
    clean_answer: FloatArray,
    sesoi: float = 0.1,
    alpha: float = 0.05,
) -> list[IiaSummary]:
    """IIA and baselines per (thought, step) from the per-row arrays of an interchange run.

    A missing answer (unparseable) counts as not the counterfactual. Rows of kind
    ``different`` and ``random`` of one (recipient, thought, step) share the
    counterfactual answer of the different-value donor.
    """
    kinds = np.asarray(kind)
    out = []
    for t, k in sorted({(int(a), int(b)) for a, b in zip(thought, step, strict=True)}):
        cell = (thought == t) & (step == k)
        by = {name: cell & (kinds == name) for name in ("same", "different", "random")}
        diff_rows = np.flatnonzero(by["different"])
        rec = recipient[diff_rows]
        cf = counterfactual[diff_rows]
        hit = np.nan_to_num(_eq(answer[diff_rows], cf), nan=0.0)
        rand_row = {int(recipient[i]): i for i in np.flatnonzero(by["random"])}
        rand = np.array(
            [
                np.nan_to_num(_eq(answer[[rand_row[int(r)]]], cf[[j]]), nan=0.0)[0]
                if int(r) in rand_row
                else np.nan
                for j, r in enumerate(rec)
            ]
        )
        unpatched = np.nan_to_num(_eq(clean_answer[rec], cf), nan=0.0)
        same = np.flatnonzero(by["same"])
        out.append(
            IiaSummary(
                thought=t,
                step=k,
                n=int(diff_rows.size),
                iia=float(hit.mean()) if hit.size else math.nan,
                random_baseline=float(np.nanmean(rand)) if np.isfinite(rand).any() else math.nan,
                unpatched_baseline=float(unpatched.mean()) if unpatched.size else math.nan,
                same_unchanged=(
                    float(np.nanmean(_eq(answer[same], clean_answer[recipient[same]])))
                    if same.size
                    else math.nan
                ),
                same_delta_logp=float(delta_logp[same].mean()) if same.size else math.nan,
                different_delta_logp=(
                    float(delta_logp[diff_rows].mean()) if diff_rows.size else math.nan
                ),
                iia_minus_random=paired_effect(hit, rand, sesoi=sesoi, alpha=alpha),
                iia_minus_unpatched=paired_effect(hit, unpatched, sesoi=sesoi, alpha=alpha),
            )
        )
    return out


# --------------------------------------------------------------------------- RQ1 link


@dataclass(frozen=True)
class LinkResult:
    """The RQ1 link: importance ranks of the thoughts that best encode each step."""

    best_thought: tuple[int, ...]
    """Per step: the thought with the highest decodability."""
    importance_rank: tuple[float, ...]
    """Per step: that thought's rank by RQ1 importance, the 20% trimmed mean of Δ log p over
    problems (1 = ablation hurts most; tied centres share their average rank)."""
    in_top: tuple[bool, ...]
    """Per step: rank <= ``top_m``."""
    top_m: int
    result: StatResult
    """statistic = (T+1)/2 - mean rank (> 0: best-encoding thoughts matter more than a
    random thought); CI and p = percentile bootstrap over problems (H0: statistic <= 0);
    verdict against ``sesoi`` ranks."""
    p_permutation: float
    """Exact p over all T! relabelings of the thoughts' importance. Coarse: with T = 6 it
    cannot fall below 0.05 (1/6 for one distinct best thought, 1/15 for two), so it is
    reported, not used for the verdict."""


def _best_rank(dec: FloatArray, imp: FloatArray) -> tuple[NDArray[np.int64], FloatArray]:
    """(best thought, its importance rank 1..T) per step, batched over leading axes.

    ``dec`` (..., K, T) decoding rates, ``imp`` (..., T) importance centres. A tie in
    decodability goes to the lower thought index (argmax); tied importance centres share
    their average rank, so importance that cannot tell thoughts apart (e.g. all exactly 0)
    ranks every thought at (T+1)/2 and says nothing, whichever thought decodes best. A step
    with no rate (all nan) gets thought 0, and its rank is left out by the caller.
    """
    best = np.argmax(np.where(np.isnan(dec), -np.inf, dec), axis=-1)
    above = (imp[..., None, :] > imp[..., :, None]).sum(axis=-1)
    tied = (imp[..., None, :] == imp[..., :, None]).sum(axis=-1) - 1
    rank = 1.0 + above + 0.5 * tied
    return best, np.take_along_axis(rank, best, axis=-1)


def _link_statistic(dec: FloatArray, imp: FloatArray, mid: float) -> FloatArray:
    """(T+1)/2 - mean importance rank of each step's best thought, over the defined steps."""
    _, rank = _best_rank(dec, imp)
    defined = np.isfinite(dec).any(axis=-1)
    with np.errstate(invalid="ignore"):
        return mid - np.where(defined, rank, 0).sum(axis=-1) / defined.sum(axis=-1)


def _rates(dec: FloatArray, rows: NDArray[np.int64]) -> FloatArray:
    """Per-step, per-thought hit rates (nan-aware means) of ``dec`` over the rows ``rows``."""
    picked = dec[rows]  # (..., n, K, T)
    counts = np.isfinite(picked).sum(axis=-3)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.nansum(picked, axis=-3) / counts, np.nan)


def rq1_link_test(
    decodability: FloatArray,
    importance: FloatArray,
    *,
    top_m: int | None = None,
    sesoi: float = 0.25,
    alpha: float = 0.05,
    n_boot: int = 1999,
    seed: int = 0,
) -> LinkResult:
    """Is the thought that best encodes step k among the thoughts whose ablation hurts most?

    ``decodability`` (N, K, T): per problem, step and thought, a hit (1/0, nan = no such
    step), e.g. lens top-1 at the input embedding or out-of-fold probe correctness;
    ``importance`` (N, T): RQ1 Δ log p per problem and thought (problems with a non-finite
    value are left out). Thoughts are ranked by RQ1's importance, the 20% trimmed mean of Δ
    log p over problems (:data:`~codi_fixtures.stats.TRIM_FRACTION`, the estimand of
    :func:`~codi_fixtures.stats.mean_effect`); each step's best thought is the one with the
    highest hit rate (ties: the lower index). The statistic is ``(T+1)/2`` minus the mean
    over steps of the importance rank of each step's best thought (0 for a random thought).
    The CI and p resample problems (both arrays together): they say how stable the
    arrangement is, given these steps and thoughts. With K distinct best thoughts the
    statistic is at most (T - K) / 2 (0.5 for five steps in six thoughts), so the SESOI must
    be below that. It fails (refuted / inconclusive) when the best-encoding thoughts are not
    the important ones.
    """
    dec = np.asarray(decodability, dtype=np.float64)
    imp = np.asarray(importance, dtype=np.float64)
    finite = np.isfinite(imp).all(axis=1)
    dec, imp = dec[finite], imp[finite]
    n, n_k, n_t = dec.shape
    if n == 0:
        raise DegenerateData("no problem has a finite importance for every thought")
    steps = [k for k in range(n_k) if np.isfinite(dec[:, k]).any()]
    dec = dec[:, steps]
    top_m = n_t // 2 if top_m is None else top_m
    mid = (n_t + 1) / 2.0

    def centre(values: FloatArray) -> FloatArray:  # RQ1's importance: the trimmed mean
        return np.asarray(stats.trim_mean(values, TRIM_FRACTION, axis=-2), dtype=np.float64)

    rates, imp_centre = _rates(dec, np.arange(n)), centre(imp)
    best, rank = _best_rank(rates, imp_centre)
    observed = mid - float(rank.mean())
    perms = np.array(list(itertools.permutations(range(n_t))))
    null = _link_statistic(rates[None], imp_centre[perms], mid)
    p = float(np.mean(null >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK // max(n * n_k * n_t, 1))
    parts = []
    for start in range(0, n_boot, chunk):
        rows = rng.integers(0, n, (min(chunk, n_boot - start), n))
        parts.append(_link_statistic(_rates(dec, rows), centre(imp[rows]), mid))
    boot = np.concatenate(parts)
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    p_boot = float((np.sum(boot <= 0.0) + 1) / (n_boot + 1))
    verdict, reason = decide(
        observed, float(low), float(high), p_value=p_boot, sesoi=sesoi, alpha=alpha
    )
    result = StatResult(
        statistic=observed,
        p_value=p_boot,
        ci_low=float(low),
        ci_high=float(high),
        n=n,
        method=(
            "(T+1)/2 - mean importance rank (thoughts ranked by the 20% trimmed mean of "
            "delta log p, as in RQ1) of each step's best-encoding thought; percentile "
            f"bootstrap over problems ({n_boot}); exact permutation p over "
            f"{math.factorial(n_t)} thought relabelings = {p:.3g}"
        ),
        alternative="greater",
        ci_level=1.0 - 2.0 * alpha,
        sesoi=sesoi,
        verdict=verdict,
        verdict_reason=reason,
    )
    return LinkResult(
        best_thought=tuple(int(b) for b in best),
        importance_rank=tuple(float(r) for r in rank),
        in_top=tuple(bool(r <= top_m) for r in rank),
        top_m=top_m,
        result=result,
        p_permutation=p,
    )


# --------------------------------------------------------------------------- equivalence


def equivalence_effect(
    deltas: FloatArray,
    *,
    sesoi: float,
    alpha: float = 0.05,
    n_boot: int = 4999,
    seed: int = 0,
) -> StatResult:
    """Is the trimmed mean of ``deltas`` within (-sesoi, sesoi)? Two one-sided tests (TOST).

    The estimand is :func:`~codi_fixtures.stats.mean_effect`'s 20% trimmed mean: the typical
    problem's change, not every problem's.

    One studentized bootstrap (:func:`~codi_fixtures.stats.mean_effect` on ``deltas`` and on
    ``-deltas``, same seed) gives the ``1 - 2 alpha`` CI and the one-sided p-values.
    ``p_value`` = the TOST p (max of H0: mean >= sesoi and H0: mean <= -sesoi): small means
    *equivalent* (the claim "no change that matters" is supported when it and the CI lie
    within the bounds); ``p_sesoi`` = the p of "|mean| > sesoi" on the observed side: small
    means the claim is refuted. Judge a family with :func:`equivalence_verdicts`.

    All-equal deltas (e.g. no change at all) are judged by the exact bound of
    :func:`~codi_fixtures.stats.mean_effect` (``constant="exact"``): p = (1 - 0.2)^n, so
    "no change at all" is an equivalence from n >= 14 problems (alpha 0.05), not from any n.
    """
    d = np.asarray(deltas, dtype=np.float64)
    d = d[np.isfinite(d)]
    up = mean_effect(d, sesoi=sesoi, alpha=alpha, n_boot=n_boot, seed=seed, constant="exact")
    down = mean_effect(-d, sesoi=sesoi, alpha=alpha, n_boot=n_boot, seed=seed, constant="exact")
    p_tost = max(pvalue_or_one(up.p_equivalence), pvalue_or_one(down.p_equivalence))
    p_beyond = pvalue_or_one(up.p_sesoi) if up.statistic >= 0 else pvalue_or_one(down.p_sesoi)
    method = (
        f"trimmed mean within +/-{sesoi:g}: two one-sided tests (TOST) and |trimmed mean| "
        f"> SESOI, studentized bootstrap ({n_boot} resamples)"
    )
    if not up.ci_low < up.ci_high:  # no variation: say how it was judged (or why it was not)
        method = f"{method}; {up.method}"
    result = StatResult(
        statistic=up.statistic,
        p_value=p_tost,
        ci_low=up.ci_low,
        ci_high=up.ci_high,
        n=up.n,
        method=method,
        alternative="equivalence",
        ci_level=up.ci_level,
        sesoi=sesoi,
        p_sesoi=p_beyond,
    )
    return equivalence_verdicts([result], alpha=alpha)[0]


def equivalence_verdicts(results: Sequence[StatResult], *, alpha: float = 0.05) -> list[StatResult]:
    """Holm over a family of :func:`equivalence_effect` results, then their verdicts.

    supported: Holm-corrected TOST p < alpha and the CI inside (-SESOI, SESOI); refuted:
    Holm-corrected p of |mean| > SESOI below alpha and the CI wholly beyond one bound;
    inconclusive otherwise (or with a nan statistic).
    """
    p_eq = holm([min(1.0, r.p_value) for r in results])
    p_out = holm([min(1.0, float(r.p_sesoi if r.p_sesoi is not None else 1.0)) for r in results])
    out = []
    for r, pe, po in zip(results, p_eq, p_out, strict=True):
        s = float(r.sesoi or 0.0)
        # the p-values are Holm-adjusted over the family, the CI is not
        ci = f"{100 * r.ci_level:.3g}% CI [{r.ci_low:.3g}, {r.ci_high:.3g}] (unadjusted)"
        if math.isnan(r.statistic) or math.isnan(r.ci_low):
            verdict, reason = "inconclusive", f"inconclusive: {r.method}"
        elif pe < alpha and -s < r.ci_low and r.ci_high < s:
            verdict = "supported"
            reason = (
                f"supported (equivalent): TOST p={pe:.3g} (adjusted) < {alpha:g}; {ci} "
                f"within +/-{s:g}"
            )
        elif po < alpha and (r.ci_low > s or r.ci_high < -s):
            verdict = "refuted"
            reason = (
                f"refuted: p(|mean| > SESOI)={po:.3g} (adjusted) < {alpha:g}; {ci} beyond +/-{s:g}"
            )
        else:
            verdict = "inconclusive"
            reason = f"inconclusive: TOST p={pe:.3g} (adjusted); {ci} vs +/-{s:g}"
        out.append(
            replace(
                r,
                p_corrected=pe,
                p_sesoi_corrected=po,
                verdict=verdict,  # type: ignore[arg-type]
                verdict_reason=reason,
            )
        )
    return out

"""Three-outcome verdicts against a smallest effect size of interest (SESOI).

A claim "the effect exceeds the SESOI" ends in one of three outcomes:

``supported``
    the test against zero rejects (``p_value < alpha``, after correction), the
    minimal-effect test of H0: effect <= SESOI rejects (``p_sesoi < alpha``,
    after correction, when given), and the two-sided ``(1 - 2 alpha)`` CI lies
    entirely above the SESOI. This is an intersection-union test: the claim
    needs every one of them, so its error rate at the SESOI boundary is at most
    alpha.
``refuted``
    the non-superiority test of H0: effect >= SESOI rejects (``p_equivalence <
    alpha``, after correction, when given) and the ``(1 - 2 alpha)`` CI lies
    entirely below the SESOI. This is the upper of the two one-sided tests of
    TOST: it shows the effect is smaller than the SESOI, either equivalent to
    zero (the CI is inside ``(-SESOI, SESOI)``) or of the wrong sign.
``inconclusive``
    anything else, including degenerate (nan) input: the CI contains the SESOI.

The ``(1 - 2 alpha)`` two-sided CI is the interval dual to one-sided tests at
level alpha (Schuirmann 1987), so "CI above the SESOI" and "minimal-effect test
rejects" say the same thing when both come from one procedure; checking both
guards against a caller whose CI and p-values come from different procedures.
Multiplicity is handled on the p-values (Holm within a family), which is why the
p-values passed here should be the corrected ones.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Literal

__all__ = [
    "SESOI_ACCURACY",
    "SESOI_LOGP",
    "SESOI_R",
    "Outcome",
    "Verdict",
    "decide",
]

Verdict = Literal["supported", "refuted", "inconclusive"]
"""The three outcomes of a claim that decides."""
Outcome = Literal["supported", "refuted", "inconclusive", "descriptive"]
"""A verdict, or ``descriptive`` for a statistic that is reported but decides nothing."""

SESOI_R = 0.1
"""Default SESOI for a correlation (RQ2)."""
SESOI_LOGP = 0.1
"""Default SESOI for a mean delta log p, in nats (RQ1)."""
SESOI_ACCURACY = 0.05
"""Default SESOI for an accuracy drop, as a fraction of problems (RQ1)."""


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def decide(
    estimate: float,
    ci_low: float,
    ci_high: float,
    *,
    p_value: float,
    sesoi: float,
    alpha: float = 0.05,
    p_sesoi: float | None = None,
    p_equivalence: float | None = None,
    alternative: Literal["greater", "less"] = "greater",
    ci_level: float | None = None,
    adjusted: Collection[str] = (),
) -> tuple[Verdict, str]:
    """Verdict on "the effect exceeds ``sesoi``" and a one-line reason.

    ``ci_low``/``ci_high`` must be the two-sided ``(1 - 2 alpha)`` CI (the
    level is only used in the reason; default ``1 - 2 alpha``). ``p_value``
    tests H0: effect <= 0; ``p_sesoi`` H0: effect <= sesoi; ``p_equivalence``
    H0: effect >= sesoi; pass Holm-corrected values for a family. With
    ``alternative="less"`` the claim is "effect < -sesoi" and everything is
    mirrored (p-values then refer to the mirrored hypotheses). ``adjusted`` names the
    p-values (``"p"``, ``"p_sesoi"``, ``"p_equivalence"``) corrected for a family (Holm,
    Bonferroni) while the CI is not; the reason says so, so an interval clear of the SESOI
    beside "inconclusive" reads as what it is.
    """
    if sesoi < 0 or not math.isfinite(sesoi):
        raise ValueError(f"sesoi must be finite and >= 0, got {sesoi}")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    level = 1.0 - 2.0 * alpha if ci_level is None else ci_level
    ci = f"{100 * level:.3g}% CI [{_fmt(ci_low)}, {_fmt(ci_high)}]"
    if adjusted and math.isclose(level, 1.0 - 2.0 * alpha):
        ci += " (unadjusted)"  # a CI at another level (Bonferroni's) shows that level

    def adj(name: str) -> str:
        return " (adjusted)" if name in adjusted else ""

    if alternative == "less":
        estimate, ci_low, ci_high = -estimate, -ci_high, -ci_low
    values = (estimate, ci_low, ci_high, p_value)
    if any(math.isnan(v) for v in values):
        return "inconclusive", "inconclusive: the statistic or its CI is undefined (nan)"
    bound = sesoi if alternative == "greater" else -sesoi
    side = "above" if alternative == "greater" else "below"
    other = "below" if alternative == "greater" else "above"
    p_min = math.inf if p_sesoi is None else p_sesoi
    if p_value < alpha and ci_low > sesoi and (p_sesoi is None or p_min < alpha):
        tests = f"p={_fmt(p_value)}{adj('p')} (H0: no effect)"
        if p_sesoi is not None:
            tests += f" and p_sesoi={_fmt(p_sesoi)}{adj('p_sesoi')} (H0: effect <= SESOI)"
        return "supported", f"supported: {tests} < {alpha:g}; {ci} {side} SESOI {_fmt(bound)}"
    if ci_high < sesoi and (p_equivalence is None or p_equivalence < alpha):
        kind = "equivalent to zero" if ci_low > -sesoi else "wrong sign or below SESOI"
        test = ""
        if p_equivalence is not None:
            test = f"p_equivalence={_fmt(p_equivalence)}{adj('p_equivalence')} < "
        test += f"{alpha:g}; " if p_equivalence is not None else ""
        return "refuted", f"refuted ({kind}): {test}{ci} {other} SESOI {_fmt(bound)}"
    reasons = []
    if not p_value < alpha:
        reasons.append(f"p={_fmt(p_value)}{adj('p')} >= {alpha:g}")
    if p_sesoi is not None and not p_sesoi < alpha:
        reasons.append(f"p_sesoi={_fmt(p_sesoi)}{adj('p_sesoi')} >= {alpha:g}")
    if p_equivalence is not None and ci_high < sesoi:
        reasons.append(f"p_equivalence={_fmt(p_equivalence)}{adj('p_equivalence')} >= {alpha:g}")
    if ci_low <= sesoi <= ci_high:
        reasons.append(f"{ci} contains SESOI {_fmt(bound)}")
    else:
        reasons.append(ci)
    return "inconclusive", "inconclusive: " + "; ".join(reasons)

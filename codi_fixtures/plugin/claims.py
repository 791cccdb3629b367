"""Turn a statistical result into a verdict, attaching its numbers to the report.

Every claim is judged against a smallest effect size of interest (SESOI) and ends in one of
three outcomes, decided by :func:`codi_fixtures.stats.equivalence.decide` (the result's
``verdict``):

pass    = supported: the effect exceeds the SESOI (corrected tests and CI agree);
fail    = refuted: an equivalence test shows any effect is below the SESOI (or of the wrong
          sign). Raised as :class:`~codi_fixtures.plugin.outcomes.ClaimNotSupported`, the only
          exception a known outcome (strict xfail) matches; the message carries the numbers;
skip    = inconclusive: the data cannot tell, too few usable problems, or degenerate data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from codi_fixtures.analyses import Evidence, StudyAnalysis
from codi_fixtures.plugin.outcomes import VERDICT_PROPERTY, ClaimNotSupported
from codi_fixtures.plugin.properties import CLAIM_PROPERTY, marked_analyses
from codi_fixtures.report.summary import stats_table_html
from codi_fixtures.stats import StatResult

__all__ = ["Claim", "evidence"]

FigureFactory = Callable[[], Any]  # returns a matplotlib Figure
_NONFINITE = "NaN/inf in some condition (dropped only where this claim's numbers are)"


def evidence(result: StatResult) -> str:
    """One line of numbers for messages: statistic, p, corrected p, CI, n, method."""

    def f(v: float | None) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"

    sesoi = "" if result.sesoi is None else f", SESOI={f(result.sesoi)}"
    beyond = (  # an equivalence claim is refuted by its p of |effect| > SESOI, not by p
        f", p_sesoi={f(result.p_sesoi)}, p_sesoi_holm={f(result.p_sesoi_corrected)}"
        if result.alternative == "equivalence"
        else ""
    )
    return (
        f"statistic={f(result.statistic)}{sesoi}, p={f(result.p_value)}, "
        f"p_holm={f(result.p_corrected)}{beyond}, {100 * result.ci_level:.3g}% CI="
        f"[{f(result.ci_low)}, {f(result.ci_high)}], n={result.n} ({result.method})"
    )


class Claim:
    """Per-test helper (the ``claim`` fixture): judge a result, record everything first."""

    def __init__(
        self,
        analysis: StudyAnalysis,
        tier: str,
        node: pytest.Item,
        extras: list[Any],
        min_n: int = 5,
    ) -> None:
        self.analysis = analysis
        self.tier = tier
        self.node = node
        self.extras = extras
        self.min_n = min_n

    def _attach(
        self,
        label: str,
        result: StatResult,
        context: Mapping[str, object],
        figure: tuple[str, FigureFactory] | None,
    ) -> None:
        from pytest_html import extras as html_extras

        # The claim's figure is the analysis's summary figure, drawn once in the report's top
        # block; each claim row carries its numbers, not another copy of that figure.
        self.extras.append(html_extras.html(stats_table_html(result, context)))
        doc = (getattr(self.node, "obj", None).__doc__ or "").strip().splitlines()
        payload = {
            "hypothesis": doc[0].strip() if doc else "",
            "label": label,
            "tier": self.tier,
            "stats": {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in result.as_dict().items()
            },
            "context": dict(context),
            "message": evidence(result),
            "analyses": marked_analyses(self.node),
        }
        self.node.user_properties.append((CLAIM_PROPERTY, json.dumps(payload, default=str)))

    def judge(
        self,
        label: str | Evidence,
        result: StatResult | None = None,
        *,
        context: Mapping[str, object] | None = None,
        figure: tuple[str, FigureFactory] | None = None,
    ) -> None:
        """Pass when the result's verdict is supported, fail when refuted, else skip.

        Either ``judge(evidence)`` (an analysis's :class:`~codi_fixtures.analyses.Evidence`)
        or ``judge(label, result, context=..., figure=...)``.
        """
        unjudgeable = None
        if isinstance(label, Evidence):
            given = label
            label, result = given.label, given.result
            context, figure = dict(given.context), given.figure
            unjudgeable = given.unjudgeable
        if result is None:
            raise TypeError("claim.judge needs a result (or an Evidence)")
        if result.verdict not in ("supported", "refuted", "inconclusive"):
            raise TypeError(
                f"claim.judge needs a result with a verdict (supported / refuted / "
                f"inconclusive), got {result.verdict!r}: build it with a test that takes a "
                "SESOI (codi_fixtures.stats.mean_effect, accuracy_drop_effect, rq2_tests)"
            )
        context = dict(context or {})
        # Problems non-finite in *some* condition of the study; each statistic drops a problem
        # only where its own numbers are non-finite, so this names candidates, not this n.
        excluded = self.analysis.excluded_problems()
        if excluded:
            context[_NONFINITE] = ", ".join(excluded)
        self._attach(label, result, context, figure)
        reason = self.analysis.unjudgeable_reason(marked_analyses(self.node)) or unjudgeable
        if reason is not None:
            pytest.skip(reason)
        # n = 0 with a stated reason: nothing was measured, and the reason says why
        stated = result.verdict == "inconclusive" and result.n == 0
        if result.n < self.min_n and not stated:
            pytest.skip(
                f"inconclusive: only {result.n} usable problems for {label} (need >= {self.min_n})"
            )
        if result.verdict == "inconclusive":
            why = result.method if result.inconclusive else str(result.verdict_reason)
            pytest.skip(
                f"inconclusive: {label}: {why.removeprefix('inconclusive: ')} (n={result.n})"
            )
        note = f"; {_NONFINITE}: {', '.join(excluded)}" if excluded else ""
        if result.verdict == "refuted":
            self.node.user_properties.append((VERDICT_PROPERTY, "refuted"))
            raise ClaimNotSupported(
                f"refuted: {label}: {result.verdict_reason}; {evidence(result)}{note}",
                pytrace=False,
            )

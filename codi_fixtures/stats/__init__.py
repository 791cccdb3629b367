"""Statistics: tests, CIs, multiple comparisons and SESOI verdicts (numpy / scipy, no torch).

Independent of the model, the engine and the study (an import-linter contract says so): every
function takes arrays. The public names live in :mod:`codi_fixtures.stats.inference` and
:mod:`codi_fixtures.stats.equivalence` and are re-exported here
(``from codi_fixtures.stats import rq2_tests``).
"""

from codi_fixtures.stats.equivalence import (
    SESOI_ACCURACY,
    SESOI_LOGP,
    SESOI_R,
    Outcome,
    Verdict,
    decide,
)
from codi_fixtures.stats.inference import (
    MIN_PROBLEMS,
    TRIM_FRACTION,
    Alternative,
    CorrelationMethod,
    Rq2Tests,
    ShiftMethod,
    StatResult,
    accuracy_drop_effect,
    apply_holm,
    apply_holm_verdicts,
    bootstrap_ci,
    cluster_bootstrap_ci,
    flip_rate,
    holm,
    holm_rq2,
    inconclusive,
    is_constant,
    mcnemar_accuracy_drop,
    mean_effect,
    paired_shift_test,
    pooled_correlation,
    pooled_normal_scores,
    position_centred_correlation,
    pvalue_or_one,
    rq2_tests,
    within_problem_permutation_test,
)

__all__ = [
    "MIN_PROBLEMS",
    "SESOI_ACCURACY",
    "SESOI_LOGP",
    "SESOI_R",
    "TRIM_FRACTION",
    "Alternative",
    "CorrelationMethod",
    "Outcome",
    "Rq2Tests",
    "ShiftMethod",
    "StatResult",
    "Verdict",
    "accuracy_drop_effect",
    "apply_holm",
    "apply_holm_verdicts",
    "bootstrap_ci",
    "cluster_bootstrap_ci",
    "decide",
    "flip_rate",
    "holm",
    "holm_rq2",
    "inconclusive",
    "is_constant",
    "mcnemar_accuracy_drop",
    "mean_effect",
    "paired_shift_test",
    "pooled_correlation",
    "pooled_normal_scores",
    "position_centred_correlation",
    "pvalue_or_one",
    "rq2_tests",
    "within_problem_permutation_test",
]

"""Known claim outcomes (strict xfails), declared per model *and* problem set.

``experiments/known_outcomes.json`` maps a model label to its declarations::

    {"bundled": {"problem_sets": {"quick": "<fingerprint>", "full": "<fingerprint>"},
                 "outcomes": {"test_rq1_importance.py::test_x[quick-t5-mean]": "reason", ...}}}

A declaration applies only to a run of that model whose tier sample has the declared problem-set
fingerprint (:func:`codi_fixtures.study.data.problem_set_fingerprint`): a ``--problems`` run on
another set, or another sample size or seed, inherits nothing. It applies only under the settings
that decide verdicts it was measured with (``settings``: alpha, the SESOIs, the ablation site,
the importance kind, ...; :func:`verdict_settings`): a claim measured another way is judged
afresh, and the console says why the declarations were not applied. It matches only the claim's
own "not supported" outcome (``raises=ClaimNotSupported``), never a crash.

``python -m codi_fixtures.plugin.known_outcomes --model bundled
reports/quick/summary_statistics.json reports/full/summary_statistics.json`` writes the
declarations from the refuted verdicts of those runs. Review the diff before committing it: it
is a statement about the model.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from codi_fixtures.atomic import atomic_write_text
from codi_fixtures.config import TIERS
from codi_fixtures.errors import ConfigError

__all__ = [
    "declarations_from_summaries",
    "known_for_run",
    "known_outcomes_path",
    "main",
    "matcher",
    "names_tier",
    "not_applied_reason",
    "settings_mismatch",
    "verdict_settings",
]

_VERDICT_FIELDS = (
    "alpha",
    "importance_kind",
    "knockout_heads",
    "layers",
    "max_step",
    "min_correct",
    "min_effect_acc",
    "min_effect_logp",
    "min_effect_r",
    "rq3_all_layers",
    "subset_kinds",
)
_RUN_FIELDS = ("max_new_tokens", "seed", "site", "value_domain")


def verdict_settings(described: Mapping[str, Any]) -> dict[str, object]:
    """The settings that change what a claim measures or how it is judged.

    ``described`` is :meth:`codi_fixtures.config.Settings.describe` (or the ``run.settings``
    block of a ``summary_statistics.json``, which is the same). The ablation kinds, tiers,
    device and paths are left out: the kind is part of a claim's test id, the tier sample has
    its own fingerprint, and the rest does not decide a verdict.
    """
    run = described.get("run") or {}
    out: dict[str, object] = {name: described.get(name) for name in _VERDICT_FIELDS}
    out.update({f"run.{name}": run.get(name) for name in _RUN_FIELDS})
    return json.loads(json.dumps(out, default=str))


def settings_mismatch(declared: Mapping[str, object], run: Mapping[str, object]) -> list[str]:
    """``name: declared -> this run`` for each verdict setting that differs."""
    return [
        f"{name}: {declared.get(name)!r} -> {run.get(name)!r}"
        for name in sorted(set(declared) | set(run))
        if declared.get(name) != run.get(name)
    ]


def known_outcomes_path(config: Any) -> Path:
    """The declarations file: ini ``codi_known_outcomes``, relative to the ini file's folder."""
    base = config.inipath.parent if config.inipath else Path(config.rootpath)
    return base / str(config.getini("codi_known_outcomes"))


def _tier_meta(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Each tier's ``meta`` block (one tier at the top level, several under ``tiers``)."""
    tiers = summary.get("tiers")
    blocks = list(tiers.values()) if isinstance(tiers, dict) else [summary]
    return [block["meta"] for block in blocks]


def _read_json(path: Path, what: str) -> Any:
    """``path``'s JSON, or a :class:`ConfigError` naming the file and what it should be."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"cannot read {path} ({reason}); pass {what}") from None


def _read_summary(path: Path, model: str | None) -> Mapping[str, Any]:
    """A complete run's summary of ``model`` (any model when None), else a ConfigError."""
    what = "the summary_statistics.json of a run over every claim (reports/<tier>/)"
    summary = _read_json(path, what)
    if not isinstance(summary, dict) or not isinstance(summary.get("verdicts"), list):
        raise ConfigError(f"{path} is not a summary_statistics.json (no verdicts); pass {what}")
    run = summary.get("run") or {}
    if run.get("complete") is False:  # older summaries do not say: taken as complete
        raise ConfigError(
            f"{path} is from a run over only some claims (-k, a file, a test id, or -x stopped "
            f"it); declaring from it would drop the model's other declarations; pass {what}"
        )
    if model is not None and run.get("model", model) != model:
        raise ConfigError(
            f"{path} is a run of model {run['model']!r}, not --model {model!r}; pass "
            f"--model {run['model']}"
        )
    return summary


def declarations_from_summaries(
    summaries: Sequence[Path], model: str | None = None
) -> dict[str, object]:
    """One model's declaration: problem-set fingerprints, verdict settings, refuted verdicts.

    Refuses summaries with errors or known outcomes that no longer hold: a crashed claim has
    no verdict to declare, and declaring around it would silently drop its old declaration.
    So it refuses a run over only some claims, and (with ``model``) another model's run.
    """
    problem_sets: dict[str, str] = {}
    outcomes: dict[str, str] = {}
    settings: dict[str, object] | None = None
    for path in summaries:
        summary = _read_summary(path, model)
        bad = [v["test"] for v in summary["verdicts"] if v["outcome"] in {"error", "unexpected"}]
        if bad:
            raise ConfigError(
                f"{path}: {len(bad)} claim(s) ended in an error or a known outcome that no "
                f"longer holds (first: {bad[0]}); fix the run before declaring outcomes"
            )
        these = verdict_settings(summary.get("run", {}).get("settings", {}))
        if settings is not None and these != settings:
            raise ConfigError(
                f"{path}: measured under other verdict settings than the summaries before it "
                f"({'; '.join(settings_mismatch(settings, these))}); declare one setting at a time"
            )
        settings = these
        for meta in _tier_meta(summary):
            problem_sets[str(meta["tier"])] = str(meta["problem_set_fingerprint"])
        for verdict in summary["verdicts"]:
            if verdict["outcome"] in {"refuted", "known"}:
                test_id = verdict["test"].split("/")[-1]
                evidence = verdict["evidence"]
                if "; measured: " in evidence:  # a known outcome: keep what was measured
                    evidence = evidence.rsplit("; measured: ", 1)[1]
                elif "statistic=" in evidence:  # the numbers, less any label before them
                    evidence = evidence[evidence.index("statistic=") :]
                outcomes[test_id] = f"not supported on this model: {evidence}"[:300]
    return {
        "problem_sets": dict(sorted(problem_sets.items())),
        "settings": settings or {},
        "outcomes": dict(sorted(outcomes.items())),
    }


def _entry(path: Path, model_label: str) -> Mapping[str, Any] | None:
    """The model's declaration in ``path`` (None when the file or the model has none)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON ({err}); fix or delete the file") from None
    entry = data.get(model_label)
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("outcomes"), dict):
        raise ConfigError(
            f"{path}: {model_label!r} must be {{'problem_sets': {{tier: fingerprint}}, "
            "'settings': {...}, 'outcomes': {test id: reason}}; regenerate it with python -m "
            "codi_fixtures.plugin.known_outcomes"
        )
    return entry


def not_applied_reason(path: Path, model_label: str, settings: Mapping[str, object]) -> str | None:
    """Why the model's declarations do not apply under these verdict settings, or None."""
    entry = _entry(path, model_label)
    declared = None if entry is None else entry.get("settings")
    if not declared:  # no declaration, or one from before settings were recorded
        return None
    differ = settings_mismatch(declared, settings)
    if not differ:
        return None
    return (
        f"known outcomes of {model_label!r} not applied: they were measured under other "
        f"verdict settings ({'; '.join(differ)}); every claim is judged afresh"
    )


def known_for_run(
    path: Path,
    model_label: str,
    problem_sets: Mapping[str, str],
    settings: Mapping[str, object] | None = None,
) -> dict[str, dict[str, str]]:
    """Tier -> {test-id pattern: reason} that apply to this model, tier samples and settings.

    A tier gets the declarations that can name its claims (:func:`names_tier`), and only
    when its sample is the one they were declared on. ``settings``: the run's
    :func:`verdict_settings`; declarations recorded under others do not apply
    (:func:`not_applied_reason` says why).
    """
    entry = _entry(path, model_label)
    if entry is None:
        return {}
    if settings is not None and not_applied_reason(path, model_label, settings):
        return {}
    declared = entry.get("problem_sets", {})
    return {
        tier: {p: r for p, r in entry["outcomes"].items() if names_tier(p, tier)}
        for tier, fingerprint in problem_sets.items()
        if declared.get(tier) == fingerprint
    }


def names_tier(pattern: str, tier: str) -> bool:
    """Whether a declared test-id pattern can name a claim of ``tier``.

    Claim ids name their tier first (``test_x[full-t0]``), so a full-tier id never matches
    a quick claim; a pattern naming no tier (or ``*``) can match any.
    """
    _, bracket, params = pattern.partition("[")
    named = params.split("-", 1)[0].rstrip("]") if bracket else ""
    return named not in TIERS or named == tier


def matcher(pattern: str) -> re.Pattern[str]:
    """A test id, or its tail from a path component on; only ``*`` is a wildcard.

    ``test_rq1_importance.py::test_x[quick-t5-mean]`` matches that test in any folder, but
    not ``old_test_rq1_importance.py::...`` (``[`` and ``]`` are literal).
    """
    return re.compile("(?:.*/)?" + re.escape(pattern).replace(r"\*", ".*"))


def main(argv: list[str] | None = None) -> None:
    """Replace the declarations of ``--model`` in the JSON file."""
    parser = argparse.ArgumentParser(prog="python -m codi_fixtures.plugin.known_outcomes")
    parser.add_argument("summaries", nargs="+", type=Path, help="summary_statistics.json files")
    parser.add_argument("--model", default="bundled", help="model label (checkpoint dir name)")
    parser.add_argument("--out", type=Path, default=Path("experiments/known_outcomes.json"))
    args = parser.parse_args(argv)
    try:
        content = (
            _read_json(args.out, "a JSON object, or --out a new file") if args.out.exists() else {}
        )
        if not isinstance(content, dict):
            raise ConfigError(
                f"{args.out}: expected a JSON object; fix it or pass --out a new file"
            )
        declared = declarations_from_summaries(args.summaries, args.model)
        covered = sorted(dict(declared["problem_sets"]))  # type: ignore[call-overload]
        old = content.get(args.model)
        old_tiers = set(old.get("problem_sets", {})) if isinstance(old, dict) else set()
        dropped = sorted(old_tiers - set(covered))
        if dropped:
            raise ConfigError(
                f"{args.out} also declares {args.model!r} for tier(s) {dropped}, which these "
                f"summaries do not cover ({covered}): replacing the declaration would drop "
                "them; pass those tiers' summary_statistics.json as well"
            )
        content[args.model] = declared
    except ConfigError as err:
        parser.error(str(err))
    atomic_write_text(args.out, json.dumps(content, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

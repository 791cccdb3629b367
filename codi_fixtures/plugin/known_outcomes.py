"""Known claim outcomes (strict xfails), declared per model *and* problem set.

``experiments/known_outcomes.json`` maps a model label to its declarations::

    {"bundled": {"problem_sets": {"quick": "<fingerprint>", "full": "<fingerprint>"},
                 "outcomes": {"test_rq1_importance.py::test_x[quick-t5-mean]": "reason", ...}}}

A declaration applies only to a run of that model whose tier sample has the declared problem-set
fingerprint (:func:`codi_fixtures.study.data.problem_set_fingerprint`): a ``--problems`` run on
another set, or another sample size or seed, inherits nothing. It matches only the claim's own "not
supported" outcome (``raises=ClaimNotSupported``), never a crash.

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
from codi_fixtures.errors import ConfigError

__all__ = ["declarations_from_summaries", "known_for_run", "main", "matcher"]


def _tier_meta(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Each tier's ``meta`` block (one tier at the top level, several under ``tiers``)."""
    tiers = summary.get("tiers")
    blocks = list(tiers.values()) if isinstance(tiers, dict) else [summary]
    return [block["meta"] for block in blocks]


def declarations_from_summaries(summaries: Sequence[Path]) -> dict[str, object]:
    """One model's declaration: problem-set fingerprints per tier and every refuted verdict."""
    problem_sets: dict[str, str] = {}
    outcomes: dict[str, str] = {}
    for path in summaries:
        summary = json.loads(path.read_text())
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
        "outcomes": dict(sorted(outcomes.items())),
    }


def known_for_run(
    path: Path, model_label: str, problem_sets: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """Tier -> {test-id pattern: reason} that apply to this model and these tier samples."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON ({err}); fix or delete the file") from None
    entry = data.get(model_label)
    if entry is None:
        return {}
    if not isinstance(entry, dict) or not isinstance(entry.get("outcomes"), dict):
        raise ConfigError(
            f"{path}: {model_label!r} must be {{'problem_sets': {{tier: fingerprint}}, "
            "'outcomes': {test id: reason}}; regenerate it with python -m "
            "codi_fixtures.plugin.known_outcomes"
        )
    declared = entry.get("problem_sets", {})
    return {
        tier: dict(entry["outcomes"])
        for tier, fingerprint in problem_sets.items()
        if declared.get(tier) == fingerprint
    }


def matcher(pattern: str) -> re.Pattern[str]:
    """A test-id suffix pattern; only ``*`` is a wildcard (``[`` and ``]`` are literal)."""
    return re.compile(".*" + re.escape(pattern).replace(r"\*", ".*"))


def main(argv: list[str] | None = None) -> None:
    """Replace the declarations of ``--model`` in the JSON file."""
    parser = argparse.ArgumentParser(prog="python -m codi_fixtures.plugin.known_outcomes")
    parser.add_argument("summaries", nargs="+", type=Path, help="summary_statistics.json files")
    parser.add_argument("--model", default="bundled", help="model label (checkpoint dir name)")
    parser.add_argument("--out", type=Path, default=Path("experiments/known_outcomes.json"))
    args = parser.parse_args(argv)
    content = json.loads(args.out.read_text()) if args.out.exists() else {}
    content[args.model] = declarations_from_summaries(args.summaries)
    atomic_write_text(args.out, json.dumps(content, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

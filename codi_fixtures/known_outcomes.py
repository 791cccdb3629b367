"""Declare a model's known claim outcomes (strict xfails) from the verdicts of a run.

``python -m codi_fixtures.known_outcomes --model bundled reports/quick/summary_statistics.json
reports/full/summary_statistics.json`` writes ``experiments/known_outcomes.json``: every claim
that *failed* in those runs is recorded with its evidence, so later runs treat it as an
expected outcome and fail if it starts passing (``xfail_strict``). Review the diff before
committing it: it is a statement about the model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from codi_fixtures.atomic import atomic_write_text

__all__ = ["known_from_summaries", "main"]


def known_from_summaries(summaries: Sequence[Path]) -> dict[str, str]:
    """Test-id suffix -> reason, for every failed or already-xfailed verdict in the summaries."""
    known: dict[str, str] = {}
    for path in summaries:
        for verdict in json.loads(path.read_text())["verdicts"]:
            if verdict["outcome"] in {"failed", "xfailed"}:
                test_id = verdict["test"].split("/")[-1]
                evidence = verdict["evidence"].split(": ", 1)[-1]
                known[test_id] = f"not supported on this model: {evidence}"[:300]
    return dict(sorted(known.items()))


def main(argv: list[str] | None = None) -> None:
    """Merge the known outcomes of ``--model`` into the JSON file."""
    parser = argparse.ArgumentParser(prog="python -m codi_fixtures.known_outcomes")
    parser.add_argument("summaries", nargs="+", type=Path, help="summary_statistics.json files")
    parser.add_argument("--model", default="bundled", help="model label (checkpoint dir name)")
    parser.add_argument("--out", type=Path, default=Path("experiments/known_outcomes.json"))
    args = parser.parse_args(argv)
    content = json.loads(args.out.read_text()) if args.out.exists() else {}
    content[args.model] = known_from_summaries(args.summaries)
    atomic_write_text(args.out, json.dumps(content, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

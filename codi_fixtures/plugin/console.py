"""The findings in the console at the end of an experiments run: verdict grids, counts, paths.

Pure functions of the controller's outcomes; each claim's parameters come from the
``codi_params`` user property the plugin attaches at collection (so xdist workers' reports
carry them too). One grid per claim function: columns are its first parameter (thought,
layer role), rows its others (ablation kind, difficulty; ``1-L2`` for step 1 at layer 2).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from codi_fixtures.plugin.outcomes import OUTCOMES
from codi_fixtures.report.vocabulary import SYMBOLS, grid_cell

__all__ = ["PARAMS_PROPERTY", "SYMBOLS", "summary_lines"]

PARAMS_PROPERTY = "codi_params"
LEGEND = (
    "S supported · R refuted · K known outcome (declared refutation) · ? inconclusive · "
    "U known outcome no longer holds · E error"
)
_NAME_WIDTH = 46


def _grid(name: str, cells: Mapping[tuple[str, ...], str]) -> list[str]:
    """Lines of one claim function's grid (one line when it has a single row)."""
    flat = {grid_cell(k): v for k, v in cells.items()}
    first = list(dict.fromkeys(c for c, _ in flat))
    second = list(dict.fromkeys(r for _, r in flat))
    width = max(3, *(len(c) for c in first)) + 1
    label = name.removeprefix("test_")[:_NAME_WIDTH].ljust(_NAME_WIDTH)

    def row(key2: str) -> str:
        out = []
        for key1 in first:
            out.append(SYMBOLS.get(flat.get((key1, key2), ""), ".").ljust(width))
        return "".join(out).rstrip()

    header = "".join(c.ljust(width) for c in first).rstrip()
    if first == [""]:
        return [f"  {label} {SYMBOLS.get(flat.get(('', ''), ''), '.')}"]
    if second == [""]:
        return [f"  {label} {header}", f"  {'':{_NAME_WIDTH}} {row('')}"]
    lines = [f"  {label} {header}"]
    lines += [f"    {k2[: _NAME_WIDTH - 2]:{_NAME_WIDTH - 2}} {row(k2)}" for k2 in second]
    return lines


def summary_lines(
    outcomes: Mapping[str, str],
    params: Mapping[str, Mapping[str, Any]],
    failures: Mapping[str, tuple[Any, set[str]]],
    *,
    crashes: Mapping[Any, list[str]] | None = None,
    model: str,
    report_dir: Path | None,
    writes_report: bool = True,
    notes: Sequence[str] = (),
) -> list[str]:
    """Everything printed under "CODI findings" (about 30 lines for one tier).

    Study failures and claim crashes come first, one paragraph per distinct cause.
    ``failures``: tier -> (the study failure, the claims it left unjudged): under xdist
    another worker may have computed the same tier and judged the rest.
    """
    if not outcomes:
        return []
    lines: list[str] = []
    for _tier, (failure, unjudged) in sorted(failures.items()):
        lines += [*failure.paragraph(len(unjudged)).splitlines(), ""]
    for crash, claims in (crashes or {}).items():
        lines += [*crash.paragraph(claims).splitlines(), ""]
    by_tier: dict[str, dict[str, dict[str, dict[tuple[str, ...], str]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(dict))
    )
    for nodeid, outcome in outcomes.items():
        p = dict(params.get(nodeid, {}))
        tier = str(p.pop("tier", "?"))
        path, _, function = nodeid.partition("::")
        function = function.split("[")[0]
        by_tier[tier][Path(path).stem][function][tuple(str(v) for v in p.values())] = outcome
    for tier, files in sorted(by_tier.items()):
        lines.append(f"model {model} · {tier} tier")
        for stem, functions in files.items():
            lines.append(stem.removeprefix("test_").split("_")[0].upper() + f" ({stem}.py)")
            for function, cells in functions.items():
                lines += _grid(function, cells)
    counts = Counter(outcomes.values())
    lines.append(LEGEND)
    lines.append(", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o]))
    if report_dir is not None:
        lines.append(f"report: {report_dir / 'report.html'}")
        lines.append(f"figures: {report_dir / 'figures'}/")
        lines.append(f"statistics: {report_dir / 'summary_statistics.json'}")
    elif not writes_report:
        lines.append("no report written (--no-codi-report)")
    else:
        lines.append("no report written: no claim reached a verdict (an earlier report is kept)")
    return [*notes, *lines]

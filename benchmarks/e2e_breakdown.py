"""Where the time of a whole research run goes: interpreter, imports, model, engine, stats, report.

Runs ``pytest experiments -m <tier>`` in fresh subprocesses with a fresh cache and report
folder each time: once to write the bytecode caches (not counted), ``--runs`` times plainly
(the median is the wall time a user sees) and once under cProfile, whose cumulative times
give the split. ``PYTHONDONTWRITEBYTECODE`` is unset for the runs, as on a user's machine.
The phases are the project's own entry points:

- interpreter + imports: ``python -c pass`` and the imports a run of the bundled model makes
  (torch, matplotlib, the plugin, and transformers with its LLaMA model and auto classes,
  which import most of transformers' weight), timed in their own processes;
- model load: :func:`codi_fixtures.models.load_model`;
- engine: :func:`codi_fixtures.study.runs.compute_study` (every condition, every row);
- statistics: every memoised statistic (``StudyView.memoised``), in this process;
- figures: waiting for the figures (``FigureRendering.wait``): drawn and rendered in forked
  workers where it can, while the report's statistics are gathered;
- report: the HTML summary and JSON (``build_summary`` less its figures) and pytest-html.

cProfile slows Python-heavy code, so the split is shown as shares of the profiled run and
scaled to the plain run's wall time. A script that prints measurements, not a test::

    .venv/bin/python benchmarks/e2e_breakdown.py --tier full -- -k 'rq1 or rq2'
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = {  # (file suffix, function name) of each phase's entry point in the profile
    "model load": ("codi_fixtures/models.py", "load_model"),
    "engine (study runs)": ("codi_fixtures/study/runs.py", "compute_study"),
    "statistics (analyses)": ("codi_fixtures/analyses/view.py", "memoised"),
    "figures (draw + render)": ("codi_fixtures/report/figures.py", "wait"),
    "report (HTML, JSON)": ("codi_fixtures/report/build.py", "build_summary"),
}


_IMPORTS = (
    "import torch, matplotlib, codi_fixtures.plugin, codi_fixtures.models; "
    "from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM"
)
"""What a bundled run imports before its model loads (the model's own class included)."""


def _run(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def _pytest_args(tier: str, work: Path, extra: list[str]) -> list[str]:
    return [
        "experiments",
        "-m",
        tier,
        "-q",
        "-p",
        "no:randomly",
        "-p",
        "no:cacheprovider",
        f"--codi-cache={work / 'cache'}",
        f"--report-dir={work / 'report'}",
        *extra,
    ]


def _cumulative(stats: pstats.Stats) -> dict[str, float]:
    found = dict.fromkeys(PHASES, 0.0)
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in raw.items():
        for phase, (suffix, function) in PHASES.items():
            if name == function and filename.endswith(suffix):
                found[phase] = max(found[phase], ct)
    return found


def main() -> None:
    """Measure and print the breakdown (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", default="full", choices=("quick", "full"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3, help="timed plain runs (median shown)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest options (after --)")
    args = parser.parse_args()
    env = dict(os.environ)  # torch's threads as a user gets them (all cores, or OMP_NUM_THREADS)
    # As a user runs it: bytecode caches on (pytest's rewritten test modules included).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    python = sys.executable
    interpreter = _run([python, "-c", "pass"], env)
    imports = _run([python, "-c", _IMPORTS], env) - interpreter
    walls = []
    for _ in range(1 + args.runs):  # the first run writes the bytecode caches: not counted
        with tempfile.TemporaryDirectory() as plain_dir:
            walls.append(
                _run(
                    [
                        python,
                        "-m",
                        "pytest",
                        *_pytest_args(args.tier, Path(plain_dir), args.pytest_args),
                    ],
                    env,
                )
            )
    walls = walls[1:]
    wall = statistics.median(walls)
    with tempfile.TemporaryDirectory() as prof_dir:
        work = Path(prof_dir)
        profile = work / "run.prof"
        profiled = _run(
            [
                python,
                "-m",
                "cProfile",
                "-o",
                str(profile),
                "-m",
                "pytest",
                *_pytest_args(args.tier, work, args.pytest_args),
            ],
            env,
        )
        phases = _cumulative(pstats.Stats(str(profile)))
    phases["report (HTML, JSON)"] -= phases["figures (draw + render)"]  # figures inside it
    scale = wall / profiled
    rows = {name: seconds * scale for name, seconds in phases.items()}
    rest = wall - interpreter - imports - sum(rows.values())
    runs = " / ".join(f"{w:.2f}" for w in walls)
    threads = os.environ.get("OMP_NUM_THREADS", f"default ({os.cpu_count()} cores)")
    print(
        f"pytest experiments -m {args.tier}: {wall:.2f} s wall, median of {runs} s "
        f"(profiled {profiled:.2f} s); torch threads: {threads}"
    )
    print(f"  {'interpreter start':28} {interpreter:6.2f} s")
    print(f"  {'imports (torch, HF models)':28} {imports:6.2f} s")
    for name, seconds in rows.items():
        print(f"  {name:28} {seconds:6.2f} s")
    print(f"  {'pytest + collection + rest':28} {rest:6.2f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "tier": args.tier,
                    "wall_s": wall,
                    "walls_s": walls,
                    "profiled_s": profiled,
                    "interpreter_s": interpreter,
                    "imports_s": imports,
                    "phases_s": rows,
                    "rest_s": rest,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()

"""RQ3 / RQ4 methods on the planted organism and its control: lens, probes, IIA, RQ1 link.

Runs every readout of :mod:`codi_fixtures.study.readouts`, the probes and statistics of
:mod:`codi_fixtures.stats.decoding` and the interchange interventions of
:mod:`codi_fixtures.study.interchange` on a CODI organism's held-out problems, and writes the
tables (markdown, stdout) and the numbers (``--json``).

    OMP_NUM_THREADS=1 python benchmarks/rq3_rq4_validation.py --model planted --n 400
    OMP_NUM_THREADS=1 python benchmarks/rq3_rq4_validation.py --model bundled --n 400
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codi_fixtures.config import ModelConfig
from codi_fixtures.model import load_codi
from codi_fixtures.organism.task import MAX_VALUE
from codi_fixtures.stats.decoding import (
    iia_summary_of,
    lens_rate,
    lens_rate_table,
    probe_effects,
    probe_grid,
    rq1_link_test,
)
from codi_fixtures.study.data import load_problem_jsonl, stratified_sample
from codi_fixtures.study.interchange import ValueDomain, choose_donors, run_interchange
from codi_fixtures.study.readouts import ablation_importance, collect_readouts

log = logging.getLogger("rq3_rq4_validation")
ROOT = Path(__file__).resolve().parents[1] / "codi_fixtures"


def _pct(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{100 * x:.1f}"


def _ci(res: Any) -> str:
    return f"{100 * res.statistic:+.1f} [{100 * res.ci_low:+.1f}, {100 * res.ci_high:+.1f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def run(model_name: str, n: int, seed: int) -> tuple[str, dict[str, Any]]:
    """All measurements on one organism; returns (markdown, numbers)."""
    ckpt = ROOT / model_name
    model = load_codi(ModelConfig(ckpt=ckpt, device="cpu", dtype="float32"))
    problems = load_problem_jsonl(ckpt / "eval.jsonl")
    if n < len(problems):
        problems = stratified_sample(problems, n, seed=seed)
    out: dict[str, Any] = {"model": model_name, "n": len(problems)}
    md = [f"## {model_name} ({len(problems)} held-out problems)\n"]
    wall: dict[str, float] = {}

    start = time.perf_counter()
    ro = collect_readouts(model, problems)
    wall["readouts"] = time.perf_counter() - start
    assert ro.hidden is not None
    n_t = model.spec.n_thoughts
    steps = ro.n_targets - 1  # target columns 0..steps-1 are steps 1..steps, then the answer
    names = [f"step {k + 1}" for k in range(steps)] + ["answer"]
    thoughts = [f"t{t}" for t in range(n_t)]
    t_pos = [ro.positions.index(t) for t in thoughts]

    # --- logit lens ---------------------------------------------------------------------------
    rates, base, counts, bad = lens_rate_table(ro.lens_rank, ro.target_tokens, ro.target_values)
    rates5, _, _, _ = lens_rate_table(ro.lens_rank, ro.target_tokens, ro.target_values, topk=5)
    emb = ro.sites.index("emb")
    layer_sites = [i for i, s in enumerate(ro.sites) if s != "emb"]
    md.append(
        "### Logit lens, top-1 first-token rate (%) at the input embedding\n\n"
        "Baseline = share of the commonest first token among the problems with that target "
        "(the best any problem-blind reader scores).\n\n"
    )
    rows = []
    for k, name in enumerate(names):
        cells = [_pct(rates[ro.positions.index("bot"), emb, k])]
        cells += [_pct(rates[p, emb, k]) for p in t_pos]
        rows.append([name, str(counts[k]), _pct(base[k]), *cells, str(bad[k])])
    md.append(_table(["target", "n", "baseline", "bot", *thoughts, "undecodable"], rows))
    md.append("\n### Logit lens, top-1 rate (%) at the best block output (layer)\n\n")
    rows = []
    best_layer: dict[str, list[str]] = {}
    for k, name in enumerate(names):
        cells = []
        for p in [ro.positions.index("bot"), *t_pos]:
            sub = rates[p, layer_sites, k]
            j = int(np.nanargmax(sub)) if np.isfinite(sub).any() else 0
            cells.append(f"{_pct(sub[j])} ({ro.sites[layer_sites[j]]})")
        best_layer[name] = cells
        rows.append([name, _pct(base[k]), *cells])
    md.append(_table(["target", "baseline", "bot", *thoughts], rows))
    diag = []
    for t in range(min(n_t, steps)):
        res = lens_rate(ro.lens_rank[:, t_pos[t], emb, t], ro.target_tokens[:, t])
        diag.append(
            [
                f"t{t} / step {t + 1}",
                _pct(res.rate),
                _pct(res.baseline),
                _ci(res.result),
                f"{res.result.p_value:.2g}",
                str(res.result.verdict),
            ]
        )
    md.append("\n### Lens on the planted diagonal (input embedding): rate - baseline\n\n")
    md.append(
        _table(["thought / step", "rate", "baseline", "rate - base [90% CI]", "p", "verdict"], diag)
    )
    paper = []
    for k in range(min(3, steps)):
        r_emb = rates[t_pos, emb, k]
        best_t = int(np.nanargmax(r_emb))
        valid = ro.target_tokens[:, k] >= 0
        any1 = (ro.lens_rank[valid][:, t_pos, emb, k] == 0).any(axis=1).mean()
        paper.append(
            [
                f"step {k + 1}",
                str(counts[k]),
                f"t{best_t}",
                _pct(r_emb[best_t]),
                _pct(rates5[t_pos[best_t], emb, k]),
                _pct(float(any1)),
            ]
        )
    md.append(
        "\n### CODI-paper form (GPT-2 CODI reports 97.1 / 83.9 / 75.0 % for steps 1 / 2 / 3)\n\n"
        "Problems with >= k steps; the step-k value's first token under the lens on the "
        "thought's input embedding: at the best thought (chosen on the data), top-1 and "
        "top-5, and top-1 at any of the six thoughts.\n\n"
    )
    md.append(_table(["step", "n", "best thought", "top-1", "top-5", "any thought top-1"], paper))
    out["lens"] = {
        "rates_emb": rates[:, emb].tolist(),
        "rates_top5_emb": rates5[:, emb].tolist(),
        "rates_all_sites": rates.tolist(),
        "baseline": base.tolist(),
        "n": counts.tolist(),
        "undecodable": bad.tolist(),
        "positions": list(ro.positions),
        "sites": list(ro.sites),
        "targets": names,
    }

    # --- probes -------------------------------------------------------------------------------
    start = time.perf_counter()
    grid = probe_grid(ro.hidden, ro.target_values, ro.positions, ro.sites, seed=seed)
    wall["probes"] = time.perf_counter() - start
    md.append(
        "\n### Linear probes at the best site (by accuracy), 5-fold CV over problems\n\n"
        "Accuracy (%), then accuracy minus the permuted-label probe and minus the best "
        "question-position probe (`q_last` / `bot` at any site), percentage points with 90% "
        "Tango score CI over problems (paired).\n\n"
    )
    rows = []
    probe_out: dict[str, Any] = {}
    best_site = np.zeros((ro.n_targets, n_t), dtype=int)
    for k, name in enumerate(names):
        for t in range(n_t):
            acc = np.nanmean(grid.correct[k, t_pos[t]], axis=-1)
            best_site[k, t] = int(np.nanargmax(acc)) if np.isfinite(acc).any() else 0
            site = ro.sites[best_site[k, t]]
            eff = probe_effects(grid, k, thoughts[t], site)
            probe_out[f"{name}/{thoughts[t]}"] = {
                "site": site,
                **{key: v.as_dict() for key, v in eff.items()},
            }
            rows.append(
                [
                    name,
                    thoughts[t],
                    site,
                    _pct(eff["accuracy"].statistic),
                    _ci(eff["minus_permuted"]),
                    _ci(eff["minus_question"]),
                    str(eff["minus_question"].verdict),
                ]
            )
    md.append(
        _table(["target", "thought", "site", "acc", "- permuted", "- question", "verdict"], rows)
    )
    role_rows = []
    for k in range(steps):
        t = min(k, n_t - 1)
        site = ro.sites[best_site[k, t]]
        for steps_in in sorted({int(x) for x in ro.steps if x >= k + 1}):
            keep = ro.steps == steps_in
            role = "answer" if steps_in == k + 1 else "intermediate"
            eff = probe_effects(grid, k, thoughts[t], site, rows=keep)
            role_rows.append(
                [
                    f"step {k + 1}",
                    thoughts[t],
                    f"{steps_in}-step",
                    role,
                    str(eff["accuracy"].n),
                    _pct(eff["accuracy"].statistic),
                    _ci(eff["minus_permuted"]),
                    _ci(eff["minus_question"]),
                ]
            )
    md.append(
        "\n### Probes on the diagonal per difficulty bin (step k of a k-step problem = the "
        "answer)\n\n"
    )
    md.append(
        _table(
            ["step", "thought", "bin", "role", "n", "acc", "- permuted", "- question"], role_rows
        )
    )
    out["probes"] = probe_out

    # --- interchange --------------------------------------------------------------------------
    start = time.perf_counter()
    donors = choose_donors(problems, domain=ValueDomain(0, MAX_VALUE, integers=True), seed=seed)
    ic_cells = [(t, k) for t in range(n_t) for k in range(1, steps + 1)]
    ic = run_interchange(model, problems, donors, ic_cells)
    wall["interchange"] = time.perf_counter() - start
    summary = iia_summary_of(ic)
    md.append(
        "\n### Interchange (thought t's input embedding from a donor), per (thought, step)\n\n"
        "IIA = the patched answer is the counterfactual answer (different-value donor); "
        "baselines: a random donor's patch, and the unpatched answer; same-value donor: "
        "answer unchanged (%) and Δ log p(gold); Δ log p for the different-value donor.\n\n"
    )
    rows = [
        [
            f"t{c.thought}",
            f"step {c.step}",
            str(c.n),
            _pct(c.iia),
            _pct(c.random_baseline),
            _pct(c.unpatched_baseline),
            _ci(c.iia_minus_random),
            _pct(c.same_unchanged),
            f"{c.same_delta_logp:.2f}",
            f"{c.different_delta_logp:.2f}",
        ]
        for c in summary
    ]
    md.append(
        _table(
            [
                "thought",
                "step",
                "n",
                "IIA",
                "random",
                "unpatched",
                "IIA - random",
                "same: unchanged",
                "same: Δlogp",
                "diff: Δlogp",
            ],
            rows,
        )
    )
    out["interchange"] = [
        {
            **{k: v for k, v in c.__dict__.items() if not hasattr(v, "as_dict")},
            "iia_minus_random": c.iia_minus_random.as_dict(),
            "iia_minus_unpatched": c.iia_minus_unpatched.as_dict(),
        }
        for c in summary
    ]

    # --- RQ1 link -----------------------------------------------------------------------------
    start = time.perf_counter()
    importance = ablation_importance(model, problems, kind="mean", seed=seed)
    wall["importance"] = time.perf_counter() - start
    lens_hits = (ro.lens_rank[:, t_pos, emb, :steps] == 0).astype(float)
    lens_hits[ro.lens_rank[:, t_pos, emb, :steps] < 0] = np.nan
    probe_hits = np.stack(
        [
            np.stack([grid.correct[k, t_pos[t], best_site[k, t]] for t in range(n_t)], axis=-1)
            for k in range(steps)
        ],
        axis=1,
    )  # (N, K, T)
    link_rows = []
    out["rq1_link"] = {"importance_mean": importance.mean(axis=0).tolist()}
    for label, dec in (("lens (emb)", lens_hits.transpose(0, 2, 1)), ("probe", probe_hits)):
        link = rq1_link_test(dec, importance, seed=seed)
        link_rows.append(
            [
                label,
                str(link.best_thought),
                str(link.importance_rank),
                _ci_plain(link.result),
                f"{link.p_permutation:.3g}",
                str(link.result.verdict),
            ]
        )
        out["rq1_link"][label] = {
            "best_thought": link.best_thought,
            "importance_rank": link.importance_rank,
            "p_permutation": link.p_permutation,
            **link.result.as_dict(),
        }
    imp = " / ".join(f"{v:.2f}" for v in importance.mean(axis=0))
    md.append(
        "\n### RQ1 link: is each step's best-encoding thought among the most important?\n\n"
        f"Importance = mean Δ log p(gold) under mean ablation, thoughts t0..t5: {imp}. "
        "Statistic = (T+1)/2 - mean importance rank of the best thoughts (0 = random "
        "thought; max (T-K)/2 = 0.5 for five distinct thoughts); SESOI 0.25.\n\n"
    )
    md.append(
        _table(
            [
                "decodability",
                "best thought per step",
                "its importance rank",
                "statistic [90% CI]",
                "perm. p",
                "verdict",
            ],
            link_rows,
        )
    )
    out["wall_s"] = {k: round(v, 1) for k, v in wall.items()}
    md.append(f"\nWall time (s, one thread): {out['wall_s']}\n")
    return "".join(md), out


def _ci_plain(res: Any) -> str:
    return f"{res.statistic:+.2f} [{res.ci_low:+.2f}, {res.ci_high:+.2f}]"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the requested organisms; markdown to stdout, numbers to ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("planted", "bundled", "both"), default="both")
    parser.add_argument("--n", type=int, default=400, help="held-out problems (stratified)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    names = ("planted", "bundled") if args.model == "both" else (args.model,)
    numbers = {}
    for name in names:
        start = time.perf_counter()
        text, numbers[name] = run(name, args.n, args.seed)
        log.info("%s done in %.1f s", name, time.perf_counter() - start)
        sys.stdout.write(text + "\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(numbers, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

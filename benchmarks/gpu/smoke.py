"""GPU smoke check before a long GPU run: the CODI training step and the engine on CUDA.

Builds a tiny random LLaMA CODI with LoRA and trainable added rows exactly as the SmolLM2
organism does (:func:`codi_fixtures.smol.lora.build_codi`), runs teacher and CODI training
steps through the recipe's own ``run_phase`` on ``cuda``, then the bundled model's engine on
CUDA against the CPU (answers must agree). Prints library versions and one line per check.
"""

from __future__ import annotations

import logging
import time

import torch

from codi_fixtures.model.checkpoint import CodiSpec
from codi_fixtures.organism.evaluate import latent_answers
from codi_fixtures.organism.tokenizer import build_tokenizer
from codi_fixtures.organism.train import TrainConfig, TrainState, run_phase
from codi_fixtures.smol.lora import LORA_TARGETS, build_codi, fold_new_rows, trainable_state
from codi_fixtures.smol.task import make_splits

log = logging.getLogger("smoke")


def _tiny_backbone(tok: object) -> object:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tok),  # type: ignore[arg-type]
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,  # type: ignore[attr-defined]
    )
    config._attn_implementation = "eager"
    return LlamaForCausalLM(config)


def main() -> None:
    """Run the checks."""
    import argparse

    import peft
    import transformers

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    device = parser.parse_args().device
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info(
        "torch %s, transformers %s, peft %s, cuda %s",
        torch.__version__, transformers.__version__, peft.__version__, torch.cuda.is_available(),
    )  # fmt: skip
    train, evals = make_splits(64, 2)
    texts = [f"{p.question} {p.cot} The answer is: {int(p.answer)}" for p in train + evals]
    tok = build_tokenizer(texts, add_bos=False)
    spec = CodiSpec(n_thoughts=2, prj_dim=16, lora_r=4, lora_alpha=8, lora_targets=LORA_TARGETS)
    model = build_codi(_tiny_backbone(tok), tok, spec, seed=0)
    model.to(device)
    opt = torch.optim.AdamW(list(trainable_state(model).values()), lr=1e-2)
    cfg = TrainConfig(n_thoughts=2, batch_size=8, teacher_steps=3, codi_steps=3, warmup=1)
    state = TrainState()
    start = time.monotonic()
    run_phase(model, train, cfg, state, opt)
    state = TrainState(phase="codi")
    run_phase(model, train, cfg, state, opt)
    fold_new_rows(model)
    answers = latent_answers(model, evals)
    log.info(
        "OK training on %s: %d steps, last loss %.3f, %.1f s; answers %s",
        device, 6, state.history[-1]["loss"], time.monotonic() - start, answers,
    )  # fmt: skip
    from codi_fixtures.config import BUNDLED_CHECKPOINT, ModelConfig
    from codi_fixtures.model.codi import load_codi
    from codi_fixtures.study.data import load_problem_jsonl

    bundled = load_codi(ModelConfig(ckpt=None, device="cpu", dtype="float32"))
    problems = load_problem_jsonl(BUNDLED_CHECKPOINT / "eval.jsonl")[:100]
    cpu = latent_answers(bundled, problems)
    gpu = latent_answers(
        load_codi(ModelConfig(ckpt=None, device=device, dtype="float32")), problems
    )
    same = sum(a == b for a, b in zip(cpu, gpu, strict=True))
    log.info("OK bundled engine %s vs cpu: %d/%d answers identical", device, same, len(problems))


if __name__ == "__main__":
    main()

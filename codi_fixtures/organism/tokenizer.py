"""A word-level tokenizer for the synthetic task: one token per digit, word or symbol.

Spaces are carried SentencePiece-style by a ``▁`` prefix on the token that
follows them, so ``decode`` restores ``"The answer is: 18"`` exactly. Like the
LLaMA tokenizer, it prepends a BOS token.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["BOS", "EOS", "UNK", "build_tokenizer"]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_PIECES = r"▁?(?:[A-Za-z]+|\d|<<|>>|[^\w\s▁])"


def build_tokenizer(
    texts: Iterable[str], out_dir: Path | None = None, *, add_bos: bool = True
) -> object:
    """Train the word-level vocabulary on ``texts``; save to ``out_dir`` when given.

    ``add_bos`` False gives a GPT-2-like tokenizer that adds no BOS token.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            pre_tokenizers.Split(Regex(_PIECES), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.WordLevelTrainer(special_tokens=[UNK, BOS, EOS], min_frequency=1)
    tok.train_from_iterator(texts, trainer=trainer)
    if add_bos:
        bos_id = tok.token_to_id(BOS)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, padding_side="left"
    )
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast

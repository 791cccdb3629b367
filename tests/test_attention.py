"""Grouped-query eager attention: transformers' eager numbers without the per-head key copy."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers.cache_utils import DynamicCache

from codi_fixtures.model.architecture import unwrap_peft
from codi_fixtures.model.attention import GROUPED_EAGER
from codi_fixtures.model.kvcache import cache_kwargs
from codi_fixtures.testing import tiny_codi


def _forward_twice(lm: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Logits and attentions of a padded prefill, then of one cached step."""
    cache = DynamicCache()
    with torch.no_grad():
        first = lm(
            input_ids=ids,
            attention_mask=mask,
            **cache_kwargs(lm, cache),
            use_cache=True,
            output_attentions=True,
        )
        step_ids = ids[:, -1:]
        step_mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
        second = lm(
            input_ids=step_ids,
            attention_mask=step_mask,
            **cache_kwargs(lm, cache),
            use_cache=True,
            output_attentions=True,
        )
    return [first.logits, *first.attentions, second.logits, *second.attentions]


def test_grouped_attention_equals_transformers_eager() -> None:
    """Same logits and attention probabilities as eager, with padding and a KV cache."""
    model = tiny_codi("llama", hidden=48, heads=6, kv_heads=2, lora=False)
    grouped = unwrap_peft(model.codi)
    assert grouped.config._attn_implementation == GROUPED_EAGER
    eager = copy.deepcopy(grouped)
    eager.set_attn_implementation("eager")
    ids = torch.randint(
        0, model.base_vocab_size, (3, 11), generator=torch.Generator().manual_seed(0)
    )
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[2, :1] = 0
    got, want = _forward_twice(grouped, ids, mask), _forward_twice(eager, ids, mask)
    assert len(got) == len(want) == 2 * (1 + model.n_layers)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_grouped_attention_never_repeats_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of it: no key/value tensor is expanded to one copy per query head."""
    import transformers.models.llama.modeling_llama as llama

    calls: list[int] = []
    original = llama.repeat_kv

    def counting(hidden: torch.Tensor, n_rep: int) -> torch.Tensor:
        calls.append(n_rep)
        return original(hidden, n_rep)

    monkeypatch.setattr(llama, "repeat_kv", counting)
    model = tiny_codi("llama", hidden=48, heads=6, kv_heads=2, lora=False)
    ids = torch.ones((2, 5), dtype=torch.long)
    with torch.no_grad():
        unwrap_peft(model.codi)(input_ids=ids)
    assert calls == []
    eager = unwrap_peft(model.codi)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        eager(input_ids=ids)
    assert calls == [3] * (2 * model.n_layers)  # the spy sees eager's copies


@pytest.mark.parametrize(
    ("arch", "kv_heads", "expected"),
    [("llama", 2, GROUPED_EAGER), ("llama", 4, "eager"), ("gpt2", 4, "eager")],
    ids=["grouped-llama", "ungrouped-llama", "gpt2"],
)
def test_only_grouped_models_switch(arch: str, kv_heads: int, expected: str) -> None:
    """Ungrouped models (GPT-2, the bundled organism) keep transformers' own eager attention."""
    model = tiny_codi(arch, heads=4, kv_heads=kv_heads)  # type: ignore[arg-type]
    assert unwrap_peft(model.codi).config._attn_implementation == expected

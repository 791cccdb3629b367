"""The one CODI latent engine: question -> <bot> -> thoughts -> <eot> -> answer.

Batched under left padding, so every row's ``<bot>`` sits in the same column
``P-1`` (P = padded prompt length), thought ``t`` in column ``P+t`` and
``<eot>`` in column ``P+T``; attention masks and position ids are explicit in
every phase. A prompt is encoded once; any number of rows (the clean run and
interventions) branch from its KV cache.

Differences from the official ``test.py`` (deliberate): the latent loop and the
answer phase pass the attention mask (the official loop passes none, so padded
rows attend to padding); greedy decoding never emits pad, ``<bot>`` or ``<eot>``
(the official slice removes only ``<eot>``); decoding stops at eos or after
``max_new_tokens`` (default 24), not a fixed 256 steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers.cache_utils import Cache

from codi_fixtures.answers import parse_answer
from codi_fixtures.model.architecture import attention_modules, unwrap_peft
from codi_fixtures.model.codi import CodiModel
from codi_fixtures.model.hooks import attention_weights_hook, block_output_hook
from codi_fixtures.model.kvcache import (
    branch_cache,
    cache_kwargs,
    compact_cached_rows,
    copy_cached_rows,
    new_cache,
    set_live_rows,
)

__all__ = [
    "KnockoutMask",
    "LatentRun",
    "LoopState",
    "Prompt",
    "ThoughtPatch",
    "answer_targets",
    "build_prompt",
    "encode_prompt",
    "finite_rows",
    "forward_step",
    "greedy_decode",
    "mask_specials",
    "run_latent",
    "run_thoughts",
]

OnThought = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Prompt:
    """A left-padded batch of questions ending in ``<bot>``."""

    input_ids: torch.Tensor  # (B, P)
    attention_mask: torch.Tensor  # (B, P), 1 = real token
    q_lens: torch.Tensor  # (B,) Q = tokens before <bot> (BOS and optional eos included)

    @property
    def width(self) -> int:
        """Padded prompt length P (``<bot>`` is column P-1)."""
        return int(self.input_ids.shape[1])

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def take(self, rows: slice) -> Prompt:
        """These rows, still padded to this batch's width (so they compute as they did here)."""
        return Prompt(self.input_ids[rows], self.attention_mask[rows], self.q_lens[rows])


@dataclass(frozen=True)
class KnockoutMask:
    """Per-row attention knockout. R run rows, L layers, H heads, T thoughts.

    Row ``r`` cannot attend from its ``<eot>`` query (and, where ``answer_queries[r]``, from
    every later query: teacher-forced and generated answer tokens) to thought ``t``'s key at
    (layer, head) where ``blocked[r, layer, head, t]``. Nothing else changes (the thoughts'
    own computation, later thoughts' attention to earlier ones). A row with nothing blocked
    runs bit-identically to an unmasked run.
    """

    blocked: torch.Tensor  # (R, L, H, T) bool
    answer_queries: torch.Tensor  # (R,) bool

    def __post_init__(self) -> None:
        if self.blocked.dim() != 4 or self.blocked.dtype != torch.bool:
            raise ValueError("blocked must be a (rows, layers, heads, thoughts) bool tensor")
        if self.answer_queries.shape != self.blocked.shape[:1]:
            raise ValueError("answer_queries must hold one flag per row")


@dataclass(frozen=True)
class _ActiveKnockout:
    """A knockout attached to a loop state: the mask and the thoughts' / ``<eot>``'s columns."""

    mask: KnockoutMask
    first_thought: int  # cache column of thought 0
    eot: int  # cache column of <eot>


@dataclass
class LoopState:
    """Where a batch of sequences stands: KV cache, mask and next position id.

    ``row_ids`` names the run row each state row holds (``run_latent``'s rows, 0..R-1), so
    per-row data (a knockout mask) follows its row when finished rows leave the batch.
    """

    cache: Cache
    mask: torch.Tensor  # (B, S) attention mask over cached columns
    next_pos: torch.Tensor  # (B,) position id of the next token
    row_ids: torch.Tensor | None = None  # (B,) run row of each state row; None = 0..B-1
    knockout: _ActiveKnockout | None = None

    @property
    def length(self) -> int:
        """Number of cached columns S."""
        return int(self.mask.shape[1])

    def rows(self) -> torch.Tensor:
        """(B,) the run row of each state row."""
        if self.row_ids is not None:
            return self.row_ids
        return torch.arange(self.mask.shape[0], device=self.mask.device)

    def select(self, rows: torch.Tensor) -> LoopState:
        """A new state holding copies of ``rows`` (repeats allowed): branching."""
        return LoopState(
            branch_cache(self.cache, rows),
            self.mask.index_select(0, rows),
            self.next_pos.index_select(0, rows),
            self.rows().index_select(0, rows.to(self.mask.device)),
            self.knockout,
        )

    def keep(self, rows: torch.Tensor) -> LoopState:
        """Only ``rows`` (ascending, no repeats): in place where the cache allows, else a copy.

        For a state that is consumed (decoding): dropping finished rows this way moves the
        kept rows inside the buffers already written instead of gathering them into new ones.
        """
        if not compact_cached_rows(self.cache, rows):
            return self.select(rows)
        self.row_ids = self.rows().index_select(0, rows.to(self.mask.device))
        self.mask = self.mask.index_select(0, rows)
        self.next_pos = self.next_pos.index_select(0, rows)
        return self


@dataclass(frozen=True)
class ThoughtPatch:
    """Per-row replacement of thought sites.

    Row ``b``'s site at thought ``t`` is replaced by ``values[b, t]`` where
    ``mask[b, t]``. ``layer`` None means the thought's input embedding; an int
    means the output of that decoder block at the thought's position.
    """

    values: torch.Tensor  # (B, T, d)
    mask: torch.Tensor  # (B, T) bool
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.values.shape[:2] != self.mask.shape:
            raise ValueError(
                f"patch values {tuple(self.values.shape)} and mask {tuple(self.mask.shape)} "
                "disagree on (rows, thoughts)"
            )

    def apply(self, thought: int, value: torch.Tensor) -> torch.Tensor:
        """``value`` (B, d) with this thought's masked rows replaced (new tensor)."""
        rows = self.mask[:, thought].to(value.device)
        if not bool(rows.any()):
            return value
        new = self.values[:, thought].to(device=value.device, dtype=value.dtype)
        return torch.where(rows[:, None], new, value)


@dataclass
class LatentRun:
    """Everything one batch of rows produced. Shapes: B rows, T thoughts, d width."""

    q_lens: torch.Tensor  # (B,)
    thoughts: torch.Tensor  # (B, T, d) input embeddings fed at positions Q+1+t
    first_logits: torch.Tensor  # (B, V+3) at <eot>; specials set to -inf
    answer_ids: list[list[int]]
    answer_text: list[str]
    answers: list[float | None]
    nonfinite: torch.Tensor  # (B,) bool: NaN/inf met in hidden states or logits
    block_outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, T, d)
    attentions: torch.Tensor | None = None  # (B, layers, heads, T): <eot> query -> thoughts
    # (B, L, T, P) head-mean attention from the query that produces thought t (<bot> for t = 0,
    # thought t-1 after) to the prompt's columns (left-padded question, then <bot>)
    routing: torch.Tensor | None = None
    target_logp: torch.Tensor | None = None  # (B,) teacher-forced log p of the scored tokens
    # (B, V+3) logits predicting the first scored token (the answer number's first token),
    # teacher-forced through the answer prompt; specials -inf
    answer_logits: torch.Tensor | None = None
    target_first_logp: torch.Tensor | None = None  # (B,) log p of that first scored token


def build_prompt(model: CodiModel, questions: Sequence[str]) -> Prompt:
    """Tokenize questions (BOS as the tokenizer adds it), append [eos,] <bot>, left-pad."""
    tok = model.tokenizer
    if not questions:
        raise ValueError("a prompt needs at least one question")
    encoded = [list(ids) for ids in tok(list(questions))["input_ids"]]
    tail = [model.eos_id, model.bot_id] if model.spec.eos_before_bot else [model.bot_id]
    seqs = [ids + tail for ids in encoded]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), model.pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    q_lens = torch.tensor([len(s) - 1 for s in seqs])
    return Prompt(input_ids.to(model.device), mask.to(model.device), q_lens)


def _decoder(model: CodiModel) -> Any:
    """The transformer stack without the LM head (LlamaModel / GPT2Model)."""
    return unwrap_peft(model.codi).base_model


@dataclass(frozen=True)
class StepOutput:
    """What one forward of n new tokens returns."""

    hidden: torch.Tensor  # (B, n, d) last layer, after the final norm
    logits: torch.Tensor | None = None  # (B, n, V+3)
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer (B, H, n, S)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # HF convention, n_layers + 1


def forward_step(
    model: CodiModel,
    state: LoopState,
    *,
    input_ids: torch.Tensor | None = None,
    embeds: torch.Tensor | None = None,
    new_mask: torch.Tensor | None = None,
    logits: bool = False,
    attentions: bool = False,
    hidden_states: bool = False,
) -> StepOutput:
    """Advance ``state`` by n tokens (ids or embeddings), masking and positioning explicitly.

    ``new_mask`` (B, n) marks real tokens; padded ones neither attend-to nor advance positions.
    """
    n = int((input_ids if input_ids is not None else embeds).shape[1])  # type: ignore[union-attr]
    batch = state.mask.shape[0]
    if new_mask is None:
        new_mask = torch.ones((batch, n), dtype=state.mask.dtype, device=state.mask.device)
    mask = torch.cat([state.mask, new_mask], dim=1)
    offsets = torch.cumsum(new_mask, dim=1) - new_mask
    positions = state.next_pos[:, None] + offsets
    decoder = _decoder(model)
    with ExitStack() as stack:
        knockout = state.knockout
        if knockout is not None and state.length + n > knockout.eot:
            _knockout_hooks(stack, model, knockout, state.rows(), state.length, n)
        out = decoder(
            input_ids=input_ids,
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            **cache_kwargs(decoder, state.cache),
            use_cache=True,
            output_attentions=attentions,
            output_hidden_states=hidden_states,
        )
    state.mask = mask
    state.next_pos = state.next_pos + new_mask.sum(dim=1)
    hidden = out.last_hidden_state
    head = model.codi.get_output_embeddings()
    return StepOutput(
        hidden=hidden,
        logits=head(hidden) if logits else None,
        attentions=out.attentions if attentions else None,
        hidden_states=out.hidden_states if hidden_states else None,
    )


def _knockout_hooks(
    stack: ExitStack,
    model: CodiModel,
    knockout: _ActiveKnockout,
    row_ids: torch.Tensor,
    past: int,
    n_new: int,
) -> None:
    """Forward pre-hooks (removed by ``stack``) that apply ``knockout`` to one forward.

    At each layer where some live row blocks something, the additive attention mask is set
    to the dtype's minimum for (query, key) pairs whose query is ``<eot>`` (or a later
    column, for rows with answer queries) and whose key is a blocked thought.
    """
    device = row_ids.device
    blocked_all = knockout.mask.blocked.to(device)[row_ids]  # (B, L, H, T)
    answer = knockout.mask.answer_queries.to(device)[row_ids]  # (B,)
    batch, _, _, n_thoughts = blocked_all.shape
    total = past + n_new
    columns = torch.arange(past, total, device=device)  # query columns
    query = (columns[None, :] == knockout.eot) | (
        answer[:, None] & (columns[None, :] >= knockout.eot)
    )  # (B, n)
    if not bool(query.any()):
        return
    first = knockout.first_thought

    def make_hook(layer: int) -> Callable[..., Any]:
        rows_blocked = blocked_all[:, layer]  # (B, H, T)
        if bool((rows_blocked.all(dim=1) == rows_blocked.any(dim=1)).all()):
            rows_blocked = rows_blocked[:, :1]  # the same for every head: broadcast
        keys = torch.zeros((batch, rows_blocked.shape[1], total), dtype=torch.bool, device=device)
        keys[:, :, first : first + n_thoughts] = rows_blocked
        block = query[:, None, :, None] & keys[:, :, None, :]  # (B, H or 1, n, S)

        def hook(
            _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            attn_mask = kwargs.get("attention_mask")
            if attn_mask is None:  # no mask given: causal over the cached columns
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                causal = torch.arange(total, device=device)[None, :] <= columns[:, None]
                attn_mask = torch.zeros((batch, 1, n_new, total), dtype=hidden.dtype, device=device)
                attn_mask = attn_mask.masked_fill(~causal, torch.finfo(hidden.dtype).min)
            if attn_mask.shape[-1] != total:
                raise RuntimeError(
                    f"attention knockout: mask covers {attn_mask.shape[-1]} keys, expected {total}"
                )
            if attn_mask.dtype == torch.bool:  # True = attend
                new = attn_mask & ~block
            else:
                low = torch.finfo(attn_mask.dtype).min
                new = attn_mask.masked_fill(block, low)
            return args, {**kwargs, "attention_mask": new}

        return hook

    layers = blocked_all.any(dim=(0, 2, 3)).nonzero().flatten().tolist()
    modules = attention_modules(model.codi)
    for layer in layers:
        handle = modules[layer].register_forward_pre_hook(make_hook(layer), with_kwargs=True)
        stack.callback(handle.remove)


def encode_prompt(model: CodiModel, prompt: Prompt) -> tuple[LoopState, torch.Tensor]:
    """Encode question + ``<bot>``; returns the state and the last hidden at ``<bot>`` (B, d)."""
    mask = prompt.attention_mask
    state = LoopState(
        new_cache(),
        mask[:, :0],
        torch.zeros(len(prompt), dtype=torch.long, device=mask.device),
    )
    out = forward_step(model, state, input_ids=prompt.input_ids, new_mask=mask)
    return state, out.hidden[:, -1]


def run_thoughts(
    model: CodiModel,
    state: LoopState,
    bot_hidden: torch.Tensor,
    *,
    n_thoughts: int,
    on_thought: OnThought | None = None,
    patch: ThoughtPatch | None = None,
    capture_layers: Sequence[int] = (),
) -> tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor]:
    """The latent loop: feed T thoughts; returns (inputs (B,T,d), captures, nonfinite (B,)).

    ``on_thought(t, z)`` may rewrite the input embedding of thought ``t`` (after
    ``patch`` when the patch is at the embedding site). Gradients flow when enabled.
    """
    z = model.project(bot_hidden)  # z for thought 0
    fed: list[torch.Tensor] = []
    captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in capture_layers}
    bad = ~finite_rows(bot_hidden)
    for t in range(n_thoughts):
        if patch is not None and patch.layer is None:
            z = patch.apply(t, z)
        if on_thought is not None:
            z = on_thought(t, z)
        fed.append(z)
        with ExitStack() as stack:
            if patch is not None and patch.layer is not None:
                stack.enter_context(
                    block_output_hook(model.codi, patch.layer, _last_position(patch, t))
                )
            for layer in capture_layers:  # registered after the patch: sees patched values
                stack.enter_context(
                    block_output_hook(model.codi, layer, _recorder(captured[layer]))
                )
            h = forward_step(model, state, embeds=z[:, None, :]).hidden[:, -1]
        bad |= ~finite_rows(h)
        z = model.project(h)  # the (T+1)-th projection is computed and never fed, as upstream
    thoughts = torch.stack(fed, dim=1) if fed else bot_hidden.new_zeros((len(bot_hidden), 0, 0))
    return thoughts, {k: torch.stack(v, dim=1) for k, v in captured.items()}, bad


def _last_position(patch: ThoughtPatch, thought: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(out: torch.Tensor) -> torch.Tensor:
        new = out.clone()
        new[:, -1] = patch.apply(thought, out[:, -1])
        return new

    return fn


def _recorder(store: list[torch.Tensor]) -> Callable[[torch.Tensor], None]:
    def fn(out: torch.Tensor) -> None:
        store.append(out[:, -1].detach())

    return fn


def _routing(store: list[torch.Tensor], prompt: Prompt) -> Callable[[torch.Tensor], None]:
    """Keep the last query's head-mean attention to the prompt columns, (B, P) float32."""

    def fn(weights: torch.Tensor) -> None:
        store.append(weights[:, :, -1, : prompt.width].float().mean(dim=1).detach())

    return fn


def mask_specials(
    model: CodiModel, logits: torch.Tensor, *, in_place: bool = False
) -> torch.Tensor:
    """Pad, ``<bot>`` and ``<eot>`` can never be generated or scored (float32 logits).

    Returns a new tensor, or with ``in_place`` masks float32 ``logits`` themselves: for
    logits the caller has just computed and reads nowhere else (no copy of a (rows, vocab)
    tensor per decoding step).
    """
    logits = logits.float() if in_place else logits.float().clone()
    logits[..., model.base_vocab_size :] = float("-inf")
    return logits


def finite_rows(values: torch.Tensor) -> torch.Tensor:
    """Whether each row (last dim) is free of NaN and inf: ``isfinite(values).all(-1)``.

    One min/max pass instead of a boolean copy of ``values`` (a (rows, vocab) tensor per
    decoding step): NaN propagates to both, +inf to the max, -inf to the min.
    """
    low, high = torch.aminmax(values, dim=-1)
    return torch.isfinite(low) & torch.isfinite(high)


_LOG_SOFTMAX_CHUNK = 1 << 21
"""Elements per ``log_softmax`` call in :func:`_score` (8 MiB of float32): row chunks reuse
one small buffer instead of allocating a second (rows, tokens, vocab) tensor."""


def _target_logp(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits).gather(ids)`` (B, W), computed a few rows at a time.

    Each row's softmax is computed exactly as in one call (the kernel reduces rows
    independently), so the values are bit-identical.
    """
    per_row = max(1, logits[0].numel())
    step = max(1, _LOG_SOFTMAX_CHUNK // per_row)
    parts = [
        torch.log_softmax(logits[i : i + step], dim=-1).gather(2, ids[i : i + step, :, None])
        for i in range(0, logits.shape[0], step)
    ]
    return torch.cat(parts)[:, :, 0]


def answer_targets(model: CodiModel, golds: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """Token ids of ``"<answer prompt> <gold>" + eos`` and how many leading ids are not scored.

    Only the number and eos are scored: the prompt, and a whitespace-only token between it
    and the number, are not. Tokenizers that write that space as a token of its own
    (SmolLM2's, LLaMA-3's: ``" 82"`` is ``" "`` then digits) would otherwise put the
    number's "first token" (``logp_first``, KL) on a space every answer shares.
    """
    tok = model.tokenizer
    prompt = model.spec.answer_prompt
    prompt_ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
    unique = sorted(set(golds))
    encoded = tok([f"{prompt} {gold}" for gold in unique], add_special_tokens=False)["input_ids"]
    skips: dict[str, int] = {}  # per distinct gold: leading ids not scored
    for gold, ids in zip(unique, encoded, strict=True):
        shared = len(prompt_ids) if list(ids[: len(prompt_ids)]) == prompt_ids else 0
        while shared < len(ids) - 1 and not tok.decode([ids[shared]]).strip():
            shared += 1  # a whitespace-only token before the number
        skips[gold] = shared
    by_gold = dict(zip(unique, encoded, strict=True))
    targets = [[*by_gold[gold], model.eos_id] for gold in golds]
    return targets, [skips[gold] for gold in golds]


@dataclass(frozen=True)
class _Scored:
    """Teacher-forced targets after :func:`_score` advanced the state through them."""

    ids: torch.Tensor  # (B, W) target ids, padded with pad
    real: torch.Tensor  # (B, W) 1 = a target token
    logits: torch.Tensor  # (B, W, V+3) logits predicting each target token (specials -inf)
    logp: torch.Tensor  # (B,) sum of log p over the scored tokens
    nonfinite: torch.Tensor  # (B,) NaN/inf in those logits
    first: torch.Tensor  # (B,) column of the first scored token (the number's first token)
    first_logp: torch.Tensor  # (B,) log p of that token


def _score(
    model: CodiModel,
    state: LoopState,
    first_logits: torch.Tensor,
    targets: list[list[int]],
    n_prompt: list[int],
) -> _Scored:
    """Teacher-force each row's target (all but its last token are fed: ``state`` advances)."""
    batch, width = len(targets), max(len(t) for t in targets)
    device = first_logits.device
    if len(n_prompt) != batch:
        raise ValueError(f"{batch} targets but {len(n_prompt)} prompt lengths")
    padded = [[*seq, *[model.pad_id] * (width - len(seq))] for seq in targets]
    ids = torch.tensor(padded, dtype=torch.long, device=device)
    columns = torch.arange(width, device=device)[None, :]
    lengths = torch.tensor([len(seq) for seq in targets], device=device)[:, None]
    skips = torch.tensor(n_prompt, device=device)[:, None]
    real = (columns < lengths).long()
    scored = (columns >= skips) & (columns < lengths)
    logits = [first_logits[:, None, :]]
    if width > 1:
        rest = forward_step(
            model, state, input_ids=ids[:, :-1], new_mask=real[:, :-1], logits=True
        ).logits
        assert rest is not None
        logits.append(mask_specials(model, rest, in_place=True))
    stacked = torch.cat(logits, dim=1)
    token_logp = _target_logp(stacked, ids)
    total = torch.where(scored, token_logp, torch.zeros_like(token_logp)).sum(dim=1)
    finite = finite_rows(stacked[..., : model.base_vocab_size]) | (real == 0)
    first = torch.tensor(n_prompt, dtype=torch.long, device=device)
    first_logp = token_logp.gather(1, first[:, None])[:, 0]
    return _Scored(ids, real, stacked, total, ~finite.all(dim=1), first, first_logp)


def greedy_decode(
    model: CodiModel,
    state: LoopState,
    first_logits: torch.Tensor,
    max_new_tokens: int,
    prefixes: Sequence[Sequence[int]] | None = None,
) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """Greedy decode; returns (ids per row, non-finite flags, truncated flags).

    ``prefixes`` are tokens a row has already produced (their keys/values are in
    ``state``; ``first_logits`` predict the next one). A row stops at its first stop
    token, or at ``max_new_tokens`` in all (truncated). Finished rows leave the batch
    (the state is compacted once a quarter of the live rows have finished), so one
    long answer does not keep every row decoding. ``state`` is consumed.
    """
    batch, device = first_logits.shape[0], first_logits.device
    stops = torch.tensor(model.stop_ids, device=device)
    bad = ~finite_rows(first_logits[:, : model.base_vocab_size])
    out = torch.full((batch, max_new_tokens), model.pad_id, dtype=torch.long, device=device)
    length = torch.zeros(batch, dtype=torch.long, device=device)
    for row, prefix in enumerate(prefixes or ()):
        out[row, : len(prefix)] = torch.tensor(list(prefix), dtype=torch.long)
        length[row] = len(prefix)
    truncated = torch.ones(batch, dtype=torch.bool, device=device)
    alive = torch.arange(batch, device=device)  # original row of each state row
    done = length >= max_new_tokens  # per state row
    logits = first_logits
    while not bool(done.all()):
        next_ids = logits.argmax(dim=-1)
        live = alive[~done]
        out[live, length[live]] = next_ids[~done]
        length[live] += 1
        stopped = ~done & torch.isin(next_ids, stops)
        truncated[alive[stopped]] = False
        done |= stopped | (length[alive] >= max_new_tokens)
        if bool(done.all()):
            break
        if int(done.sum()) * 4 >= len(done):  # compact: drop finished rows
            keep = torch.nonzero(~done).squeeze(1)
            state = state.keep(keep)
            alive, done, next_ids = alive[keep], done[keep], next_ids[keep]
        new_logits = forward_step(model, state, input_ids=next_ids[:, None], logits=True).logits
        assert new_logits is not None
        finite = finite_rows(new_logits[:, -1])
        bad[alive[~finite & ~done]] = True
        logits = mask_specials(model, new_logits[:, -1], in_place=True)
    answers = [row[:n] for row, n in zip(out.tolist(), length.tolist(), strict=True)]
    return answers, bad, truncated


def _decode_after_scoring(
    model: CodiModel, state: LoopState, scored: _Scored, max_new_tokens: int
) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """Greedy answers that reuse the teacher-forced pass (exact, not an approximation).

    Greedy decoding would produce each row's target up to the first position ``j``
    where the target token is not the argmax. Those ``j`` tokens' keys/values are
    already in the cache; the later target columns are masked out and decoding
    continues from the argmax at ``j``. A row whose whole target (through its stop
    token) is its greedy path needs no decoding at all.
    """
    device = scored.ids.device
    fed = scored.ids.shape[1] - 1  # target tokens fed to the model
    on_path = (scored.logits.argmax(dim=-1) == scored.ids) & (scored.real == 1)
    agree = on_path.long().cumprod(dim=1).sum(dim=1)  # greedy follows the target for j tokens
    stops = set(model.stop_ids)
    prefixes: list[list[int]] = []
    for ids_row, j in zip(scored.ids.tolist(), agree.tolist(), strict=True):
        prefix = ids_row[:j]
        stop_at = next((k for k, tok in enumerate(prefix) if tok in stops), None)
        prefixes.append(prefix if stop_at is None else prefix[: stop_at + 1])
    finished = torch.tensor([bool(p) and p[-1] in stops for p in prefixes], device=device)
    # Unfinished rows continue after the last target token that is in the cache.
    resume = agree.clamp(max=fed)
    if fed:  # forget the target columns the greedy path did not take
        columns = torch.arange(fed, device=device)
        keep = (columns[None, :] < resume[:, None]).to(state.mask.dtype)
        state.mask = torch.cat([state.mask[:, : state.length - fed], keep], dim=1)
        state.next_pos = state.next_pos - scored.real[:, :-1].sum(dim=1) + resume
    ids = [list(p[:max_new_tokens]) for p in prefixes]
    truncated = torch.tensor([len(p) > max_new_tokens for p in prefixes], device=device)
    truncated |= ~finished & (resume >= max_new_tokens)
    bad = torch.zeros(len(prefixes), dtype=torch.bool, device=device)
    todo = torch.nonzero(~finished & (resume < max_new_tokens)).squeeze(1)
    if len(todo):
        first = scored.logits[todo, resume[todo]]
        sub_state = state if len(todo) == len(prefixes) else state.keep(todo)
        sub_ids, sub_bad, sub_cut = greedy_decode(
            model,
            sub_state,
            first,
            max_new_tokens,
            [prefixes[r][: int(resume[r])] for r in todo.tolist()],
        )
        bad[todo], truncated[todo] = sub_bad, sub_cut
        for row, seq in zip(todo.tolist(), sub_ids, strict=True):
            ids[row] = seq
    return ids, bad, truncated


@dataclass(frozen=True)
class _BranchPlan:
    """Rows that join the latent loop only where they first differ from their question's run.

    A row whose patch first touches thought ``f`` computes thoughts ``0..f-1`` exactly as an
    unpatched row of its question would; so one unpatched *trunk* row per question runs the
    loop, and the row joins at step ``f`` with the trunk's keys/values copied in. Where every
    question has a run row that is never patched (the clean row of an ablation pass), that
    row is its question's trunk; otherwise the trunks are extra cache rows, dropped after the
    loop. Cache rows: the ``extra`` trunks, then the run rows in ``order`` -- the trunk run
    rows first (question order), then the others sorted by ``f`` -- so the live rows at
    every step are one slice of the cache, and trunk ``u`` is always cache row ``u``.
    """

    order: torch.Tensor  # (R,) run rows in cache order
    inverse: torch.Tensor  # (R,) position of each run row in ``order``
    rows: torch.Tensor  # (R,) prompt row of each ordered run row
    trunks: torch.Tensor  # (U,) prompt rows of the trunks
    trunk_of: torch.Tensor  # (R,) trunk index of each ordered run row
    joined: list[int]  # joined[t]: ordered run rows live at step t (trunk heads if any, f <= t)
    extra: int  # cache rows that are trunks only (U, or 0 when run rows are the trunks)

    @staticmethod
    def of(rows: torch.Tensor, patch: ThoughtPatch | None, n_thoughts: int) -> _BranchPlan | None:
        """The plan, or None when it would not save latent steps (every row differs early)."""
        rows = rows.cpu()
        first = torch.full((len(rows),), n_thoughts, dtype=torch.long)
        if patch is not None and n_thoughts:
            mask = patch.mask[:, :n_thoughts].cpu()
            touched = mask.any(dim=1)
            first[touched] = mask[touched].long().argmax(dim=1)
        trunks, trunk_of = torch.unique(rows, return_inverse=True)
        if int(first.sum()) <= len(trunks) * n_thoughts:
            return None
        by_first = torch.sort(first, stable=True).indices
        designated: dict[int, int] = {}  # trunk -> its first never-patched run row
        for row in by_first[first[by_first] == n_thoughts].tolist():
            designated.setdefault(int(trunk_of[row]), row)
        if len(designated) == len(trunks):
            heads = torch.tensor([designated[u] for u in range(len(trunks))], dtype=torch.long)
            is_head = torch.zeros(len(rows), dtype=torch.bool)
            is_head[heads] = True
            order = torch.cat([heads, by_first[~is_head[by_first]]])
            extra, live_from = 0, len(trunks)
        else:
            order, extra, live_from = by_first, len(trunks), 0
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        rest = first[order[live_from:]]
        joined = [live_from + int((rest <= t).sum()) for t in range(n_thoughts)]
        return _BranchPlan(order, inverse, rows[order], trunks, trunk_of[order], joined, extra)


def _branching_thoughts(
    model: CodiModel,
    state: LoopState,
    bot_hidden: torch.Tensor,
    plan: _BranchPlan,
    patch: ThoughtPatch | None,
    n_thoughts: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent loop of ``plan``; ``state`` holds its cache rows (extra trunks, run rows).

    Returns the run rows' fed thoughts (R, T, d) and non-finite flags (R,); ``state`` is left
    holding only the run rows (extra trunks' cache rows are no longer shown).
    """
    device = state.mask.device
    n_extra, n_rows = plan.extra, len(plan.rows)
    trunk_of = torch.cat([torch.arange(n_extra), plan.trunk_of]).to(device)  # per cache row
    prefix_mask, prefix_pos, width = state.mask, state.next_pos, state.length
    if patch is not None and n_extra:  # the extra trunks are never patched
        values = torch.cat(
            [patch.values.new_zeros((n_extra, *patch.values.shape[1:])), patch.values]
        )
        mask = torch.cat([patch.mask.new_zeros((n_extra, patch.mask.shape[1])), patch.mask])
        patch = ThoughtPatch(values, mask, patch.layer)
    z = model.project(bot_hidden)  # thought 0's input, every cache row
    bad = ~finite_rows(bot_hidden)
    fed: list[torch.Tensor] = []
    live = len(plan.trunks)  # trunk u is cache row u

    def join(upto: int, step: int) -> None:
        """Cache rows ``live..upto`` take their trunk's state before thought ``step``."""
        new = torch.arange(live, upto, device=device)
        source = trunk_of[new]
        if step:
            copy_cached_rows(state.cache, new, source, slice(width, width + step))
        z[new] = z[source]
        bad[new] |= bad[source]

    for t in range(n_thoughts):
        upto = n_extra + plan.joined[t]
        if upto > live:
            join(upto, t)
            live = upto
        set_live_rows(state.cache, slice(0, live))
        state.mask = torch.cat([prefix_mask[:live], prefix_mask.new_ones((live, t))], dim=1)
        state.next_pos = prefix_pos[:live] + t
        step_patch = (
            None
            if patch is None
            else ThoughtPatch(patch.values[:live], patch.mask[:live], patch.layer)
        )
        zt = z[:live]
        if step_patch is not None and step_patch.layer is None:
            zt = step_patch.apply(t, zt)
        # run rows not yet live feed what their trunk feeds
        fed.append(torch.cat([zt[n_extra:], zt[trunk_of[live:]]]))
        with ExitStack() as stack:
            if step_patch is not None and step_patch.layer is not None:
                stack.enter_context(
                    block_output_hook(model.codi, step_patch.layer, _last_position(step_patch, t))
                )
            h = forward_step(model, state, embeds=zt[:, None, :]).hidden[:, -1]
        bad[:live] |= ~finite_rows(h)
        z = torch.cat([model.project(h), z[live:]])
    if n_extra + n_rows > live:
        join(n_extra + n_rows, n_thoughts)
    rows = slice(n_extra, n_extra + n_rows)
    set_live_rows(state.cache, rows)
    state.mask = torch.cat([prefix_mask[rows], prefix_mask.new_ones((n_rows, n_thoughts))], dim=1)
    state.next_pos = prefix_pos[rows] + n_thoughts
    thoughts = torch.stack(fed, dim=1) if fed else bot_hidden.new_zeros((n_rows, 0, 0))
    return thoughts, bad[rows]


def _reorder(run: LatentRun, index: torch.Tensor) -> LatentRun:
    """``run`` with its rows taken in ``index`` order (every per-row field)."""
    picks = index.tolist()

    def rows(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.index_select(0, index.to(x.device))

    return LatentRun(
        q_lens=run.q_lens.index_select(0, index.to(run.q_lens.device)),
        thoughts=run.thoughts.index_select(0, index.to(run.thoughts.device)),
        first_logits=run.first_logits.index_select(0, index.to(run.first_logits.device)),
        answer_ids=[run.answer_ids[i] for i in picks] if run.answer_ids else [],
        answer_text=[run.answer_text[i] for i in picks] if run.answer_text else [],
        answers=[run.answers[i] for i in picks] if run.answers else [],
        nonfinite=run.nonfinite.index_select(0, index.to(run.nonfinite.device)),
        block_outputs={
            k: v.index_select(0, index.to(v.device)) for k, v in run.block_outputs.items()
        },
        attentions=rows(run.attentions),
        routing=rows(run.routing),
        target_logp=rows(run.target_logp),
        answer_logits=rows(run.answer_logits),
        target_first_logp=rows(run.target_first_logp),
    )


@torch.no_grad()
def run_latent(
    model: CodiModel,
    prompt: Prompt,
    *,
    rows: torch.Tensor | None = None,
    patch: ThoughtPatch | None = None,
    on_thought: OnThought | None = None,
    capture_layers: Sequence[int] = (),
    attention_layers: Sequence[int] = (),
    targets: tuple[list[list[int]], list[int]] | None = None,
    max_new_tokens: int = 24,
    generate: bool = True,
    n_thoughts: int | None = None,
    knockout: KnockoutMask | None = None,
    prefix: tuple[LoopState, torch.Tensor] | None = None,
    routing: bool = False,
) -> LatentRun:
    """Run CODI inference for a batch: the question prefix is encoded once.

    ``rows`` (R,) picks prompt rows to run (repeats allowed): every row branches
    from its question's cached prefix, so a clean row and its ablations share it.
    ``patch``/``targets`` are indexed by run row. ``attention_layers`` requests
    per-head attention from the ``<eot>`` query to each thought.

    ``n_thoughts`` runs that many latent steps instead of the model's (0 = ``<eot>`` right
    after ``<bot>``); ``knockout`` (indexed by run row) blocks attention edges from the
    ``<eot>`` / answer queries to thoughts; ``prefix`` is ``encode_prompt(model, prompt)``
    computed once and shared by several calls (it is not modified; needs ``rows``).
    ``routing`` records :attr:`LatentRun.routing` (the question and latent passes run under
    attention hooks; no extra forward).
    """
    if prefix is not None and rows is None:
        raise ValueError("a shared prefix needs rows= (the prefix itself is never advanced)")
    if routing and prefix is not None:
        raise ValueError("routing attention is read while the prompt is encoded: no prefix=")
    n_thoughts = model.spec.n_thoughts if n_thoughts is None else n_thoughts
    if n_thoughts < 0:
        raise ValueError(f"n_thoughts must be >= 0, got {n_thoughts}")
    n_rows = len(prompt) if rows is None else len(rows)
    if knockout is not None and knockout.blocked.shape[0] != n_rows:
        raise ValueError(f"knockout mask has {knockout.blocked.shape[0]} rows, the run {n_rows}")
    plan = None
    if rows is not None and on_thought is None and not capture_layers and not routing:
        plan = _BranchPlan.of(rows, patch, n_thoughts)
    if plan is None:
        return _run_latent(
            model,
            prompt,
            rows,
            patch,
            on_thought,
            capture_layers,
            attention_layers,
            targets,
            max_new_tokens,
            generate,
            n_thoughts,
            knockout,
            prefix,
            routing,
            None,
        )
    order = plan.order
    run = _run_latent(
        model,
        prompt,
        plan.rows,
        None
        if patch is None
        else ThoughtPatch(patch.values[order], patch.mask[order], patch.layer),
        None,
        (),
        attention_layers,
        None
        if targets is None
        else ([targets[0][i] for i in order], [targets[1][i] for i in order]),
        max_new_tokens,
        generate,
        n_thoughts,
        None
        if knockout is None
        else KnockoutMask(knockout.blocked[order], knockout.answer_queries[order]),
        prefix,
        False,
        plan,
    )
    return _reorder(run, plan.inverse)


def _run_latent(
    model: CodiModel,
    prompt: Prompt,
    rows: torch.Tensor | None,
    patch: ThoughtPatch | None,
    on_thought: OnThought | None,
    capture_layers: Sequence[int],
    attention_layers: Sequence[int],
    targets: tuple[list[list[int]], list[int]] | None,
    max_new_tokens: int,
    generate: bool,
    n_thoughts: int,
    knockout: KnockoutMask | None,
    prefix: tuple[LoopState, torch.Tensor] | None,
    routing: bool,
    plan: _BranchPlan | None,
) -> LatentRun:
    """:func:`run_latent` after validation; with a ``plan``, rows join the latent loop late."""
    records: list[list[torch.Tensor]] = [[] for _ in range(model.n_layers if routing else 0)]
    with ExitStack() as stack:
        for layer, store in enumerate(records):
            stack.enter_context(attention_weights_hook(model.codi, layer, _routing(store, prompt)))
        state, bot_hidden = encode_prompt(model, prompt) if prefix is None else prefix
        q_lens = prompt.q_lens
        if rows is not None:
            rows = rows.to(prompt.input_ids.device)
            q_lens = q_lens.index_select(0, rows.cpu())
            if plan is not None and plan.extra:  # the extra trunks first, then the run rows
                rows = torch.cat([plan.trunks.to(rows.device), rows])
            state, bot_hidden = state.select(rows), bot_hidden.index_select(0, rows)
        state.row_ids = None  # state rows are run rows from here on
        if plan is not None:
            blocks: dict[int, torch.Tensor] = {}
            thoughts, bad = _branching_thoughts(model, state, bot_hidden, plan, patch, n_thoughts)
        else:
            thoughts, blocks, bad = run_thoughts(
                model,
                state,
                bot_hidden,
                n_thoughts=n_thoughts,
                on_thought=on_thought,
                patch=patch,
                capture_layers=capture_layers,
            )
    if knockout is not None:
        if knockout.blocked.shape[-1] != n_thoughts:
            raise ValueError(f"knockout mask has {knockout.blocked.shape[-1]} thoughts")
        state.knockout = _ActiveKnockout(knockout, prompt.width, prompt.width + n_thoughts)
    eot = model.embed(torch.full_like(state.next_pos, model.eot_id))[:, None, :]
    out = forward_step(model, state, embeds=eot, logits=True, attentions=bool(attention_layers))
    assert out.logits is not None
    first_logits = mask_specials(model, out.logits[:, -1], in_place=True)
    bad |= ~finite_rows(out.hidden[:, -1])
    attn = out.attentions
    attentions = None
    if attention_layers:
        assert attn is not None
        start = prompt.width  # column of thought 0
        attentions = torch.stack(
            [attn[layer][:, :, -1, start : start + n_thoughts] for layer in attention_layers],
            dim=1,
        ).float()
    routing_attention = None
    if routing:
        if rows is not None:  # the first record has the prompt's rows, later ones the run's
            for store in records:
                store[0] = store[0].index_select(0, rows)
        routing_attention = torch.stack(
            [torch.stack(store[:n_thoughts], dim=1) for store in records], dim=1
        )
    run = LatentRun(
        q_lens=q_lens,
        thoughts=thoughts,
        first_logits=first_logits,
        answer_ids=[],
        answer_text=[],
        answers=[],
        nonfinite=bad,
        block_outputs=blocks,
        attentions=attentions,
        routing=routing_attention,
    )
    scored = None
    if targets is not None:
        scored = _score(model, state, first_logits, *targets)
        run.target_logp = scored.logp
        run.target_first_logp = scored.first_logp
        rows_ = torch.arange(len(scored.first), device=scored.first.device)
        run.answer_logits = scored.logits[rows_, scored.first]
    if generate:
        if scored is None:
            ids, bad_gen, truncated = greedy_decode(model, state, first_logits, max_new_tokens)
        else:
            ids, bad_gen, truncated = _decode_after_scoring(model, state, scored, max_new_tokens)
            bad_gen |= scored.nonfinite
        texts = [model.tokenizer.decode(seq, skip_special_tokens=True) for seq in ids]
        prompt_text = model.spec.answer_prompt
        run = replace(
            run,
            answer_ids=ids,
            answer_text=texts,
            # An answer cut off before the answer prompt has no answer (its last number
            # would be an intermediate value of an explicit chain of thought).
            answers=[
                None if cut and prompt_text not in text else parse_answer(text, prompt_text)
                for text, cut in zip(texts, truncated.tolist(), strict=True)
            ],
            nonfinite=bad | bad_gen,
        )
    return run

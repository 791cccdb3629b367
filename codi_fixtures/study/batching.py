"""How many rows one forward pass takes: ``--batch-rows N``, or by default what memory allows.

Every forward call costs a fixed overhead (tens of kernel launches per layer), so on a small
model the study's time is set by the number of calls, not by its rows: with RQ5/RQ6's 176
rows per problem, 512 rows made 50 chunks (2,300 forward calls) of the bundled model's full
tier. ``auto`` sizes the batch from the cost model's per-row memory
(:func:`codi_fixtures.model.budget.per_row_bytes`) and a share of the device's *total* memory,
less the weights: total, not free, so every worker and every resumed run of a study on the same
hardware chunks it the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from codi_fixtures.model import budget
from codi_fixtures.model.codi import CodiModel
from codi_fixtures.study.problems import Problem

__all__ = ["AUTO_MAX_ROWS", "auto_batch_rows", "memory_budget_bytes", "resolve_batch_rows"]

log = logging.getLogger(__name__)

AUTO_MAX_ROWS = 8192
"""``auto`` never takes more rows than this (a chunk is also the unit of resumption)."""
AUTO_MIN_ROWS = 64
CPU_SHARE = 0.5
"""Of the host's memory: past what is available Linux's OOM killer, not an allocation error
(which would be split and retried), may end the run."""
GPU_SHARE = 0.8
"""Of the device's memory."""


def memory_budget_bytes(device: torch.device) -> int | None:
    """The share of ``device``'s total memory a study may plan for (None: unknown)."""
    if device.type == "cuda":
        return int(GPU_SHARE * torch.cuda.get_device_properties(device).total_memory)
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(CPU_SHARE * int(line.split()[1]) * 1024)
    except OSError:
        return None
    return None


def auto_batch_rows(model: CodiModel, problems: Sequence[Problem], max_new_tokens: int) -> int:
    """Rows per forward pass that fit the memory budget by the cost model, within bounds."""
    memory = memory_budget_bytes(model.device)
    if memory is None:
        return AUTO_MIN_ROWS * 8
    tok = model.tokenizer
    questions = [p.question for p in problems]
    question = max(len(ids) for ids in tok(questions)["input_ids"]) if questions else 1
    study = budget.StudyShape(question_tokens=question + 1, answer_tokens=max_new_tokens)
    shape = budget.shape_of(model)
    dtype_bytes = model.dtype.itemsize
    per_row = budget.per_row_bytes(
        shape, study.seq_len, dtype_bytes, scored_tokens=study.scored_tokens
    )
    rows = (memory - budget.weights_bytes(shape, dtype_bytes)) // per_row
    return int(max(AUTO_MIN_ROWS, min(AUTO_MAX_ROWS, rows)))


def resolve_batch_rows(
    batch_rows: int | None, model: CodiModel, problems: Sequence[Problem], max_new_tokens: int
) -> int:
    """``batch_rows`` as given, or (None) :func:`auto_batch_rows`, logged."""
    if batch_rows is not None:
        return batch_rows
    rows = auto_batch_rows(model, problems, max_new_tokens)
    log.info("--batch-rows auto: %d rows per forward pass (memory budget, cost model)", rows)
    return rows

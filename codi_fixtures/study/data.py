"""Problem sets: GSM8K jsonl, the seed research JSON, exported JSONL, stratified sampling."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codi_fixtures.atomic import atomic_write_text
from codi_fixtures.errors import DataError
from codi_fixtures.study.problems import DIFFICULTY_BINS, Problem, difficulty_bin

__all__ = [
    "load_gsm8k_jsonl",
    "load_problem_jsonl",
    "load_problems",
    "load_research_json",
    "problem_set_fingerprint",
    "stratified_sample",
    "write_problem_jsonl",
]

logger = logging.getLogger(__name__)

_ANNOTATION = re.compile(r"<<[^>]+>>")
# The README's invariant for GSM8K golds: `####\s*-?[\d,]+(\.\d+)?$`; we also accept `+`/`.5`.
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_FRACTION = re.compile(r"([-+]?\d+)/(\d+)")
_DIFFICULTY = re.compile(r"(\d+)\s*(\+?)\s*[-_ ]?\s*(?:steps?)?", re.IGNORECASE)
_SPLIT_INDEX = re.compile(r"([A-Za-z]+)_(\d+)")
# Keys that only an exported problem set has (GSM8K lines have just question/answer).
_EXPORT_KEYS = frozenset({"difficulty", "intermediates"})
_NO_FILE_FIX = "pass --problems PATH with an existing GSM8K .jsonl or research .json file"


def _parse_number(text: str) -> float | None:
    """Parse ``18``, ``-1,234.5`` or ``.5`` (commas stripped); None if it is not a number."""
    cleaned = text.strip().replace(",", "")
    if not _NUMBER.fullmatch(cleaned):
        return None
    value = float(cleaned)
    return value if math.isfinite(value) else None


def _parse_result(annotation: str) -> float | None:
    """The result of a ``<<expr=result>>`` annotation (a number or a simple fraction)."""
    inner = annotation[2:-2]
    if "=" not in inner:
        return None
    result = inner.rsplit("=", 1)[1].strip().replace(",", "")
    value = _parse_number(result)
    if value is not None:
        return value
    fraction = _FRACTION.fullmatch(result)
    if fraction and int(fraction.group(2)) != 0:
        return int(fraction.group(1)) / int(fraction.group(2))
    return None


def _annotations(solution: str) -> tuple[list[str], tuple[float, ...]]:
    """Calculator annotations of a solution and their results (all of them, or none)."""
    found = _ANNOTATION.findall(solution)
    results = [_parse_result(a) for a in found]
    if any(r is None for r in results):
        # Partial lists would misalign intermediate k with step k, so keep none.
        return found, ()
    return found, tuple(r for r in results if r is not None)


def _gold_after_hashes(solution: str) -> float | None:
    """The number after the last ``####``; None if there is none or it is not numeric."""
    if "####" not in solution:
        return None
    return _parse_number(solution.rsplit("####", 1)[1])


def _read_text(path: Path) -> str:
    """Read a problem file, turning a missing or unreadable file into a DataError."""
    if not path.exists():
        raise DataError(f"problem file {path} does not exist — {_NO_FILE_FIX}")
    if path.is_dir():
        raise DataError(f"problem file {path} is a directory — {_NO_FILE_FIX}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read problem file {path}: {exc} — {_NO_FILE_FIX}") from exc


def _jsonl_records(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line; malformed lines raise."""
    records = []
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and friends.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno}) — "
                "each line must be one complete JSON object; fix or delete the line"
            ) from exc
        if not isinstance(record, dict):
            raise DataError(
                f"{path}:{lineno}: expected a JSON object, got {type(record).__name__} — "
                "each line must be one JSON object with the problem's fields"
            )
        records.append((lineno, record))
    return records


def load_gsm8k_jsonl(path: Path) -> list[Problem]:
    """Load GSM8K's jsonl (``question``/``answer``), dropping problems with < 2 steps."""
    return _gsm8k_problems(path, _jsonl_records(path, _read_text(path)))


def _gsm8k_problems(path: Path, records: list[tuple[int, dict[str, Any]]]) -> list[Problem]:
    """GSM8K problems from parsed lines; the id uses the 0-based line index (HF row order)."""
    problems: list[Problem] = []
    dropped = 0
    for lineno, record in records:
        where = f"{path}:{lineno}"
        for key in ("question", "answer"):
            if not isinstance(record.get(key), str):
                state = "missing" if key not in record else "not a string"
                raise DataError(
                    f"{where}: field {key!r} is {state} — GSM8K lines need string "
                    "'question' and 'answer' fields"
                )
        solution: str = record["answer"]
        if "####" not in solution:
            raise DataError(
                f"{where}: 'answer' has no '#### <number>' final line — "
                "end the solution with '#### ' and the gold answer"
            )
        gold = _gold_after_hashes(solution)
        if gold is None:
            tail = solution.rsplit("####", 1)[1].strip()
            raise DataError(
                f"{where}: gold answer {tail!r} after '####' is not a number — "
                "write a plain number such as '#### 18' or '#### -2.5'"
            )
        found, intermediates = _annotations(solution)
        steps = len(found)
        if steps < 2:
            dropped += 1
            continue
        problems.append(
            Problem(
                id=f"gsm8k-{path.stem}-{lineno - 1}",
                question=record["question"],
                answer=gold,
                steps=steps,
                difficulty=difficulty_bin(steps),
                intermediates=intermediates,
                cot=" ".join(found),
            )
        )
    if dropped:
        logger.info("%s: dropped %d problem(s) with fewer than 2 calculator steps", path, dropped)
    return problems


def _normalise_difficulty(value: object) -> str | None:
    """Map ``"2-step"``, ``"2step"``, ``"5-step"``, ``"5+"``, ``3`` ... to a bin; None if not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return difficulty_bin(value) if value >= 2 else None
    if not isinstance(value, str):
        return None
    match = _DIFFICULTY.fullmatch(value.strip())
    if not match:
        return None
    steps = int(match.group(1))
    if steps < 2 or (match.group(2) and steps != 5):
        return None
    return difficulty_bin(steps)


def _research_id(gsm8k_id: object) -> str | None:
    """``gsm8k-<id>``; ``test_123`` becomes ``gsm8k-test-123`` to match the jsonl loader."""
    if isinstance(gsm8k_id, bool) or not isinstance(gsm8k_id, (int, str)):
        return None
    text = str(gsm8k_id).strip()
    if not text:
        return None
    split_index = _SPLIT_INDEX.fullmatch(text)
    if split_index:
        text = f"{split_index.group(1)}-{split_index.group(2)}"
    return f"gsm8k-{text}"


def _research_answer(value: object) -> float | None:
    """A number, a numeric string, or a full solution ending in ``#### <number>``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        if "####" in value:
            return _gold_after_hashes(value)
        return _parse_number(value)
    return None


def _research_problem(path: Path, index: int, record: object) -> Problem:
    """One record of the seed research format; errors name the 0-based record index."""
    where = f"{path}: record {index} (0-based)"
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: expected a JSON object, got {type(record).__name__} — "
            "the file must be a JSON list of problem objects"
        )
    for key in ("question", "answer", "difficulty", "gsm8k_id"):
        if key not in record:
            raise DataError(
                f"{where}: missing field {key!r} — research records need "
                "'question', 'answer', 'difficulty' and 'gsm8k_id'"
            )
    question = record["question"]
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: 'question' must be a non-empty string — fix the record")
    answer = _research_answer(record["answer"])
    if answer is None:
        raise DataError(
            f"{where}: 'answer' {record['answer']!r} is not a number — give a number, a "
            "numeric string, or a solution ending in '#### <number>'"
        )
    difficulty = _normalise_difficulty(record["difficulty"])
    if difficulty is None:
        raise DataError(
            f"{where}: unknown difficulty {record['difficulty']!r} — use one of "
            f"{', '.join(DIFFICULTY_BINS)} (or '2step', '5-step', '5+')"
        )
    problem_id = _research_id(record["gsm8k_id"])
    if problem_id is None:
        raise DataError(
            f"{where}: 'gsm8k_id' {record['gsm8k_id']!r} is invalid — use an int or a "
            "non-empty string such as 'test_123'"
        )
    solution = next(
        (
            text
            for text in (record.get("full_solution"), record.get("answer"))
            if isinstance(text, str) and _ANNOTATION.search(text)
        ),
        "",
    )
    found, intermediates = _annotations(solution)
    steps = record.get("reasoning_steps")
    if steps is None:
        steps = len(found) if found else DIFFICULTY_BINS.index(difficulty) + 2
    elif isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise DataError(
            f"{where}: 'reasoning_steps' {steps!r} must be a non-negative integer — "
            "fix it or leave the field out to derive it"
        )
    return Problem(
        id=problem_id,
        question=question,
        answer=answer,
        steps=steps,
        difficulty=difficulty,
        intermediates=intermediates,
        cot=" ".join(found),
    )


def _parse_json_document(path: Path, text: str) -> object:
    """Parse a whole-file JSON document, with the error's line in the message."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}) — "
            "fix the file so that it is one JSON list of problem objects"
        ) from exc


def load_research_json(path: Path) -> list[Problem]:
    """Load the seed research format: a JSON list of question/answer/difficulty/gsm8k_id."""
    return _research_problems(path, _parse_json_document(path, _read_text(path)))


def _research_problems(path: Path, document: object) -> list[Problem]:
    """Research-format problems from a parsed JSON document, which must be a list."""
    if not isinstance(document, list):
        raise DataError(
            f"{path}: top level is a JSON {type(document).__name__}, not a list — "
            "pass a research .json list of problem objects, a GSM8K .jsonl, "
            "or an exported problem .jsonl"
        )
    return [_research_problem(path, index, record) for index, record in enumerate(document)]


def _problem_record(problem: Problem) -> dict[str, Any]:
    """The JSON form of a problem (all fields; tuples as lists; numbers as floats)."""
    return {
        "id": problem.id,
        "question": problem.question,
        "answer": float(problem.answer),
        "steps": int(problem.steps),
        "difficulty": problem.difficulty,
        "intermediates": [float(value) for value in problem.intermediates],
        "cot": problem.cot,
    }


def _dumps(record: object, problem_id: str) -> str:
    """Serialise strictly (no NaN/inf, which are not JSON); a bad value names the problem."""
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False, sort_keys=True)
    except ValueError as exc:
        raise DataError(
            f"problem {problem_id!r} has a non-finite number ({exc}) — "
            "answers and intermediates must be finite"
        ) from exc


def write_problem_jsonl(path: Path, problems: Sequence[Problem]) -> None:
    """Write problems as JSONL, one record per line, atomically."""
    lines = [_dumps(_problem_record(problem), problem.id) for problem in problems]
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def _is_number(value: object) -> bool:
    """True for finite ints/floats (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _exported_problem(where: str, record: dict[str, Any]) -> Problem:
    """Validate one exported record and build its Problem."""
    fix = "re-export the set with write_problem_jsonl or fix the line"
    for key in ("id", "question", "answer", "steps", "difficulty"):
        if key not in record:
            raise DataError(f"{where}: missing field {key!r} — {fix}")
    checks: list[tuple[str, bool, str]] = [
        ("id", isinstance(record["id"], str), "a string"),
        ("question", isinstance(record["question"], str), "a string"),
        ("answer", _is_number(record["answer"]), "a finite number"),
        (
            "steps",
            isinstance(record["steps"], int) and not isinstance(record["steps"], bool),
            "an integer",
        ),
        ("difficulty", record["difficulty"] in DIFFICULTY_BINS, f"one of {DIFFICULTY_BINS}"),
        (
            "intermediates",
            isinstance(record.get("intermediates", []), list)
            and all(_is_number(v) for v in record.get("intermediates", [])),
            "a list of finite numbers",
        ),
        ("cot", isinstance(record.get("cot", ""), str), "a string"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise DataError(
                f"{where}: field {key!r} must be {expected}, got {record[key]!r} — {fix}"
            )
    return Problem(
        id=record["id"],
        question=record["question"],
        answer=float(record["answer"]),
        steps=record["steps"],
        difficulty=record["difficulty"],
        intermediates=tuple(float(v) for v in record.get("intermediates", [])),
        cot=record.get("cot", ""),
    )


def load_problem_jsonl(path: Path) -> list[Problem]:
    """Load a problem set written by :func:`write_problem_jsonl`."""
    records = _jsonl_records(path, _read_text(path))
    return [_exported_problem(f"{path}:{lineno}", record) for lineno, record in records]


def load_problems(path: Path) -> list[Problem]:
    """Load any supported problem file, chosen by suffix and content; never empty."""
    text = _read_text(path)
    if path.suffix == ".json" or text.lstrip().startswith("["):
        problems = _research_problems(path, _parse_json_document(path, text))
    else:
        records = _jsonl_records(path, text)
        if records and _EXPORT_KEYS & records[0][1].keys():
            problems = [_exported_problem(f"{path}:{lineno}", rec) for lineno, rec in records]
        else:
            problems = _gsm8k_problems(path, records)
    if not problems:
        raise DataError(
            f"{path}: no problems left to use (the file is empty, or every problem has "
            "fewer than 2 reasoning steps) — pass --problems PATH with a non-empty problem file"
        )
    logger.info("%s: loaded %d problems", path, len(problems))
    return problems


def _quotas(n: int, bins: Sequence[str]) -> list[int]:
    """Split ``n`` as evenly as possible across bins, the remainder to the lower bins first."""
    base, remainder = divmod(n, len(bins))
    return [base + (1 if index < remainder else 0) for index in range(len(bins))]


def stratified_sample(
    problems: Sequence[Problem],
    n: int,
    *,
    seed: int = 0,
    bins: Sequence[str] = DIFFICULTY_BINS,
) -> list[Problem]:
    """Draw ``n`` problems evenly across difficulty bins, seeded; ordered by bin, then input."""
    if n < 0:
        raise DataError(f"cannot sample {n} problems — the sample size must be >= 0")
    if not bins or len(set(bins)) != len(bins):
        raise DataError(
            f"stratified_sample needs distinct difficulty bins, got {tuple(bins)!r} — "
            f"pass bins drawn from {DIFFICULTY_BINS}"
        )
    if n > len(problems):
        raise DataError(
            f"cannot sample {n} problems from a set of {len(problems)} — "
            "ask for fewer problems (--quick-n N, --full-n N) or pass a larger problem file "
            "(--problems PATH)"
        )
    members: dict[str, list[int]] = {name: [] for name in bins}
    for position, problem in enumerate(problems):
        if problem.difficulty in members:
            members[problem.difficulty].append(position)
    chosen: list[Problem] = []
    for name, quota in zip(bins, _quotas(n, bins), strict=True):
        available = members[name]
        if len(available) < quota:
            raise DataError(
                f"difficulty bin {name!r} has {len(available)} problem(s) but the sample needs "
                f"{quota} — ask for fewer problems (--quick-n N, --full-n N) or pass a file "
                f"with more {name} problems (--problems PATH)"
            )
        # A string seed hashes through SHA-512: stable across runs and PYTHONHASHSEED, and each
        # bin's draw does not depend on the other bins' contents. Taking a prefix of one
        # seeded shuffle nests the samples: the quick tier is a subset of the full one.
        order = list(available)
        random.Random(f"codi-stratified:{seed}:{name}").shuffle(order)
        picked = sorted(order[:quota])
        chosen.extend(problems[position] for position in picked)
    return chosen


def problem_set_fingerprint(problems: Sequence[Problem]) -> str:
    """First 16 hex chars of the sha256 of the problems' canonical JSON, in order."""
    canonical = json.dumps(
        [_problem_record(problem) for problem in problems],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]

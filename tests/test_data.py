"""Problem-set loading, stratified sampling, export round trip and fingerprints."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codi_fixtures.errors import DataError
from codi_fixtures.study.data import (
    load_gsm8k_jsonl,
    load_problem_jsonl,
    load_problems,
    load_research_json,
    problem_set_fingerprint,
    stratified_sample,
    write_problem_jsonl,
)
from codi_fixtures.study.problems import DIFFICULTY_BINS, Problem, difficulty_bin

GSM8K_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"


@pytest.fixture(scope="module")
def gsm8k_test() -> list[Problem]:
    """The GSM8K test split (rule C: < 2 calculator steps dropped); do not mutate."""
    if not GSM8K_DIR.is_dir():
        pytest.skip("../shared/data/gsm8k not present (it ships only beside the CI checkout)")
    return load_problems(GSM8K_DIR / "test.jsonl")


def _line(question: str, answer: str) -> str:
    return json.dumps({"question": question, "answer": answer})


GOOD_ANSWER = "She has 3+4=<<3+4=7>>7.\nThen 7*2=<<7*2=14>>14.\n#### 14"


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _problem(index: int, difficulty: str) -> Problem:
    steps = DIFFICULTY_BINS.index(difficulty) + 2
    return Problem(f"p-{index}", f"q{index}", float(index), steps, difficulty)


# --- real data --------------------------------------------------------------------------------


class TestRealGsm8k:
    def test_counts_match_readme_rule_c(self, gsm8k_test: list[Problem]) -> None:
        lines = (GSM8K_DIR / "test.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1319
        assert len(gsm8k_test) == 357 + 364 + 290 + 225 == 1236
        counts = Counter(p.difficulty for p in gsm8k_test)
        assert [counts[b] for b in DIFFICULTY_BINS] == [357, 364, 290, 225]

    def test_first_problem(self, gsm8k_test: list[Problem]) -> None:
        first = gsm8k_test[0]
        assert first.id == "gsm8k-test-0"
        assert first.answer == 18
        assert first.steps == 2
        assert first.difficulty == "2-step"
        assert first.cot == "<<16-3-4=9>> <<9*2=18>>"
        assert first.intermediates == (9.0, 18.0)

    def test_ids_are_line_indices(self, gsm8k_test: list[Problem]) -> None:
        lines = (GSM8K_DIR / "test.jsonl").read_text(encoding="utf-8").splitlines()
        for problem in gsm8k_test[::97]:
            index = int(problem.id.rsplit("-", 1)[1])
            assert json.loads(lines[index])["question"] == problem.question

    def test_every_problem_is_consistent(self, gsm8k_test: list[Problem]) -> None:
        assert len({p.id for p in gsm8k_test}) == len(gsm8k_test)
        for problem in gsm8k_test:
            assert problem.steps >= 2
            assert problem.difficulty == difficulty_bin(problem.steps)
            assert problem.cot.count("<<") == problem.steps
            assert len(problem.intermediates) in (0, problem.steps)

    def test_full_sample_is_25_per_bin(self, gsm8k_test: list[Problem]) -> None:
        sample = stratified_sample(gsm8k_test, 100, seed=0)
        assert len(sample) == len({p.id for p in sample}) == 100
        assert Counter(p.difficulty for p in sample) == dict.fromkeys(DIFFICULTY_BINS, 25)

    def test_quick_sample_is_3_3_2_2(self, gsm8k_test: list[Problem]) -> None:
        sample = stratified_sample(gsm8k_test, 10, seed=0)
        assert [p.difficulty for p in sample] == ["2-step"] * 3 + ["3-step"] * 3 + [
            "4-step"
        ] * 2 + ["5+step"] * 2

    def test_sample_is_deterministic_and_seeded(self, gsm8k_test: list[Problem]) -> None:
        first = stratified_sample(gsm8k_test, 100, seed=0)
        assert stratified_sample(gsm8k_test, 100, seed=0) == first
        assert stratified_sample(list(gsm8k_test), 100, seed=0) == first
        assert stratified_sample(gsm8k_test, 100, seed=1) != first

    def test_quick_is_subset_of_full(self, gsm8k_test: list[Problem]) -> None:
        full = {p.id for p in stratified_sample(gsm8k_test, 100, seed=0)}
        assert {p.id for p in stratified_sample(gsm8k_test, 10, seed=0)} <= full

    def test_train_split_counts(self) -> None:
        if not (GSM8K_DIR / "train.jsonl").is_file():
            pytest.skip("../shared/data/gsm8k/train.jsonl not present")
        counts = Counter(p.difficulty for p in load_gsm8k_jsonl(GSM8K_DIR / "train.jsonl"))
        assert [counts[b] for b in DIFFICULTY_BINS] == [2175, 2137, 1424, 1238]


# --- GSM8K jsonl parsing ----------------------------------------------------------------------


class TestGsm8kJsonl:
    def test_parses_negative_decimal_and_comma_golds(self, tmp_path: Path) -> None:
        path = _write(
            tmp_path / "mini.jsonl",
            [
                _line("a", "x <<1-3=-2>> y <<-2*1.25=-2.5>>\n#### -2.5"),
                "",
                _line("b", "<<1000+234=1234>> <<1234*1=1234>> <<1234-0=1,234>>\n#### 1,234"),
            ],
        )
        first, second = load_gsm8k_jsonl(path)
        assert (first.id, first.answer, first.intermediates) == ("gsm8k-mini-0", -2.5, (-2, -2.5))
        assert (second.id, second.answer, second.steps) == ("gsm8k-mini-2", 1234.0, 3)
        assert second.difficulty == "3-step"
        assert second.intermediates == (1234.0, 1234.0, 1234.0)

    def test_drops_problems_below_two_steps(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = _write(
            tmp_path / "t.jsonl",
            [_line("none", "#### 3"), _line("one", "<<1+2=3>>\n#### 3"), _line("two", GOOD_ANSWER)],
        )
        with caplog.at_level(logging.INFO, logger="codi_fixtures.study.data"):
            problems = load_gsm8k_jsonl(path)
        assert [p.question for p in problems] == ["two"]
        assert "dropped 2 problem(s)" in caplog.text

    def test_unparseable_annotation_drops_all_intermediates(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "t.jsonl", [_line("q", "<<1+2=3>> <<x=y>> <<3/4=3/4>>\n#### 3")])
        (problem,) = load_gsm8k_jsonl(path)
        assert problem.steps == 3
        assert problem.intermediates == ()

    def test_fraction_results_parse(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "t.jsonl", [_line("q", "<<1+2=3>> <<3/4=3/4>>\n#### 0.75")])
        (problem,) = load_gsm8k_jsonl(path)
        assert problem.intermediates == (3.0, 0.75)


# --- malformed inputs -------------------------------------------------------------------------


def _raises(path: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        load_problems(path)
    message = str(info.value)
    assert path.name in message
    for fragment in fragments:
        assert fragment in message, message
    return message


class TestMalformed:
    def test_invalid_json_on_line_3(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "bad.jsonl", [_line("a", GOOD_ANSWER)] * 2 + ['{"question": '])
        _raises(path, "bad.jsonl:3:", "invalid JSON")

    def test_line_that_is_not_an_object(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "bad.jsonl", [_line("a", GOOD_ANSWER), "[1, 2]"])
        _raises(path, "bad.jsonl:2:", "expected a JSON object")

    def test_missing_answer(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "bad.jsonl", [_line("a", GOOD_ANSWER), '{"question": "q"}'])
        _raises(path, "bad.jsonl:2:", "'answer'", "missing")

    def test_missing_question(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "bad.jsonl", ['{"answer": "#### 3"}'])
        _raises(path, "bad.jsonl:1:", "'question'")

    def test_no_hashes(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "bad.jsonl", [_line("a", "<<1+1=2>> <<2+2=4>> so 4")])
        _raises(path, "bad.jsonl:1:", "####")

    def test_non_numeric_gold(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "bad.jsonl", [_line("a", GOOD_ANSWER), _line("b", "#### abc")])
        _raises(path, "bad.jsonl:2:", "'abc'", "not a number")

    def test_research_record_missing_difficulty(self, tmp_path: Path) -> None:
        records = [
            {"question": "q", "answer": 1, "difficulty": "2-step", "gsm8k_id": 1},
            {"question": "q", "answer": 1, "gsm8k_id": 2},
        ]
        path = tmp_path / "research.json"
        path.write_text(json.dumps(records), encoding="utf-8")
        _raises(path, "record 1 (0-based)", "'difficulty'", "missing")

    def test_research_unknown_difficulty(self, tmp_path: Path) -> None:
        records = [{"question": "q", "answer": 1, "difficulty": "hard", "gsm8k_id": 7}]
        path = tmp_path / "research.json"
        path.write_text(json.dumps(records), encoding="utf-8")
        _raises(path, "record 0 (0-based)", "unknown difficulty 'hard'", "2-step")

    def test_research_invalid_json(self, tmp_path: Path) -> None:
        path = tmp_path / "research.json"
        path.write_text('[\n{"question": "q",\n oops}\n]', encoding="utf-8")
        _raises(path, "research.json:3:", "invalid JSON")

    def test_research_top_level_object(self, tmp_path: Path) -> None:
        path = tmp_path / "research.json"
        path.write_text('{"question": "q"}', encoding="utf-8")
        _raises(path, "not a list")

    def test_empty_file(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "empty.jsonl", [""])
        _raises(path, "no problems")

    def test_only_one_step_problems(self, tmp_path: Path) -> None:
        path = _write(tmp_path / "easy.jsonl", [_line("a", "<<1+1=2>>\n#### 2")])
        _raises(path, "no problems", "fewer than 2")

    def test_missing_file(self, tmp_path: Path) -> None:
        _raises(tmp_path / "nowhere.jsonl", "does not exist", "--problems PATH")

    def test_exported_bad_field_names_line(self, tmp_path: Path) -> None:
        path = tmp_path / "set.jsonl"
        write_problem_jsonl(path, [_problem(0, "2-step"), _problem(1, "3-step")])
        lines = path.read_text(encoding="utf-8").splitlines()
        record = json.loads(lines[1])
        record["difficulty"] = "9-step"
        path.write_text(f"{lines[0]}\n{json.dumps(record)}\n", encoding="utf-8")
        _raises(path, "set.jsonl:2:", "'difficulty'")


# --- stratified sampling ----------------------------------------------------------------------


class TestStratifiedSample:
    def test_bin_too_small(self) -> None:
        problems = [_problem(i, b) for i, b in enumerate(DIFFICULTY_BINS * 10)]
        problems = [p for p in problems if p.difficulty != "4-step"] + [
            _problem(100 + i, "4-step") for i in range(3)
        ]
        with pytest.raises(DataError) as info:
            stratified_sample(problems, 20)
        message = str(info.value)
        assert "'4-step' has 3 problem(s)" in message
        assert "needs 5" in message
        assert "--quick-n N, --full-n N" in message  # not "-m quick": a quick run asks too

    def test_n_larger_than_set(self) -> None:
        with pytest.raises(DataError, match=r"cannot sample 5 problems from a set of 4.*--quick-n"):
            stratified_sample([_problem(i, b) for i, b in enumerate(DIFFICULTY_BINS)], 5)

    def test_order_is_bin_then_input(self) -> None:
        problems = [_problem(i, b) for i, b in enumerate(reversed(DIFFICULTY_BINS * 5))]
        sample = stratified_sample(problems, 8, seed=3)
        keys = [(DIFFICULTY_BINS.index(p.difficulty), problems.index(p)) for p in sample]
        assert keys == sorted(keys)

    def test_custom_bins(self) -> None:
        problems = [_problem(i, b) for i, b in enumerate(DIFFICULTY_BINS * 5)]
        sample = stratified_sample(problems, 3, bins=("5+step", "2-step"))
        assert [p.difficulty for p in sample] == ["5+step", "5+step", "2-step"]

    @settings(max_examples=50, deadline=None)
    @given(
        sizes=st.tuples(*[st.integers(0, 12)] * 4),
        n=st.integers(0, 48),
        seed=st.integers(0, 2**32),
    )
    def test_quotas_and_no_replacement(
        self, sizes: tuple[int, int, int, int], n: int, seed: int
    ) -> None:
        problems = [
            _problem(100 * b + i, name)
            for b, (name, size) in enumerate(zip(DIFFICULTY_BINS, sizes, strict=True))
            for i in range(size)
        ]
        quotas = [n // 4 + (1 if b < n % 4 else 0) for b in range(4)]
        if n > len(problems) or any(q > s for q, s in zip(quotas, sizes, strict=True)):
            with pytest.raises(DataError):
                stratified_sample(problems, n, seed=seed)
            return
        sample = stratified_sample(problems, n, seed=seed)
        assert len({p.id for p in sample}) == n
        counts = Counter(p.difficulty for p in sample)
        assert [counts[b] for b in DIFFICULTY_BINS] == quotas
        assert stratified_sample(problems, n, seed=seed) == sample
        if n >= 4:
            smaller = stratified_sample(problems, n - 4, seed=seed)
            assert set(smaller) <= set(sample)


# --- export round trip and fingerprint --------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
problems_strategy = st.lists(
    st.builds(
        Problem,
        id=st.text(min_size=1),
        question=st.text(),
        answer=finite,
        steps=st.integers(2, 9),
        difficulty=st.sampled_from(DIFFICULTY_BINS),
        intermediates=st.lists(finite, max_size=6).map(tuple),
        cot=st.text(),
    ),
    max_size=8,
)


class TestExport:
    @settings(max_examples=60, deadline=None)
    @given(problems=problems_strategy)
    def test_round_trip(
        self, tmp_path_factory: pytest.TempPathFactory, problems: list[Problem]
    ) -> None:
        path = tmp_path_factory.mktemp("export") / "set.jsonl"
        write_problem_jsonl(path, problems)
        assert load_problem_jsonl(path) == problems
        assert problem_set_fingerprint(load_problem_jsonl(path)) == problem_set_fingerprint(
            problems
        )

    def test_round_trip_through_load_problems(self, tmp_path: Path) -> None:
        problems = [
            Problem("a", "q?", -2.5, 3, "3-step", (1.0, -0.5, -2.5), "<<1-1.5=-0.5>>"),
            Problem("b", "q\u2028two", 1e-9, 6, "5+step"),
        ]
        path = tmp_path / "set.jsonl"
        write_problem_jsonl(path, problems)
        assert load_problems(path) == problems
        assert not list(tmp_path.glob(".*.tmp"))

    def test_non_finite_answer_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(DataError, match=r"'bad'.*non-finite"):
            write_problem_jsonl(
                tmp_path / "x.jsonl", [Problem("bad", "q", float("nan"), 2, "2-step")]
            )

    def test_fingerprint(self) -> None:
        problems = [_problem(i, b) for i, b in enumerate(DIFFICULTY_BINS)]
        fingerprint = problem_set_fingerprint(problems)
        assert len(fingerprint) == 16
        assert int(fingerprint, 16) >= 0
        assert problem_set_fingerprint(list(problems)) == fingerprint
        assert problem_set_fingerprint(problems[::-1]) != fingerprint
        assert problem_set_fingerprint(problems[:3]) != fingerprint
        int_answer = Problem("p-0", "q0", 0, 2, "2-step")
        assert problem_set_fingerprint([int_answer, *problems[1:]]) == fingerprint


# --- research JSON ----------------------------------------------------------------------------


class TestResearchJson:
    def test_loads_seed_format(self, tmp_path: Path) -> None:
        records = [
            {
                "gsm8k_id": "test_123",
                "question": "Q1",
                "answer": 42,
                "full_solution": "3*7=<<3*7=21>>21\n21*2=<<21*2=42>>42\n#### 42",
                "reasoning_steps": 2,
                "difficulty": "2-step",
            },
            {"gsm8k_id": 7, "question": "Q2", "answer": "1,250", "difficulty": "3step"},
            {
                "gsm8k_id": "train_9",
                "question": "Q3",
                "answer": "<<1+1=2>> <<2+2=4>> <<4+4=8>> <<8+8=16>>\n#### -16.5",
                "difficulty": "4-step",
            },
            {"gsm8k_id": 11, "question": "Q4", "answer": -3.5, "difficulty": "5+"},
        ]
        path = tmp_path / "seed.json"
        path.write_text(json.dumps(records), encoding="utf-8")
        problems = load_research_json(path)
        assert load_problems(path) == problems
        assert [p.id for p in problems] == [
            "gsm8k-test-123",
            "gsm8k-7",
            "gsm8k-train-9",
            "gsm8k-11",
        ]
        assert [p.answer for p in problems] == [42.0, 1250.0, -16.5, -3.5]
        assert [p.difficulty for p in problems] == list(DIFFICULTY_BINS)
        assert [p.steps for p in problems] == [2, 3, 4, 5]
        assert problems[0].cot == "<<3*7=21>> <<21*2=42>>"
        assert problems[0].intermediates == (21.0, 42.0)
        assert problems[2].intermediates == (2.0, 4.0, 8.0, 16.0)
        assert problems[1].cot == "" and problems[1].intermediates == ()

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2-step", "2-step"),
            ("2step", "2-step"),
            ("3 steps", "3-step"),
            ("5-step", "5+step"),
            ("5+", "5+step"),
            ("5+step", "5+step"),
            ("7-step", "5+step"),
            (4, "4-step"),
        ],
    )
    def test_difficulty_spellings(self, tmp_path: Path, value: object, expected: str) -> None:
        path = tmp_path / "seed.json"
        record = {"gsm8k_id": 1, "question": "q", "answer": 1, "difficulty": value}
        path.write_text(json.dumps([record]), encoding="utf-8")
        assert load_research_json(path)[0].difficulty == expected

    @pytest.mark.parametrize("value", ["1-step", "hard", "3+", True, None])
    def test_bad_difficulty(self, tmp_path: Path, value: object) -> None:
        path = tmp_path / "seed.json"
        record = {"gsm8k_id": 1, "question": "q", "answer": 1, "difficulty": value}
        path.write_text(json.dumps([record]), encoding="utf-8")
        with pytest.raises(
            DataError, match=r"seed\.json: record 0 \(0-based\): unknown difficulty"
        ):
            load_research_json(path)

    @pytest.mark.parametrize(
        ("field", "value", "fragment"),
        [
            ("answer", "abc", "'answer'"),
            ("answer", True, "'answer'"),
            ("gsm8k_id", "", "'gsm8k_id'"),
            ("reasoning_steps", "3", "'reasoning_steps'"),
            ("question", 5, "'question'"),
        ],
    )
    def test_bad_fields(self, tmp_path: Path, field: str, value: object, fragment: str) -> None:
        record = {"gsm8k_id": 1, "question": "q", "answer": 1, "difficulty": "2-step"}
        record[field] = value
        path = tmp_path / "seed.json"
        path.write_text(json.dumps([record, record]), encoding="utf-8")
        with pytest.raises(DataError, match=r"record 0 \(0-based\)") as info:
            load_research_json(path)
        assert fragment in str(info.value)

"""gsm8k answer extraction, comparison and stop truncation."""

from __future__ import annotations

import pytest

from polar_rl.tasks import load_task
from polar_rl.tasks.generative import extract_number, gsm8k_correct, normalize_number, truncate_at_stop
from polar_rl.tasks.sources import read_requests


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes 9 * 2 = $18 every day. So the answer is 18.", "18"),
        ("Janet sells 16 - 3 - 4 = 9 duck eggs.\n#### 18", "18"),
        ("So the answer is $1,234.", "1234"),
        ("So the answer is 18.0", "18"),
        ("So the answer is 0.50 dollars.", "0.5"),
        ("So the answer is -10.", "-10"),
        ("The answer is -$5.", "-5"),
        ("#### 1,450,000", "1450000"),
        ("He had 3 apples, then 5 more, so 8 apples", "8"),  # no marker: last number
        ("So the answer is 7. Then 9 more questions follow: 12", "7"),  # marker wins over the last number
        ("The answer is unclear, but it is 42", "42"),  # marker without a number: fall back
        ("first the answer is 3. Wait, so the answer is 4.", "4"),  # last marker
        ("It took 2-3 weeks", "3"),  # a hyphen between digits is not a minus sign
        ("1,000 people and 2,500 more = 3,500", "3500"),
        ("costs .75 each", "0.75"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_number(text: str, expected: str | None) -> None:
    assert extract_number(text) == expected


def test_normalize_number() -> None:
    assert normalize_number("$1,800.00") == "1800"
    assert normalize_number("007") == "7"
    assert normalize_number("3.140") == "3.14"
    assert normalize_number("18.") == "18"
    assert normalize_number("-0") == "0"
    assert normalize_number("abc") is None


def test_gsm8k_correct() -> None:
    assert gsm8k_correct(" Janet sells 9 eggs. She makes $18. So the answer is 18.", "18")
    assert gsm8k_correct("So the answer is 2,125.", "2,125")
    assert gsm8k_correct("So the answer is 18.00", "#### 18")
    assert not gsm8k_correct("So the answer is 17.", "18")
    assert not gsm8k_correct("I do not know.", "18")
    assert not gsm8k_correct("So the answer is 10.", "-10")


def test_truncate_at_stop() -> None:
    stops = ("Question:", "</s>", "<|im_end|>", "\n\n")
    assert truncate_at_stop(" So the answer is 5.\n\nQuestion: next", stops) == " So the answer is 5."
    assert truncate_at_stop(" a Question: b\n\nc", stops) == " a "  # earliest stop wins
    assert truncate_at_stop(" no stop here", stops) == " no stop here"
    assert truncate_at_stop("x</s>", ["", "</s>"]) == "x"  # empty stops are ignored
    assert truncate_at_stop("abc", []) == "abc"


def test_gold_cot_continuations_are_correct() -> None:
    """Every gsm8k reference CoT ("... So the answer is N.") extracts to the example's answer."""
    task = load_task("gsm8k", "all")
    rows = read_requests("gsm8k", "gold_bpb_5shot")
    assert len(rows) == len(task) == 1319
    for row, ex in zip(rows, task, strict=True):
        continuation = truncate_at_stop(row["request"]["continuation"], ex.stop)
        assert gsm8k_correct(continuation, ex.answer), (ex.id, continuation, ex.answer)
        assert extract_number(row["doc"]["answer"]) == ex.answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So the answer is - 10.", "-10"),  # gsm8k's own reference CoT writes negatives like this
        ("= - 30 - 30 / 3 = - 10 degrees", "-10"),
        ("16 - 3 - 4", "4"),  # subtraction, not negative numbers
        ("(4 - 1)", "1"),
        ("COVID-19", "19"),
    ],
)
def test_minus_sign_versus_subtraction(text: str, expected: str) -> None:
    assert extract_number(text) == expected

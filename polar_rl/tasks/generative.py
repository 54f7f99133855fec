"""Pure-string helpers for generative (gsm8k-style) answers: extraction, comparison, stop truncation."""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

# An optional sign, then an optional "$", digits with thousands commas and decimals (or ".5"). A "-" is a
# minus sign (one space may follow, as in gsm8k's "So the answer is - 10.") unless it follows a word
# character or ")" directly, or a digit or ")" and one space: "2-3" and "16 - 3" are subtractions.
_NUMBER = re.compile(r"(?:(?<![\w)])(?<![\d)] )[-\u2212] ?)?\$?(?:\d(?:[\d,]*\d)?(?:\.\d+)?|\.\d+)")
# Markers after which the final answer is written, last occurrence wins.
_MARKERS = (re.compile(r"the answer is", re.IGNORECASE), re.compile(r"####"))


def normalize_number(raw: str) -> str | None:
    """Canonical text of a number: no "$", commas, trailing "." or zeros ("1,800.00" -> "1800")."""
    s = raw.replace("\u2212", "-").replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(s)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _numbers(text: str) -> list[str]:
    return [n for m in _NUMBER.finditer(text) if (n := normalize_number(m.group())) is not None]


def extract_number(text: str) -> str | None:
    """The final numeric answer in ``text``, normalised, or None.

    Takes the first number after the last "the answer is" (e.g. "So the answer is 18.") or, failing
    that, after the last "####"; otherwise the last number anywhere in the text.
    """
    for marker in _MARKERS:
        hits = list(marker.finditer(text))
        if hits:
            after = _numbers(text[hits[-1].end() :])
            if after:
                return after[0]
    found = _numbers(text)
    return found[-1] if found else None


def gsm8k_correct(generated: str, gold: str) -> bool:
    """Whether the number extracted from ``generated`` equals ``gold`` (itself normalised)."""
    pred = extract_number(generated)
    want = extract_number(gold)
    return pred is not None and want is not None and pred == want


def truncate_at_stop(text: str, stops: Iterable[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any non-empty stop sequence (stop excluded)."""
    cut = len(text)
    for stop in stops:
        if stop:
            i = text.find(stop)
            if 0 <= i < cut:
                cut = i
    return text[:cut]

"""Whole-token grading of needle values.

A value counts as present only as a whole token: not preceded by a word
character (nor by a word character joined with "." or "-"), and not followed
by a word character (nor by "." or "-" joined to a word character). So
"api" is not in "rapid" or "api_key", "1.0" is not in "11.05" or "1.0.3",
while "1.0" is in "version 1.0." and "utf-8" is in "'utf-8'". Applies to
every value, also those that contain punctuation. Case-sensitive. Word
characters are those of `str.isalnum` and "_".
"""

from __future__ import annotations

from typing import Iterator

__all__ = ["count_token", "contains_token", "grade_answer", "token_positions"]


def _word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _clear_before(text: str, i: int) -> bool:
    if i == 0:
        return True
    prev = text[i - 1]
    if _word(prev):
        return False
    return not (prev in ".-" and i >= 2 and _word(text[i - 2]))


def _clear_after(text: str, j: int) -> bool:
    if j >= len(text):
        return True
    nxt = text[j]
    if _word(nxt):
        return False
    return not (nxt in ".-" and j + 1 < len(text) and _word(text[j + 1]))


def token_positions(text: str, value: str) -> Iterator[int]:
    """Start offsets of the whole-token occurrences of ``value`` in ``text``."""
    if not value:
        raise ValueError("a needle value must not be empty")
    start = 0
    while (i := text.find(value, start)) != -1:
        if _clear_before(text, i) and _clear_after(text, i + len(value)):
            yield i
        start = i + 1


def contains_token(text: str, value: str) -> bool:
    """``value`` occurs in ``text`` as a whole token."""
    return next(token_positions(text, value), None) is not None


def count_token(text: str, value: str, limit: int | None = None) -> int:
    """How often ``value`` occurs in ``text`` as a whole token (counting
    stops at ``limit`` when given)."""
    n = 0
    for _ in token_positions(text, value):
        n += 1
        if limit is not None and n >= limit:
            break
    return n


def grade_answer(answer: str, value: str) -> bool:
    """A reader's answer is correct when ``value`` is a whole token of it,
    by exactly the rule survival is checked with (`contains_token`), so an
    answer is never held to another standard than its context.

    Consequences: quotes and sentence punctuation around the value do not
    matter ("'30'", "30.", "is 30, as set"); the value inside a longer word
    or number does not count ("api" in "rapid", "1.0" in "11.05" or
    "1.0.3"); restating the key is harmless since the key is a different
    token ("The value of retry_1 is 5" does not answer "1"). Case counts, as
    in survival. A bool is not a number: "1" does not answer "True" or
    "true" (nor "0" "False"), only a needle whose value is itself "1" is
    answered by "1"; and "true" does not answer "True". The default corpus
    has no bool needles (the harvest takes none); a ``--corpus`` may.
    """
    return contains_token(answer, value)
